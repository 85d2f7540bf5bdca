// Chooses what PreStartContainer does for resources in verify or handoff mode.
// Until the VFIO layer is wired in, the kubelet room's own usability check
// (every function bound to vfio-pci, /dev/vfio/N present) is all that runs.
import type { Logger } from '../log.js';
import type { DiscoveryRoots } from '../topology/types.js';
import type { Preparer } from '../kubelet/plugin-manager.js';

export interface PreparationSetup {
  preparer: Preparer | undefined;
  /** One line on what the last preparation of a group did, for the demo. */
  describe(group: number): string;
}

export async function buildPreparer(_options: { simulate: boolean; topologyRoots: DiscoveryRoots; logger: Logger }): Promise<PreparationSetup> {
  return {
    preparer: undefined,
    describe: () => 'every function bound to vfio-pci and /dev/vfio/N present (usability check)',
  };
}
