// What both kubelet front ends offer: an IOMMU group with its health, and the
// names a workload finds its devices under. Plain data and pure helpers, so
// the device plugin and the DRA driver adapt the same facts to their wire.
import type { IommuGroup } from '../topology/types.js';

/** One offered device: an IOMMU group and its health as last evaluated. */
export interface AdvertisedDevice {
  group: IommuGroup;
  healthy: boolean;
  /** Why the device is unhealthy, for error messages, events and taints. */
  reason?: string;
}

/** Host and container path of the VFIO container node. */
export const VFIO_CONTAINER_PATH = '/dev/vfio/vfio';

/** Host and container path of a group's node. */
export function groupNodePath(group: number): string {
  return `/dev/vfio/${group}`;
}

/** `ibm.com/nvme-fast` -> `IBM_COM_NVME-FAST`: upper case, `/` and `.` as `_`, as KubeVirt looks it up. */
export function resourceEnvSuffix(resourceName: string): string {
  return resourceName.toUpperCase().replace(/[/.]/g, '_');
}

/** Comma-separated PCI addresses of every function allocated (KubeVirt's convention). */
export function pciResourceEnvName(resourceName: string): string {
  return `PCI_RESOURCE_${resourceEnvSuffix(resourceName)}`;
}

/** Comma-separated IOMMU group numbers allocated. */
export function vfioGroupsEnvName(resourceName: string): string {
  return `VFIO_GROUPS_${resourceEnvSuffix(resourceName)}`;
}

/** The two variables that name what a container got of one resource: every function of every group. */
export function groupEnvironment(resourceName: string, groups: readonly IommuGroup[]): Record<string, string> {
  return {
    [pciResourceEnvName(resourceName)]: groups.flatMap((g) => g.functions.map((fn) => fn.address)).join(','),
    [vfioGroupsEnvName(resourceName)]: groups.map((g) => String(g.id)).join(','),
  };
}
