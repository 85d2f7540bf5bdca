// The DRA front end on the simulated node, in this process, over real unix
// sockets (the DRA kubelet stand-in) and real HTTP (the API server stand-in
// with the real Kubernetes client): publishing the pool of 1024 groups,
// NodePrepareResources in verify mode one at a time, a health change reaching
// the health stream and the taint in the slices, and memory after many
// prepares and unprepares compared with the same after a warm-up.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Benchmark } from './lib/context.js';
import { largeNodeAddress } from './lib/context.js';
import { BENCH_CONFIG_YAML } from './lib/plugin.js';
import { msSince, sleep } from './lib/stats.js';
import { parseConfigText } from '../src/config/load.js';
import { silentLogger } from '../src/log.js';
import { startDraNode, SIMULATED_NODE_NAME } from '../src/simulate/dra-node.js';
import { allocatedClaim, claimRefOf } from '../src/simulate/claims.js';
import { setEehState } from '../src/simulate/sysfs-tree.js';
import { FROZEN_EEH_STATE, HEALTHY_EEH_STATE } from '../src/simulate/power-node.js';
import { apiClaimSource } from '../src/dra/claim-reader.js';
import { SlicePublisher } from '../src/dra/slice-publisher.js';
import { deviceNameOf } from '../src/dra/device-name.js';
import { startFakeApiServer } from '../src/simulate/api-server.js';

const MiB = 2 ** 20;
const NODE = SIMULATED_NODE_NAME;
const DRIVER = 'power-vfio.ibm.com';

