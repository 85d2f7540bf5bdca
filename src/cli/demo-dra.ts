// The DRA part of `demo`: the same simulated POWER9 node served through
// Dynamic Resource Allocation, with a DRA kubelet stand-in and an API server
// stand-in on localhost that the real Kubernetes client talks to. It shows the
// published ResourceSlices, a claim prepared in handoff mode with its window
// memory from the claim, the health stream and a taint on an EEH freeze, and
// the kubelet deleting the node's slices at its start.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { startDraNode, SIMULATED_NODE_NAME, type DraNode } from '../simulate/dra-node.js';
import { startFakeApiServer, type FakeApiServer } from '../simulate/api-server.js';
import { allocatedClaim, preparationParameters } from '../simulate/claims.js';
import { setEehState } from '../simulate/sysfs-tree.js';
import { FROZEN_EEH_STATE, HEALTHY_EEH_STATE } from '../simulate/power-node.js';
import { apiClaimSource } from '../dra/claim-reader.js';
import { SlicePublisher } from '../dra/slice-publisher.js';
import { formatBytes } from '../vfio/container-sequence.js';

type Say = (line?: string) => void;
type Heading = (n: number, title: string) => void;

interface SliceView {
  metadata: { name: string };
  spec: {
    pool: { generation: number; resourceSliceCount: number };
    devices: { name: string; attributes: Record<string, { string?: string; int?: number; bool?: boolean }>; taints?: { key: string; value?: string; effect: string }[] }[];
  };
}

async function until<T>(probe: () => T | undefined | false, timeoutMs: number, what: string): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value) return value;
    if (Date.now() > end) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Runs the DRA steps from `first` on; returns the next step number. */
