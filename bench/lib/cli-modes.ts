// The idle daemon as the command line runs it (lib/cli-child.ts) in each of
// its modes, with the stand-ins it talks to in the benchmark process: the
// kubelet (device plugin or DRA) and, when the run talks to the API server,
// the API server stand-in through a kubeconfig file.
import { createServer } from 'node:net';
import { writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { SimulatedKubelet } from '../../src/simulate/kubelet.js';
import { DraKubelet } from '../../src/simulate/dra-kubelet.js';
import { startFakeApiServer, type FakeApiServer } from '../../src/simulate/api-server.js';
import { CONDITION_TYPE } from '../../src/report/node-report.js';
import type { DiscoveryRoots } from '../../src/topology/types.js';
import { CliChild } from './cli-child.js';
import type { CliSample } from './cli-probe-protocol.js';
import { allHealthy, nextDevices, nextRegistration, RESOURCE } from './plugin.js';
import { summarizeHeapSnapshot, type HeapSummary } from './heap-summary.js';
import { sleep } from './stats.js';

export type CliMode = 'device-plugin' | 'device-plugin-reporting' | 'dra';

const NODE = 'bench-node';
const DRIVER = 'power-vfio.ibm.com';

/** One resource, no preparation: what the issue measured (the kernel is not touched while idle). */
const CONFIG_YAML = `resources:
  - name: ${RESOURCE}
    selectors:
      vendors: ["15b3"]
      devices: ["1017"]
    preparation:
      mode: none
`;

export interface IdleRun {
  rssMiB: number[];
  /** After GC, once the idle window is over. */
  settled: CliSample;
  heap: HeapSummary | null;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

async function until(probe: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > end) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(50);
  }
}

const devicesIn = (slices: Record<string, unknown>[]): number =>
  slices.reduce((n, s) => n + ((s['spec'] as { devices?: unknown[] } | undefined)?.devices?.length ?? 0), 0);

/**
 * Starts the command line in `mode` on the tree, waits until it serves every
 * group (advertised healthy, or published as ResourceSlices), lets it settle,
 * then samples RSS every second for `idleMs` (the metrics and probe HTTP
 * server on, as by default) and, with `heap`, takes a heap snapshot.
 */
export async function idleCli(
  mode: CliMode,
  roots: DiscoveryRoots,
  dir: string,
  groups: number,
  options: { settleMs: number; idleMs: number; heap: boolean; env?: NodeJS.ProcessEnv },
): Promise<IdleRun> {
  const configPath = join(dir, 'config.yaml');
  await writeFile(configPath, CONFIG_YAML);
  const args = [
    '--config', configPath,
    '--sysfs-root', roots.sysfsRoot,
    '--dev-root', roots.devRoot,
    '--device-plugin-dir', join(dir, 'dp'),
    '--pod-resources-socket', join(dir, 'pr.sock'),
    '--handoff-dir', join(dir, 'handoff'),
    '--cdi-spec-dir', join(dir, 'cdi'),
    '--metrics-bind', '127.0.0.1',
    '--metrics-port', String(await freePort()),
    '--log-level', 'warn',
  ];
  let api: FakeApiServer | null = null;
  let kubelet: SimulatedKubelet | null = null;
  let draKubelet: DraKubelet | null = null;
  let child: CliChild | null = null;
  try {
    if (mode !== 'device-plugin') {
      api = await startFakeApiServer();
      api.addNode(NODE);
      const kubeconfig = join(dir, 'kubeconfig.json');
      await writeFile(kubeconfig, api.kubeConfig().exportConfig());
      args.push('--node-name', NODE, '--kubeconfig', kubeconfig);
    }
    let ready: Promise<unknown>;
    if (mode === 'dra') {
      args.push('--kubelet-api', 'dra', '--driver-name', DRIVER, '--plugins-registry-dir', join(dir, 'reg'), '--plugins-dir', join(dir, 'plugins'));
      draKubelet = new DraKubelet(join(dir, 'reg'));
      await draKubelet.start();
      const a = api!;
      ready = draKubelet.waitForPlugin(DRIVER, 60_000).then(() => until(() => devicesIn(a.resourceSlices({ nodeName: NODE })) === groups, 60_000, 'publishing the pool'));
    } else {
      kubelet = new SimulatedKubelet(join(dir, 'dp'));
      await kubelet.start();
      const reported = mode === 'device-plugin-reporting' ? (a: FakeApiServer) => until(() => a.condition(NODE, CONDITION_TYPE) !== undefined, 60_000, 'the node condition') : null;
      ready = Promise.all([nextRegistration(kubelet, 60_000), nextDevices(kubelet, allHealthy(groups), 60_000)]).then(() => reported?.(api!));
    }
    child = CliChild.spawn(args, options.env);
    const c = child;
    await Promise.race([ready, new Promise((_, reject) => c.proc.once('exit', () => reject(new Error(`the command line (${mode}) exited during start-up: ${c.stderrTail}`))))]);
    await sleep(options.settleMs);
    const rssMiB: number[] = [];
    const end = Date.now() + options.idleMs;
    while (Date.now() < end) {
      await sleep(Math.min(1000, Math.max(0, end - Date.now())));
      rssMiB.push((await child.sample(false)).rss / 2 ** 20);
    }
    const settled = await child.sample(true);
    let heap: HeapSummary | null = null;
    if (options.heap) {
      const path = await child.heapSnapshot(join(dir, `${mode}.heapsnapshot`));
      heap = await summarizeHeapSnapshot(path);
      await rm(path, { force: true });
    }
    return { rssMiB, settled, heap };
  } finally {
    await child?.stop();
    await kubelet?.stop();
    await draKubelet?.stop();
    await api?.close();
  }
}
