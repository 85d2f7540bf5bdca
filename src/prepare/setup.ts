// Chooses the kernel PreStartContainer talks to: the simulated one on the
// simulated node, the native addon on a real node; and builds each mode's
// preparer: verify (prove and release) and handoff (prepare, keep, hand over).
import type { Logger } from '../log.js';
import type { IommuGroup, Topology } from '../topology/types.js';
import type { ResourceConfig } from '../config/schema.js';
import type { AllocationExtra, Preparer } from './types.js';
import type { VfioBinding } from '../vfio/binding.js';
import { PluginError, RequestError } from '../errors.js';
import { SimulatedKernel } from '../vfio/simulated-kernel.js';
import type { GroupVerification } from '../vfio/container-sequence.js';
import { createVerifyPreparer, describeVerification } from './verify-preparer.js';
import { createVfioHandoffSource } from './handoff-source.js';
import { HandoffService, DEFAULT_HANDOFF_CONTAINER_DIR, DEFAULT_HANDOFF_HOST_DIR } from '../handoff/service.js';
import { SimulatedHandoffNetwork } from '../handoff/simulated-transport.js';
import { unixTransport, type HandoffTransport } from '../handoff/transport.js';

export interface PreparationSetup {
  preparer: Preparer | undefined;
  /** One line on what the last preparation of a group did, for the demo. */
  describe(group: number): string;
  /** The last successful verification of a group. */
  lastVerification(group: number): GroupVerification | undefined;
  /** The simulated kernel, when running on the simulated node. */
  kernel: SimulatedKernel | null;
  /** Handoff mode: start it before serving the kubelet, stop it at shutdown. Null when no resource uses handoff. */
  handoff: HandoffService | null;
  /** Allocate's additions (handoff mount and env); undefined when no resource uses handoff. */
  extendAllocation: ((resource: ResourceConfig, containers: IommuGroup[][]) => Promise<AllocationExtra[]>) | undefined;
  /** On the simulated node: the socket names simulated pods claim through. */
  simulatedNetwork: SimulatedHandoffNetwork | null;
}

export interface HandoffSettings {
  /** Host directory of the per-allocation directories (default /var/run/power-vfio-device-plugin). */
  hostDir?: string;
  /** Where containers see them (default /var/run/power-vfio/handoff). */
  containerDir?: string;
  /** The kubelet's PodResources socket; null: no PodResources-driven release. */
  podResourcesSocket: string | null;
  podResourcesIntervalMs?: number;
}

export interface PreparationOptions {
  simulate: boolean;
  devRoot: string;
  resources: readonly ResourceConfig[];
  /** Groups the simulated kernel starts with. */
  topology?: Topology;
  logger: Logger;
  /** RLIMIT_MEMLOCK of the simulated plugin process (default 64 MiB; unlimited when a resource uses handoff). */
  simulatedMemlock?: bigint | null;
  /** Needed when a resource uses handoff. */
  handoff?: HandoffSettings;
  /** Told of each group verified (node labels). */
  onVerified?: (verification: GroupVerification) => void;
  /** The VFIO binding on a real node (tests); default the native addon. */
  binding?: VfioBinding;
  /**
   * Set up every mode whatever the resources say: with DRA a claim's own
   * configuration may ask for verify or handoff on any resource.
   */
  allModes?: boolean;
}

function simulatedGroups(topology: Topology | undefined): { group: number; devices: string[] }[] {
  if (!topology) return [];
  return [...topology.groups.values()].map((g) => ({ group: g.id, devices: g.functions.map((f) => f.address) }));
}

async function nativeBinding(): Promise<VfioBinding> {
  try {
    const { createNativeBinding } = await import('../vfio/native-binding.js');
    return createNativeBinding();
  } catch (err) {
    throw new PluginError(
      'PVDP_ERR_PREPARATION',
      `The native VFIO addon cannot be loaded (${(err as Error).message}); resources in verify or handoff mode need it. Rebuild with npm ci, or set their preparation mode to none.`,
      { cause: err },
    );
  }
}

export async function buildPreparer(options: PreparationOptions): Promise<PreparationSetup> {
  const needed = options.allModes === true || options.resources.some((r) => r.preparation.mode !== 'none');
  const usesHandoff = options.allModes === true || options.resources.some((r) => r.preparation.mode === 'handoff');
  if (!needed) {
    return { preparer: undefined, describe: () => 'no preparation configured', lastVerification: () => undefined, kernel: null, handoff: null, extendAllocation: undefined, simulatedNetwork: null };
  }
  let binding: VfioBinding;
  let kernel: SimulatedKernel | null = null;
  let beforePrepare: ((groups: IommuGroup[]) => void) | undefined;
  if (options.simulate) {
    // A POWER9 bare-metal kernel; the plugin's memlock limit is what a DaemonSet typically gets.
    const simulated = new SimulatedKernel({
      platform: 'powernv9',
      groups: simulatedGroups(options.topology),
      memlockLimit: options.simulatedMemlock !== undefined ? options.simulatedMemlock : usesHandoff ? null : 64n << 20n,
    });
    kernel = simulated;
    binding = simulated.process();
    beforePrepare = (groups) => {
      for (const g of groups) {
        if (!simulated.hasGroup(g.id)) simulated.addGroup({ group: g.id, devices: g.functions.map((f) => f.address) });
      }
    };
  } else {
    binding = options.binding ?? (await nativeBinding());
  }
  const verify = createVerifyPreparer({
    binding,
    devRoot: options.devRoot,
    logger: options.logger,
    ...(beforePrepare ? { beforeVerify: beforePrepare } : {}),
    ...(options.onVerified ? { onVerified: options.onVerified } : {}),
  });

  let handoff: HandoffService | null = null;
  let simulatedNetwork: SimulatedHandoffNetwork | null = null;
  if (usesHandoff) {
    let transport: HandoffTransport;
    if (kernel) {
      simulatedNetwork = new SimulatedHandoffNetwork(kernel.process());
      transport = simulatedNetwork.transport();
    } else {
      transport = unixTransport(binding);
    }
    const settings = options.handoff ?? { podResourcesSocket: null };
    handoff = new HandoffService({
      hostDir: settings.hostDir ?? DEFAULT_HANDOFF_HOST_DIR,
      containerDir: settings.containerDir ?? DEFAULT_HANDOFF_CONTAINER_DIR,
      transport,
      source: createVfioHandoffSource({ binding, devRoot: options.devRoot, logger: options.logger, ...(beforePrepare ? { beforePrepare } : {}) }),
      logger: options.logger,
      podResourcesSocket: settings.podResourcesSocket,
      ...(settings.podResourcesIntervalMs !== undefined ? { podResourcesIntervalMs: settings.podResourcesIntervalMs } : {}),
    });
  }
  const service = handoff;
  const preparer: Preparer = async (resource, groups) => {
    if (resource.preparation.mode === 'handoff') {
      if (!service) throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `Handoff mode of ${resource.name} is not set up`);
      return service.preStart(resource, groups);
    }
    return verify.preparer(resource, groups);
  };
  return {
    preparer,
    describe: (group) => {
      const v = verify.last(group);
      return v ? describeVerification(v) : 'not verified';
    },
    lastVerification: (group) => verify.last(group),
    kernel,
    handoff,
    extendAllocation: service ? (resource, containers) => service.extendAllocation(resource, containers) : undefined,
    simulatedNetwork,
  };
}
