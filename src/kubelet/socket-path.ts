// Where the device plugin's sockets live, as plain functions configuration
// can check at start without loading the kubelet room's servers.
import { createHash } from 'node:crypto';
import { join } from 'node:path';

/** The kubelet's device-plugins directory. */
export const DEFAULT_DEVICE_PLUGIN_DIR = '/var/lib/kubelet/device-plugins';
/** The kubelet's PodResources socket. */
export const DEFAULT_POD_RESOURCES_SOCKET = '/var/lib/kubelet/pod-resources/kubelet.sock';

/** The kubelet's registration socket in the device-plugins directory. */
export const KUBELET_SOCKET_NAME = 'kubelet.sock';

/** Longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL). */
export const MAX_SOCKET_PATH = 107;

/** A socket name unique per resource, short enough for the 108-byte socket path limit. */
export function socketNameFor(pluginDir: string, resource: string): string {
  const readable = `pvdp-${resource.replace(/[^A-Za-z0-9.-]/g, '_')}.sock`;
  if (Buffer.byteLength(join(pluginDir, readable)) <= 100) return readable;
  return `pvdp-${createHash('sha256').update(resource).digest('hex').slice(0, 16)}.sock`;
}

/** Why the directory cannot hold our sockets and the kubelet's, or null when it can. */
export function socketPathProblem(pluginDir: string, resources: readonly string[]): string | null {
  const paths = [join(pluginDir, KUBELET_SOCKET_NAME), ...resources.map((r) => join(pluginDir, socketNameFor(pluginDir, r)))];
  const long = paths.find((p) => Buffer.byteLength(p) > MAX_SOCKET_PATH);
  return long
    ? `the socket path ${long} is ${Buffer.byteLength(long)} bytes; unix socket paths are limited to ${MAX_SOCKET_PATH}: use a shorter device-plugins directory`
    : null;
}

