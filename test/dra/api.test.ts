// The DRA front end with the real Kubernetes client over HTTP against the API
// server stand-in: claims read from the API server (found, gone, server down,
// server hanging), the pool published and published again when the kubelet
// deletes it at its start, a taint following an EEH freeze, and a large node.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { createLogger } from '../../src/log.js';
import { Writable } from 'node:stream';
import { startDraNode, SIMULATED_NODE_NAME, type DraNode } from '../../src/simulate/dra-node.js';
import { allocatedClaim, claimRefOf } from '../../src/simulate/claims.js';
import { startFakeApiServer, type FakeApiServer } from '../../src/simulate/api-server.js';
import { apiClaimSource } from '../../src/dra/claim-reader.js';
import { SlicePublisher } from '../../src/dra/slice-publisher.js';
import { setEehState, writeSysfsTree } from '../../src/simulate/sysfs-tree.js';
import { FROZEN_EEH_STATE } from '../../src/simulate/power-node.js';
import { parseConfigText } from '../../src/config/load.js';
import { largeNode, waitFor } from '../helpers/fixtures.js';
import { ResourceSlice } from 'kubernetes-models/resource.k8s.io/v1/ResourceSlice';

const DRIVER = 'power-vfio.ibm.com';
const NODE = SIMULATED_NODE_NAME;

let dir: string;
let api: FakeApiServer;
let node: DraNode | null;
let publisher: SlicePublisher | null;

function quietLogger() {
  return createLogger({ level: 'silent', destination: new Writable({ write: (_c, _e, cb) => cb() }) });
}

async function start(options: { timeoutMs?: number; spec?: Parameters<typeof writeSysfsTree>[1]; resources?: string } = {}): Promise<DraNode> {
  const kubeConfig = () => api.kubeConfig();
  publisher = new SlicePublisher({ driver: DRIVER, nodeName: NODE, platform: 'powernv', kubeConfig, logger: quietLogger(), retryMinMs: 20, retryMaxMs: 200, resyncMs: 0 });
  node = await startDraNode({
    dir,
    logger: quietLogger(),
    claims: apiClaimSource({ kubeConfig, timeoutMs: options.timeoutMs ?? 2000 }),
    slices: publisher,
    ...(options.spec ? { spec: options.spec } : {}),
    ...(options.resources ? { resources: parseConfigText(options.resources).resources } : {}),
    kubelet: { onStart: async () => void api.deleteResourceSlices({ nodeName: NODE }) },
  });
  return node;
}

function slicesOfNode(): Record<string, unknown>[] {
  return api.resourceSlices({ nodeName: NODE, driver: DRIVER });
}

beforeEach(async () => {
  dir = await mkdtemp('/tmp/pvdp-');
  api = await startFakeApiServer();
  api.addNode(NODE);
  node = null;
  publisher = null;
});

afterEach(async () => {
  await node?.stop();
  await api.close();
  await rm(dir, { recursive: true, force: true });
});

