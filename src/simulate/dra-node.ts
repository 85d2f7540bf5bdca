// The simulated POWER node serving DRA: the built-in sysfs tree, the simulated
// sPAPR kernel behind every preparation mode, the daemon with its DRA front
// end, and the DRA kubelet stand-in, all under one scratch directory. The demo
// and the tests start it; everything talks over real unix sockets.
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { Daemon, type DraDeps } from '../daemon.js';
import type { ResourceConfig } from '../config/schema.js';
import type { Settings } from '../config/settings.js';
import type { DiscoveryRoots } from '../topology/types.js';
import { buildPreparer, type PreparationSetup } from '../prepare/setup.js';
import { capabilitiesOf } from '../prepare/capabilities.js';
import { HealthTracker } from '../health/health-tracker.js';
import { simulatedSettings } from './settings.js';
import { simulatedNodeConfig } from './node-config.js';
import { builtinPowerNode } from './power-node.js';
import { writeSysfsTree, type NodeSpec } from './sysfs-tree.js';
import { nativeDriversOf, SimulatedSysfsKernel } from './sysfs-kernel.js';
import { isVfioDriver } from '../topology/parse.js';
import { DraKubelet, type DraKubeletOptions } from './dra-kubelet.js';

export const SIMULATED_NODE_NAME = 'power9-sim';

export interface DraNodeOptions {
  /** Scratch directory (short: socket paths are limited to 108 bytes). */
  dir: string;
  logger: Logger;
  claims: DraDeps['claims'];
  slices?: DraDeps['slices'];
  spec?: NodeSpec;
  /** An existing tree (a restart on the same node). */
  roots?: DiscoveryRoots;
  resources?: ResourceConfig[];
  kubelet?: DraKubeletOptions;
  /** Start the kubelet stand-in too (default true). */
  withKubelet?: boolean;
  pollIntervalMs?: number;
  health?: HealthTracker;
  /** Root of `proc/` for managed binding's in-use checks (default: a directory with no processes). */
  procRoot?: string;
}

export interface DraNode {
  roots: DiscoveryRoots;
  settings: Settings;
  daemon: Daemon;
  kubelet: DraKubelet | null;
  preparation: PreparationSetup;
  /** The kernel's side of driver_override, unbind, bind and drivers_probe on the tree. */
  sysfsKernel: SimulatedSysfsKernel;
  /** Stops the daemon (and the kubelet stand-in); the tree and the directories stay. */
  stop(): Promise<void>;
}

export async function startDraNode(options: DraNodeOptions): Promise<DraNode> {
  const spec = options.spec ?? builtinPowerNode();
  const roots = options.roots ?? (await writeSysfsTree(join(options.dir, 'node'), spec));
  const resources = options.resources ?? simulatedNodeConfig().resources;
  const settings: Settings = {
    ...simulatedSettings({ roots, dir: options.dir, resources, kubeletApi: 'dra', pollIntervalMs: options.pollIntervalMs ?? 200 }),
    nodeName: SIMULATED_NODE_NAME,
    procRoot: options.procRoot ?? join(options.dir, 'no-proc'),
  };
  const preparation = await buildPreparer({
    simulate: true,
    devRoot: roots.devRoot,
    resources,
    logger: options.logger,
    allModes: true,
    // The handoff resource keeps windows mapped for pods: the plugin runs with CAP_IPC_LOCK there.
    simulatedMemlock: null,
    handoff: { hostDir: settings.handoffHostDir, containerDir: settings.handoffContainerDir, podResourcesSocket: null },
  });
  // What the VFIO kernel hears of driver moves: a host driver on a member makes the group non-viable.
  const sysfsKernel = new SimulatedSysfsKernel(roots, nativeDriversOf(spec), (address, driver, group) => {
    const kernel = preparation.kernel;
    if (kernel?.hasGroup(group)) kernel.bindHostDriver(group, address, driver !== null && !isVfioDriver(driver) ? driver : null);
  });
  const daemon = new Daemon(settings, {
    logger: options.logger,
    ...(preparation.preparer ? { preparer: preparation.preparer } : {}),
    handoff: preparation.handoff,
    uevents: null,
    ...(options.health ? { health: options.health } : {}),
    dra: {
      claims: options.claims,
      slices: options.slices ?? null,
      verification: (group) => {
        const v = preparation.lastVerification(group);
        return v ? { ...capabilitiesOf(v), defaultWindowSize: v.info.dma32WindowSize } : undefined;
      },
      checkIntervalMs: 100,
      healthResendMs: 1000,
      sysfsWriter: sysfsKernel.writer,
      bindingPollMs: 10,
    },
  });
  const kubelet = options.withKubelet === false ? null : new DraKubelet(settings.dra.registryDir, options.kubelet ?? {});
  const registered = kubelet?.waitForPlugin(settings.dra.driverName);
  await kubelet?.start();
  await daemon.start();
  await registered;
  return {
    roots,
    settings,
    daemon,
    kubelet,
    preparation,
    sysfsKernel,
    async stop() {
      await daemon.stop();
      await kubelet?.stop();
    },
  };
}
