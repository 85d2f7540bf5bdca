// Where the handoff mode keeps its per-allocation directories and where a
// container sees its own: plain values, so configuration can check them at
// start without loading the handoff room.
import { join } from 'node:path';

export const DEFAULT_HANDOFF_HOST_DIR = '/var/run/power-vfio-device-plugin';
export const DEFAULT_HANDOFF_CONTAINER_DIR = '/var/run/power-vfio/handoff';

/** The container path of a resource's handoff directory: `<containerDir>/<resource with / as _>`. */
export function containerDirFor(containerDir: string, resource: string): string {
  return join(containerDir, resource.replace(/[^A-Za-z0-9._-]/g, '_'));
}
