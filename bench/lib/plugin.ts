// The daemon on a sysfs tree, registered with the kubelet stand-in over real
// unix sockets, as the CLI would run it with --simulate (verify mode on the
// simulated POWER9 kernel).
import { join } from 'node:path';
import type { Daemon } from '../../src/daemon.js';
import { SimulatedKubelet } from '../../src/simulate/kubelet.js';
import type { Settings } from '../../src/config/settings.js';
import type { DiscoveryRoots } from '../../src/topology/types.js';
import type { Device__Output } from '../../src/generated/v1beta1/Device.js';
import { RESOURCE, benchSettings, createDaemon } from './bench-daemon.js';
import { DaemonChild } from './child.js';
import type { ChildSample } from './child-protocol.js';

export { BENCH_CONFIG_YAML, RESOURCE, benchSettings, createDaemon } from './bench-daemon.js';

/** hrtime of the next `registered` event for the resource. */
export function nextRegistration(kubelet: SimulatedKubelet, timeoutMs = 30_000): Promise<bigint> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      kubelet.off('registered', on);
      reject(new Error(`${RESOURCE} did not register within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (r: string): void => {
      if (r !== RESOURCE) return;
      const at = process.hrtime.bigint();
      clearTimeout(timer);
      kubelet.off('registered', on);
      resolve(at);
    };
    kubelet.on('registered', on);
  });
}

/** hrtime of the next ListAndWatch update for the resource satisfying `pred`. */
export function nextDevices(kubelet: SimulatedKubelet, pred: (d: Device__Output[]) => boolean, timeoutMs = 30_000): Promise<bigint> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      kubelet.off('devices', on);
      reject(new Error(`no matching ListAndWatch update for ${RESOURCE} within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (r: string, devices: Device__Output[]): void => {
      if (r !== RESOURCE || !pred(devices)) return;
      const at = process.hrtime.bigint();
      clearTimeout(timer);
      kubelet.off('devices', on);
      resolve(at);
    };
    kubelet.on('devices', on);
  });
}

export const allHealthy = (n: number) => (d: Device__Output[]): boolean => d.length === n && d.every((x) => x.health === 'Healthy');

export interface RunningPlugin {
  kubelet: SimulatedKubelet;
  daemon: Daemon;
  settings: Settings;
  /** ms from daemon.start() to registration, and from registration to the first full ListAndWatch update. */
  startToRegisteredMs: number;
  registeredToFirstUpdateMs: number;
  startToFirstUpdateMs: number;
  stop(): Promise<void>;
}

/** Kubelet first, then the daemon; resolves once all `groups` are advertised healthy. */
export async function startPlugin(roots: DiscoveryRoots, dir: string, groups: number, pollIntervalMs: number): Promise<RunningPlugin> {
  const settings = await benchSettings(roots, dir, pollIntervalMs);
  const kubelet = new SimulatedKubelet(settings.devicePluginDir);
  await kubelet.start();
  const daemon = await createDaemon(settings);
  const registered = nextRegistration(kubelet);
  const firstUpdate = nextDevices(kubelet, allHealthy(groups));
  const t0 = process.hrtime.bigint();
  try {
    await daemon.start();
    const [reg, upd] = await Promise.all([registered, firstUpdate]);
    return {
      kubelet,
      daemon,
      settings,
      startToRegisteredMs: Number(reg - t0) / 1e6,
      registeredToFirstUpdateMs: Number(upd - reg) / 1e6,
      startToFirstUpdateMs: Number(upd - t0) / 1e6,
      async stop() {
        await daemon.stop();
        await kubelet.stop();
      },
    };
  } catch (err) {
    await daemon.stop().catch(() => undefined);
    await kubelet.stop().catch(() => undefined);
    throw err;
  }
}

export interface ChildPlugin {
  kubelet: SimulatedKubelet;
  child: DaemonChild;
  startToRegisteredMs: number;
  registeredToFirstUpdateMs: number;
  startToFirstUpdateMs: number;
  /** The child after GC with every module loaded, before the daemon started. */
  loaded: ChildSample;
  stop(): Promise<void>;
}

/**
 * The kubelet stand-in here, the daemon in a child process (lib/daemon-child):
 * two event loops, as on a node. Resolves once all `groups` are advertised healthy.
 */
export async function startChildPlugin(
  roots: DiscoveryRoots,
  dir: string,
  groups: number,
  pollIntervalMs: number,
  fakeUevents = false,
  ueventPollIntervalMs?: number,
): Promise<ChildPlugin> {
  const kubelet = new SimulatedKubelet(join(dir, 'dp'));
  await kubelet.start();
  let child: DaemonChild | null = null;
  try {
    child = await DaemonChild.spawn({
      sysfsRoot: roots.sysfsRoot,
      devRoot: roots.devRoot,
      dir,
      pollIntervalMs,
      fakeUevents,
      ...(ueventPollIntervalMs !== undefined ? { ueventPollIntervalMs } : {}),
    });
    const registered = nextRegistration(kubelet, 60_000);
    const firstUpdate = nextDevices(kubelet, allHealthy(groups), 60_000);
    const loaded = await child.sample(true);
    const t0 = process.hrtime.bigint();
    await child.start();
    const [reg, upd] = await Promise.all([registered, firstUpdate]);
    const c = child;
    return {
      kubelet,
      child: c,
      loaded,
      startToRegisteredMs: Number(reg - t0) / 1e6,
      registeredToFirstUpdateMs: Number(upd - reg) / 1e6,
      startToFirstUpdateMs: Number(upd - t0) / 1e6,
      async stop() {
        await c.stop();
        await kubelet.stop();
      },
    };
  } catch (err) {
    await child?.stop().catch(() => undefined);
    await kubelet.stop().catch(() => undefined);
    throw err;
  }
}