/** A full collection, without starting node with --expose-gc. */
function collect(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

async function until(probe: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > end) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

export const dra: Benchmark = {
  name: 'dra',
  title: 'DRA front end: publishing, NodePrepareResources, health to stream and taint',
  async run(ctx, rec) {
    const q = ctx.quick;
    const groups = q ? 64 : 1024;
    const tree = await ctx.tree(groups);
    const api = await startFakeApiServer();
    api.addNode(NODE);
    const kubeConfig = () => api.kubeConfig();
    const slices = new SlicePublisher({ driver: DRIVER, nodeName: NODE, platform: 'powernv', kubeConfig, logger: silentLogger(), resyncMs: 0 });
    const started = process.hrtime.bigint();
    const node = await startDraNode({
      dir: await ctx.subdir('d'),
      logger: silentLogger(),
      claims: apiClaimSource({ kubeConfig }),
      slices,
      roots: tree.roots,
      resources: parseConfigText(BENCH_CONFIG_YAML, 'bench configuration').resources,
      // No safety poll while measuring: changes come in through refresh().
      pollIntervalMs: 3_600_000,
    });
    try {
      const registeredMs = msSince(started);
      await slices.whenPublished();
      const publishedMs = msSince(started);
      const pool = api.resourceSlices({ nodeName: NODE });
      rec.value('start-to-registered', `daemon start to registered with the kubelet (discovering ${groups} groups)`, 'ms', registeredMs);
      rec.value('start-to-published', `daemon start to the whole pool published (${groups} devices in ${pool.length} slices)`, 'ms', publishedMs);
      const driver = node.daemon.dra!;
      const kubelet = node.kubelet!;
      const names = [...node.daemon.topology().groups.values()].sort((a, b) => a.id - b.id).map((g) => deviceNameOf(g));

      // NodePrepareResources (verify on the simulated POWER9 kernel), one claim of one device at a time.
      const claims = Array.from({ length: q ? 20 : 300 }, (_, i) => {
        const claim = allocatedClaim({ name: `c${i}`, driver: DRIVER, pool: NODE, devices: [{ request: 'nic', device: names[i % names.length]! }] });
        api.putResourceClaim(claim);
        return claimRefOf(claim);
      });
      const prepare: number[] = [];
      const unprepare: number[] = [];
      for (const ref of claims) {
        let t = process.hrtime.bigint();
        const answer = (await kubelet.prepare(DRIVER, [ref]))[ref.uid]!;
        prepare.push(msSince(t));
        if (answer.error) throw new Error(answer.error);
        t = process.hrtime.bigint();
        await kubelet.unprepare(DRIVER, [ref]);
        unprepare.push(msSince(t));
      }
      rec.samples('prepare-verify', 'NodePrepareResources, 1 device, verify mode (claim read over HTTP, sPAPR sequence, CDI spec, checkpoint)', 'ms', prepare);
      rec.samples('unprepare', 'NodeUnprepareResources, 1 device', 'ms', unprepare);

      // A health change: the inventory applies it, then the stream and the slices follow.
      const trials = q ? 3 : 10;
      const toStream: number[] = [];
      const toTaint: number[] = [];
      const rescan: number[] = [];
      for (let i = 0; i < trials; i++) {
        const id = (i * 37) % groups;
        const name = names[id]!;
        const address = largeNodeAddress(id, 0);
        await setEehState(tree.roots, address, FROZEN_EEH_STATE);
        let t = process.hrtime.bigint();
        await node.daemon.refresh();
        rescan.push(msSince(t));
        t = process.hrtime.bigint();
        // The stream got it while refresh() applied the topology; wait for the message if it is still on its way.
        await kubelet.waitForHealth(DRIVER, (h) => h.some((d) => d.device === name && d.health === 'UNHEALTHY'));
        toStream.push(msSince(t));
        // Polled without copying the stored slices, so the probe costs the loop next to nothing while the pool is written.
        await until(() => api.hasResourceSlice({ nodeName: NODE }, (s) => ((s['spec'] as { devices: { name: string; taints?: unknown[] }[] }).devices ?? []).some((d) => d.name === name && (d.taints ?? []).length > 0)), 30_000, 'the taint');
        toTaint.push(msSince(t));
        await setEehState(tree.roots, address, HEALTHY_EEH_STATE);
        await node.daemon.refresh();
        await slices.whenPublished();
      }
      rec.samples('rescan-full', `full rescan of ${groups} groups applied to the inventory (what precedes the rows below)`, 'ms', rescan);
      rec.samples('health-to-stream', 'inventory change (EEH freeze) to the health stream message at the kubelet', 'ms', toStream);
      rec.samples('health-to-taint', `inventory change (EEH freeze) to the taint in the published slices (republishing ${groups} devices)`, 'ms', toTaint);

      // Memory: many prepares and unprepares, after GC, against the same after a warm-up.
      const warm = q ? 50 : 500;
      const total = q ? 200 : 10_000;
      // The stand-ins keep records by design (every HTTP request, every simulated syscall): cleared
      // as they go, so the figure is the driver's own.
      const kernel = node.preparation.kernel!;
      const clearRecords = () => {
        api.requests.length = 0;
        kernel.calls.length = 0;
      };
      const churn = async (from: number, to: number) => {
        for (let i = from; i < to; i++) {
          if (i % 100 === 0) clearRecords();
          const ref = claims[i % claims.length]!;
          const answer = (await kubelet.prepare(DRIVER, [ref]))[ref.uid]!;
          if (answer.error) throw new Error(answer.error);
          await kubelet.unprepare(DRIVER, [ref]);
        }
      };
      await churn(0, warm);
      clearRecords();
      await sleep(100);
      collect();
      const before = process.memoryUsage();
      const churnStart = process.hrtime.bigint();
      await churn(warm, total);
      const churnMs = msSince(churnStart);
      clearRecords();
      await sleep(100);
      collect();
      const after = process.memoryUsage();
      const heapGrowth = (after.heapUsed - before.heapUsed) / MiB;
      rec.value('prepare-heap-growth', `heap after GC: after ${total} prepares and unprepares minus after the ${warm}-pair warm-up (this process: the driver, with the stand-ins' own records cleared)`, 'MiB', heapGrowth, {
        text: 'nothing grows with the number of prepares (heap after GC, taken here as: under 2 MiB)',
        stat: 'value',
        limit: 2,
      });
      rec.value('prepare-rss-growth', `RSS after GC over the same ${total - warm} pairs`, 'MiB', (after.rss - before.rss) / MiB);
      rec.value('prepare-pairs-per-second', 'prepare + unprepare pairs per second, one at a time', 'pairs/s', ((total - warm) * 1000) / churnMs);
      void driver;
    } finally {
      await node.stop();
      await api.close();
    }
  },
};
