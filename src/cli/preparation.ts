// Chooses the kernel PreStartContainer talks to: the simulated one on the
// simulated node, the native addon on a real node.
import type { Logger } from '../log.js';
import type { Topology } from '../topology/types.js';
import type { ResourceConfig } from '../config/schema.js';
import type { Preparer } from '../kubelet/plugin-manager.js';
import { PluginError } from '../errors.js';
import { SimulatedKernel } from '../vfio/simulated-kernel.js';
import { createVerifyPreparer, describeVerification } from '../prepare/verify-preparer.js';

export interface PreparationSetup {
  preparer: Preparer | undefined;
  /** One line on what the last preparation of a group did, for the demo. */
  describe(group: number): string;
  /** The simulated kernel, when running on the simulated node. */
  kernel: SimulatedKernel | null;
}

export interface PreparationOptions {
  simulate: boolean;
  devRoot: string;
  resources: readonly ResourceConfig[];
  /** Groups the simulated kernel starts with. */
  topology?: Topology;
  logger: Logger;
  /** RLIMIT_MEMLOCK of the simulated plugin process (default 64 MiB). */
  simulatedMemlock?: bigint | null;
}

function simulatedGroups(topology: Topology | undefined): { group: number; devices: string[] }[] {
  if (!topology) return [];
  return [...topology.groups.values()].map((g) => ({ group: g.id, devices: g.functions.map((f) => f.address) }));
}

export async function buildPreparer(options: PreparationOptions): Promise<PreparationSetup> {
  const needed = options.resources.some((r) => r.preparation.mode !== 'none');
  if (!needed) return { preparer: undefined, describe: () => 'no preparation configured', kernel: null };
  if (options.simulate) {
    // A POWER9 bare-metal kernel; the plugin's memlock limit is what a DaemonSet typically gets.
    const kernel = new SimulatedKernel({
      platform: 'powernv9',
      groups: simulatedGroups(options.topology),
      memlockLimit: options.simulatedMemlock === undefined ? 64n << 20n : options.simulatedMemlock,
    });
    const verify = createVerifyPreparer({
      binding: kernel.process(),
      devRoot: options.devRoot,
      logger: options.logger,
      beforeVerify: (groups) => {
        for (const g of groups) {
          if (!kernel.hasGroup(g.id)) kernel.addGroup({ group: g.id, devices: g.functions.map((f) => f.address) });
        }
      },
    });
    return {
      preparer: verify.preparer,
      describe: (group) => {
        const v = verify.last(group);
        return v ? describeVerification(v) : 'not verified';
      },
      kernel,
    };
  }
  let binding;
  try {
    const { createNativeBinding } = await import('../vfio/native-binding.js');
    binding = createNativeBinding();
  } catch (err) {
    throw new PluginError(
      'PVDP_ERR_PREPARATION',
      `The native VFIO addon cannot be loaded (${(err as Error).message}); resources in verify or handoff mode need it. Rebuild with npm ci, or set their preparation mode to none.`,
      { cause: err },
    );
  }
  const verify = createVerifyPreparer({ binding, devRoot: options.devRoot, logger: options.logger });
  return {
    preparer: verify.preparer,
    describe: (group) => {
      const v = verify.last(group);
      return v ? describeVerification(v) : 'not verified';
    },
    kernel: null,
  };
}
