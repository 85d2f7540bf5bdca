// The DRA front end's names and defaults, apart from its servers so that
// configuration can check them at start without loading the front end.

/** Default driver name: the ResourceSlices' `spec.driver` and the CDI vendor. */
export const DEFAULT_DRIVER_NAME = 'power-vfio.ibm.com';
/** Where the kubelet looks for registration sockets. */
export const DEFAULT_PLUGINS_REGISTRY_DIR = '/var/lib/kubelet/plugins_registry';
/** Parent of the driver's own directory (service socket, checkpoint). */
export const DEFAULT_PLUGINS_DIR = '/var/lib/kubelet/plugins';

/** apiVersion of our opaque claim and class configuration. */
export const CLAIM_CONFIG_API_VERSION = 'power-vfio.ibm.com/v1alpha1';
/** kind of our opaque claim and class configuration. */
export const CLAIM_CONFIG_KIND = 'VfioPreparation';

/** The service socket's and the registration socket's names. */
export const DRA_SOCKET_NAME = 'dra.sock';
export const CHECKPOINT_NAME = 'checkpoint.json';

export function registrationSocketName(driver: string): string {
  return `${driver}-reg.sock`;
}

const DNS_SUBDOMAIN = /^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** Why a driver name cannot be used, or null: a DNS subdomain of at most 63 characters, as ResourceSlices require. */
export function driverNameProblem(name: string): string | null {
  if (!DNS_SUBDOMAIN.test(name)) {
    return `"${name}" is not a DNS subdomain of at most 63 characters (lower-case letters, digits, "-" and "."), for example power-vfio.ibm.com`;
  }
  return null;
}