export async function runDraDemo(options: { dir: string; logger: Logger; say: Say; heading: Heading; first: number }): Promise<number> {
  const { say, heading } = options;
  let step = options.first;
  let api: FakeApiServer | null = null;
  let node: DraNode | null = null;
  try {
    api = await startFakeApiServer();
    api.addNode(SIMULATED_NODE_NAME);
    const kubeConfig = () => api!.kubeConfig();
    const slices = new SlicePublisher({ driver: 'power-vfio.ibm.com', nodeName: SIMULATED_NODE_NAME, platform: 'powernv', kubeConfig, logger: options.logger, resyncMs: 0 });
    const server = api;
    node = await startDraNode({
      dir: join(options.dir, 'dra'),
      logger: options.logger,
      claims: apiClaimSource({ kubeConfig }),
      slices,
      // The real kubelet deletes its node's slices whenever it starts.
      kubelet: { onStart: async () => void server.deleteResourceSlices({ nodeName: SIMULATED_NODE_NAME }) },
    });
    const driver = node.settings.dra.driverName;
    const kubelet = node.kubelet!;
    const plugin = kubelet.plugin(driver)!;

    heading(step++, 'DRA: the same node through Dynamic Resource Allocation (--kubelet-api dra)');
    say(`  registration socket ${node.daemon.dra!.registration.socketPath}`);
    say(`  the kubelet chose ${plugin.version}.DRAPlugin and the ${plugin.healthVersion} health stream; service ${plugin.endpoint}`);

    heading(step++, 'ResourceSlices published for the node (one pool named after it)');
    await slices.whenPublished();
    const published = api.resourceSlices({ nodeName: SIMULATED_NODE_NAME }) as unknown as SliceView[];
    for (const slice of published) {
      say(`  ${slice.metadata.name}: generation ${slice.spec.pool.generation}, ${slice.spec.devices.length} devices (slice 1 of ${slice.spec.pool.resourceSliceCount})`);
      for (const d of slice.spec.devices) {
        const a = d.attributes;
        say(
          `    ${d.name.padEnd(18)} ${String(a['resource']?.string).padEnd(20)} group ${a['iommuGroup']?.int}  PHB ${a['phb']?.int}  PE 0x${(a['pe']?.int ?? 0).toString(16)}  pciBusID ${a['resource.kubernetes.io/pciBusID']?.string}  NUMA ${a['resource.kubernetes.io/numaNode']?.int ?? '?'}`,
        );
      }
    }

    heading(step++, 'A claim for the FPGA, its window memory set by the claim (handoff, 64 MiB)');
    const claim = allocatedClaim({
      name: 'fpga-job',
      namespace: 'demo',
      driver,
      pool: SIMULATED_NODE_NAME,
      devices: [{ request: 'fpga', device: 'pci-0035-02-00-0' }],
      config: [{ source: 'FromClaim', requests: ['fpga'], parameters: preparationParameters({ mode: 'handoff', handoff: { memorySize: '64Mi' } }) }],
    });
    api.putResourceClaim(claim);
    const ref = { namespace: 'demo', name: 'fpga-job', uid: (claim['metadata'] as { uid: string }).uid };
    const started = Date.now();
    const answer = (await kubelet.prepare(driver, [ref]))[ref.uid]!;
    if (answer.error) throw new Error(answer.error);
    say(`  NodePrepareResources answered in ${Date.now() - started} ms: ${answer.devices.map((d) => d.cdi_device_ids.join(' ')).join(', ')}`);
    const specFile = join(node.settings.dra.cdiSpecDir, `${driver}-claim-${ref.uid}.json`);
    const spec = JSON.parse(await readFile(specFile, 'utf8')) as {
      devices: { name: string; containerEdits: { deviceNodes: { path: string }[] } }[];
      containerEdits: { deviceNodes: { path: string }[]; env?: string[]; mounts?: { hostPath: string; containerPath: string }[] };
    };
    say(`  CDI spec ${specFile}:`);
    say(`    every container: ${spec.containerEdits.deviceNodes.map((d) => d.path).join(', ')}`);
    for (const d of spec.devices) say(`    device ${d.name}: ${d.containerEdits.deviceNodes.map((x) => x.path).join(', ')}`);
    for (const e of spec.containerEdits.env ?? []) say(`    env    ${e}`);
    for (const m of spec.containerEdits.mounts ?? []) say(`    mount  ${m.hostPath} -> ${m.containerPath}`);
    const memory = (spec.containerEdits.env ?? []).find((e) => e.startsWith('PVDP_HANDOFF_MEMORY_SIZE='))?.split('=')[1];
    say(`  the sPAPR container of group 6 is prepared and mapped with ${memory ? formatBytes(BigInt(memory)) : '?'} of DMA memory, waiting for the pod's claim`);

    heading(step++, 'Health: the GPU\'s PE freezes (EEH); the health stream and a taint tell the kubelet and the scheduler');
    const freeze = Date.now();
    await setEehState(node.roots, '0035:01:00.0', FROZEN_EEH_STATE);
    await node.daemon.refresh();
    const entries = await kubelet.waitForHealth(driver, (h) => h.some((d) => d.device === 'pci-0035-01-00-0' && d.health === 'UNHEALTHY'));
    const gpu = entries.find((d) => d.device === 'pci-0035-01-00-0')!;
    say(`  health stream after ${Date.now() - freeze} ms: ${gpu.device} ${gpu.health}: ${gpu.message}`);
    const tainted = await until(
      () =>
        (api!.resourceSlices({ nodeName: SIMULATED_NODE_NAME }) as unknown as SliceView[])
          .flatMap((s) => s.spec.devices)
          .find((d) => d.name === 'pci-0035-01-00-0' && (d.taints ?? []).length > 0),
      10_000,
      'the taint',
    );
    say(`  slice after ${Date.now() - freeze} ms: taint ${tainted.taints!.map((t) => `${t.key}=${t.value}:${t.effect}`).join(', ')}`);
    await setEehState(node.roots, '0035:01:00.0', HEALTHY_EEH_STATE);
    await node.daemon.refresh();
    await kubelet.waitForHealth(driver, (h) => h.every((d) => d.health === 'HEALTHY'));
    say('  the PE recovers: HEALTHY again, the taint is removed');

    heading(step++, 'Unprepare, and a kubelet restart (it deletes the node\'s slices when it starts)');
    const un = (await kubelet.unprepare(driver, [ref]))[ref.uid]!;
    say(`  NodeUnprepareResources: ${un.error || 'ok'}; the CDI spec and the handoff directory are gone`);
    const before = Date.now();
    await kubelet.restart();
    await kubelet.waitForPlugin(driver);
    await until(() => api!.resourceSlices({ nodeName: SIMULATED_NODE_NAME }).length > 0, 10_000, 'republishing');
    const back = api.resourceSlices({ nodeName: SIMULATED_NODE_NAME }) as unknown as SliceView[];
    say(`  registered again and the pool republished (generation ${back[0]!.spec.pool.generation}) ${Date.now() - before} ms later`);
    return step;
  } finally {
    await node?.stop();
    await api?.close();
  }
}