describe('DRA with the API server', () => {
  it('reads claims over HTTP: found, gone, the server down and back, and a server that hangs', async () => {
    // The deadline of one read: short enough to keep the hanging read below quick, long enough
    // that an ordinary read of the local stand-in never runs into it on a loaded machine.
    const n = await start({ timeoutMs: 1500 });
    const claim = allocatedClaim({ namespace: 'team-a', name: 'nvme', driver: DRIVER, pool: NODE, devices: [{ request: 'nvme', device: 'pci-0000-02-00-0' }] });
    api.putResourceClaim(claim);
    const ref = claimRefOf(claim);
    const kubelet = n.kubelet!;
    expect((await kubelet.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
    await kubelet.unprepare(DRIVER, [ref]);
    api.deleteResourceClaim('team-a', 'nvme');
    expect((await kubelet.prepare(DRIVER, [ref]))[ref.uid]!.error).toMatch(/ResourceClaim team-a\/nvme was not found/);
    api.putResourceClaim(claim);
    await api.down();
    expect((await kubelet.prepare(DRIVER, [ref]))[ref.uid]!.error).toMatch(/cannot read ResourceClaim team-a\/nvme from the API server \(unreachable: .*\); the kubelet will retry/);
    await api.up();
    api.addFault({ respond: 'hang', method: 'GET', path: /resourceclaims/, times: 1 });
    const t = Date.now();
    expect((await kubelet.prepare(DRIVER, [ref]))[ref.uid]!.error).toMatch(/\(timeout: no answer within 1500 ms\)/);
    // The read's own deadline (1.5 s) ends the hanging read, not the kubelet's 45 s call deadline
    // nor the server (it never answers): 15 s lies well away from both.
    expect(Date.now() - t).toBeLessThan(15_000);
    expect((await kubelet.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
  });

  it('publishes the pool, taints a frozen device, and publishes again after the kubelet deletes the slices at its start', async () => {
    const n = await start();
    await publisher!.whenPublished();
    const [first] = slicesOfNode();
    expect(ResourceSlice.is(new ResourceSlice(first as never))).toBe(true);
    new ResourceSlice(first as never).validate();
    const spec = first!['spec'] as { pool: { name: string; generation: number }; devices: { name: string; attributes: Record<string, unknown>; taints?: { key: string; value: string }[] }[] };
    expect(spec.pool.name).toBe(NODE);
    expect(spec.devices.map((d) => d.name)).toContain('pci-0035-02-00-0');
    expect((first!['metadata'] as { ownerReferences?: { kind: string; name: string }[] }).ownerReferences).toEqual([expect.objectContaining({ kind: 'Node', name: NODE })]);
    await setEehState(n.roots, '0035:01:00.0', FROZEN_EEH_STATE);
    await n.daemon.refresh();
    await waitFor(
      () =>
        slicesOfNode().some((s) =>
          (s['spec'] as typeof spec).devices.some((d) => d.name === 'pci-0035-01-00-0' && d.taints?.some((t) => t.key === `${DRIVER}/unhealthy` && t.value === 'EEHFrozen')),
        ),
      { timeoutMs: 5000 },
    );
    const generation = (slicesOfNode()[0]!['spec'] as typeof spec).pool.generation;
    expect(generation).toBeGreaterThan(spec.pool.generation);
    // The kubelet deletes the node's slices when it starts (before restart() resolves); the watch
    // brings them back. The resync, the safety net, is off here, so their return at all is the
    // watch's doing: no clock is needed, only a deadline generous for a loaded machine.
    await n.kubelet!.restart();
    await waitFor(() => slicesOfNode().length > 0, { timeoutMs: 15_000, what: 'the slices to be published again' });
  });

  it('spreads a large node over several slices of one generation', async () => {
    const resources = 'resources:\n  - name: ibm.com/cx5\n    selectors: { vendors: ["15b3"], devices: ["1017"] }\n    preparation: { mode: none }\n';
    await start({ spec: largeNode(300, 1), resources });
    await publisher!.whenPublished();
    const slices = slicesOfNode();
    expect(slices).toHaveLength(3);
    const pools = slices.map((s) => (s['spec'] as { pool: { generation: number; resourceSliceCount: number } }).pool);
    expect(new Set(pools.map((p) => p.generation)).size).toBe(1);
    expect(pools.every((p) => p.resourceSliceCount === 3)).toBe(true);
    const devices = slices.flatMap((s) => (s['spec'] as { devices: { name: string }[] }).devices.map((d) => d.name));
    expect(new Set(devices).size).toBe(300);
    for (const s of slices) new ResourceSlice(s as never).validate();
    // Writing the 300-group sysfs tree alone takes 1.5 s to 9 s here (thousands of files) and
    // came within a second of the default 20 s under two busy loops: the work, not a wait.
  }, 90_000);
});
