// The ResourceSlice publisher with the real @kubernetes/client-node against the
// local fake API server: what it writes and replaces, how it notices slices
// deleted or changed by others, and how it behaves when the server is down,
// conflicts, fails or hangs. Backoffs are milliseconds and every wait polls a
// condition with a deadline. Request deadlines are generous (10 s) except where
// a test makes the server hang on purpose, so a loaded machine never turns an
// ordinary request into a timeout and a retry at a higher generation.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ResourceSlice as ResourceSliceModel } from 'kubernetes-models/resource.k8s.io/v1/ResourceSlice';
import { SlicePublisher, type SlicePublisherOptions } from '../../src/dra/slice-publisher.js';
import { buildSlices, sliceName, validateSlice, type PublishedDevice, type ResourceSlice } from '../../src/dra/slices.js';
import type { IommuGroup } from '../../src/topology/types.js';
import { FakeApiServer, startFakeApiServer, type RecordedRequest } from '../../src/simulate/api-server.js';
import { fn, group } from '../helpers/groups.js';
import { capturedLogger, until, type LogLine } from '../report/support.js';

const NODE = 'power9-node-1';
const DRIVER = 'power-vfio.ibm.com';
const NVME = 'ibm.com/nvme';
const SLICES_PATH = '/apis/resource.k8s.io/v1/resourceslices';

type Json = Record<string, unknown>;

let api: FakeApiServer;
let publishers: SlicePublisher[] = [];
let lines: LogLine[];

function publisher(options: Partial<SlicePublisherOptions> = {}): SlicePublisher {
  const captured = capturedLogger();
  lines = captured.lines;
  const p = new SlicePublisher({
    driver: DRIVER,
    nodeName: NODE,
    platform: 'powernv',
    kubeConfig: () => api.kubeConfig(),
    logger: captured.logger,
    retryMinMs: 5,
    retryMaxMs: 50,
    requestTimeoutMs: 10_000,
    resyncMs: 0,
    coalesceMs: 5,
    ...options,
  });
  publishers.push(p);
  return p;
}

function nvmeGroup(n: number): IommuGroup {
  const domain = (n >> 8).toString(16).padStart(4, '0');
  const bus = (n & 0xff).toString(16).padStart(2, '0');
  return group(n, [fn(`${domain}:${bus}:00.0`, { pcieRoot: `pci${domain}:00` })]);
}

/** `count` NVMe groups; the PEs of those in `frozen` are frozen by EEH. */
function devices(count: number, frozen: number[] = []): PublishedDevice[] {
  return Array.from({ length: count }, (_, i) => {
    if (!frozen.includes(i)) return { resource: NVME, device: { group: nvmeGroup(i), healthy: true } };
    const g = { ...nvmeGroup(i), eeh: { hardwareState: 0, softwareState: 1, configAddr: i, mode: 1, frozen: true, source: nvmeGroup(i).functions[0]!.address } };
    return { resource: NVME, device: { group: g, healthy: false, reason: 'the PE is frozen by EEH' } };
  });
}

/** Our node's and driver's slices on the server. */
function ours(): ResourceSlice[] {
  return api.resourceSlices({ nodeName: NODE, driver: DRIVER }) as unknown as ResourceSlice[];
}

/** The pool on the server is complete and consistent: one generation, `resourceSliceCount` slices, these device names. */
function poolIs(generation: number, deviceNames: string[]): boolean {
  const slices = ours();
  if (slices.length === 0) return false;
  if (!slices.every((s) => s.spec.pool.generation === generation && s.spec.pool.resourceSliceCount === slices.length)) return false;
  const names = slices.flatMap((s) => (s.spec.devices ?? []).map((d) => d.name)).sort();
  return JSON.stringify(names) === JSON.stringify([...deviceNames].sort());
}

function namesOf(list: PublishedDevice[]): string[] {
  return buildSlices({ driver: DRIVER, nodeName: NODE, platform: null, generation: 1 }, list).flatMap((s) => s.spec.devices!.map((d) => d.name));
}

function sliceWrites(): RecordedRequest[] {
  return api.requests.filter((r) => r.path.startsWith(SLICES_PATH) && ['POST', 'PUT', 'DELETE'].includes(r.method));
}

function warnings(): LogLine[] {
  return lines.filter((l) => l.level === 'warn');
}

/** Waits until the publisher's watch has delivered every change the server made to our node's slices. */
async function caughtUp(p: SlicePublisher): Promise<void> {
  const ourEvents = () =>
    api.sliceEvents().filter((e) => (e.object['spec'] as Json)['nodeName'] === NODE && (e.object['spec'] as Json)['driver'] === DRIVER).length;
  await until(() => api.activeWatches > 0 && p.activity().watchEvents >= ourEvents(), 'the watch to deliver every change');
}

/** Posts a raw request to the fake server, as another client (the kubelet) would. */
async function raw(method: string, path: string, body?: unknown): Promise<Response> {
  return fetch(`${api.url}${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
}

beforeEach(async () => {
  api = await startFakeApiServer();
  api.addNode(NODE);
  publishers = [];
});

afterEach(async () => {
  await Promise.all(publishers.map((p) => p.stop()));
  // Every object any test made the publisher write must pass the schema and the API's limits.
  for (const request of api.requests) {
    if (!request.path.startsWith(SLICES_PATH) || !['POST', 'PUT'].includes(request.method)) continue;
    if (request.status === 201 || request.status === 200) {
      new ResourceSliceModel(structuredClone(request.body) as never).validate();
      validateSlice(request.body as ResourceSlice);
    }
  }
  await api.close();
});

describe('publishing', () => {
  it('publishes 1024 groups as 8 slices of one generation, owned by the Node, attributes intact', async () => {
    const p = publisher();
    const list = devices(1024);
    p.update(list);
    await p.start();
    await p.whenPublished();

    expect(poolIs(1, namesOf(list))).toBe(true);
    const slices = ours();
    expect(slices.map((s) => s.metadata.name)).toEqual(Array.from({ length: 8 }, (_, i) => sliceName(DRIVER, NODE, i)));
    const nodeUid = (api.node(NODE)!['metadata'] as Json)['uid'];
    for (const slice of slices) {
      expect(slice.metadata.ownerReferences).toEqual([{ apiVersion: 'v1', kind: 'Node', name: NODE, uid: nodeUid, controller: false }]);
      expect(slice.spec.devices).toHaveLength(128);
    }
    // Integer attributes survive the client's model (which calls them `_int`).
    const first = slices[0]!.spec.devices![0]!;
    expect(first.attributes).toMatchObject({
      iommuGroup: { int: 0 },
      phb: { int: 0 },
      functions: { int: 1 },
      'resource.kubernetes.io/numaNode': { int: 0 },
      'resource.kubernetes.io/pciBusID': { string: '0000:00:00.0' },
      'resource.kubernetes.io/pcieRoot': { string: 'pci0000:00' },
      resource: { string: NVME },
    });
    expect(p.status()).toEqual({ state: 'published', generation: 1, slices: 8, devices: 1024 });
    expect(lines.find((l) => l.msg === 'Published the ResourceSlices of this node')).toMatchObject({ generation: 1, slices: 8, devices: 1024 });
  });

  it('publishes a new generation with taints when health changes, and takes the taint away again', async () => {
    const p = publisher();
    p.update(devices(3));
    await p.start();
    await p.whenPublished();
    expect(p.status().generation).toBe(1);

    p.update(devices(3, [1]));
    await p.whenPublished();
    expect(p.status().generation).toBe(2);
    const tainted = ours()[0]!.spec.devices!.find((d) => d.name === 'pci-0000-01-00-0')!;
    expect(tainted.taints).toHaveLength(1);
    expect(tainted.taints![0]).toMatchObject({ key: `${DRIVER}/unhealthy`, value: 'EEHFrozen', effect: 'NoSchedule' });
    // The server, not the driver, sets the time.
    expect(typeof tainted.taints![0]!.timeAdded).toBe('string');
    const sent = sliceWrites().at(-1)!.body as ResourceSlice;
    expect(sent.spec.devices!.find((d) => d.name === 'pci-0000-01-00-0')!.taints![0]).not.toHaveProperty('timeAdded');

    p.update(devices(3));
    await p.whenPublished();
    expect(p.status().generation).toBe(3);
    expect(ours()[0]!.spec.devices!.every((d) => d.taints === undefined)).toBe(true);
    expect(poolIs(3, namesOf(devices(3)))).toBe(true);
  });

  it('writes nothing for an update that changes nothing', async () => {
    const p = publisher();
    p.update(devices(4));
    await p.start();
    await p.whenPublished();
    const before = api.requests.length;
    p.update(devices(4));
    // Nothing was even scheduled: no timer, no run, no request.
    expect(p.activity()).toMatchObject({ timers: 0, running: false, requests: 0 });
    await p.whenPublished();
    expect(api.requests.length).toBe(before);
    expect(p.status().generation).toBe(1);
  });

  it('coalesces a burst of updates into one publish of the last', async () => {
    const p = publisher({ coalesceMs: 20 });
    await p.start();
    for (let n = 1; n <= 20; n++) p.update(devices(n));
    await p.whenPublished();
    expect(poolIs(1, namesOf(devices(20)))).toBe(true);
    expect(sliceWrites().filter((r) => r.method === 'POST')).toHaveLength(1);
  });

  it('replaces what an earlier run left and leaves other nodes and drivers alone', async () => {
    const leftover = (name: string, node: string, driver: string, generation: number): Json => ({
      apiVersion: 'resource.k8s.io/v1',
      kind: 'ResourceSlice',
      metadata: { name },
      spec: { driver, nodeName: node, pool: { name: node, generation, resourceSliceCount: 2 }, devices: [{ name: 'old-device' }] },
    });
    api.putResourceSlice(leftover(sliceName(DRIVER, NODE, 0), NODE, DRIVER, 7));
    api.putResourceSlice(leftover(`${NODE}-${DRIVER}-x7k2p`, NODE, DRIVER, 7));
    const otherNode = api.putResourceSlice(leftover(sliceName(DRIVER, 'power9-node-2', 0), 'power9-node-2', DRIVER, 3));
    const otherDriver = api.putResourceSlice(leftover(sliceName('gpu.example.com', NODE, 0), NODE, 'gpu.example.com', 4));

    const p = publisher();
    p.update(devices(2));
    await p.start();
    await p.whenPublished();

    // Above every generation found, so readers never prefer the leftovers.
    expect(p.status().generation).toBe(8);
    expect(poolIs(8, namesOf(devices(2)))).toBe(true);
    expect(ours().map((s) => s.metadata.name)).toEqual([sliceName(DRIVER, NODE, 0)]);
    expect(api.resourceSlice(sliceName(DRIVER, 'power9-node-2', 0))).toEqual(otherNode);
    expect(api.resourceSlice(sliceName('gpu.example.com', NODE, 0))).toEqual(otherDriver);

    // The list asked the server for this node and driver only; the new generation was written before the leftover went.
    const listing = api.requests.find((r) => r.method === 'GET' && r.path === SLICES_PATH && r.query.get('watch') !== 'true')!;
    expect(listing.query.get('fieldSelector')).toBe(`spec.nodeName=${NODE},spec.driver=${DRIVER}`);
    expect(sliceWrites().map((r) => `${r.method} ${r.path.slice(SLICES_PATH.length)}`)).toEqual([
      `PUT /${sliceName(DRIVER, NODE, 0)}`,
      `DELETE /${NODE}-${DRIVER}-x7k2p`,
    ]);
  });

  it('deletes the slices a shrinking pool no longer needs, without reacting to its own deletions', async () => {
    const p = publisher();
    p.update(devices(200));
    await p.start();
    await p.whenPublished();
    expect(ours()).toHaveLength(2);

    p.update(devices(100));
    await p.whenPublished();
    expect(poolIs(2, namesOf(devices(100)))).toBe(true);
    expect(ours()).toHaveLength(1);
    const writes = sliceWrites().length;

    // Wait until the watch has delivered every change the server made to our slices, the deletion included.
    await caughtUp(p);
    expect(api.sliceEvents().some((e) => e.type === 'DELETED')).toBe(true);
    expect(p.activity()).toMatchObject({ running: false, timers: 0 });
    expect(sliceWrites()).toHaveLength(writes);
    expect(p.status().generation).toBe(2);
    expect(lines.filter((l) => l.msg === 'Checking the ResourceSlices on the server')).toEqual([]);
  });

  it('publishes an empty pool as one slice without devices', async () => {
    const p = publisher();
    p.update([]);
    await p.start();
    await p.whenPublished();
    expect(ours()).toHaveLength(1);
    expect(ours()[0]!.spec).toMatchObject({ pool: { name: NODE, generation: 1, resourceSliceCount: 1 } });
  });
});

describe('slices changed by others', () => {
  it('publishes again within a second when the kubelet deletes the node’s slices', async () => {
    // Default coalescing and the default resync (60 s), as in production.
    const p = publisher({ coalesceMs: undefined, resyncMs: undefined });
    const list = devices(300);
    p.update(list);
    await p.start();
    await p.whenPublished();
    const renamed = list.map((d) => ({ ...d, resource: 'ibm.com/nvme-fast' }));
    p.update(renamed);
    await p.whenPublished();
    await caughtUp(p);

    // The kubelet deletes every slice of its node at its start (a delete collection by field selector).
    const deletions = () => api.sliceEvents().filter((e) => e.type === 'DELETED' && (e.object['spec'] as Json)['nodeName'] === NODE).length;
    const deletionsBefore = deletions();
    const deletedAt = Date.now();
    const response = await raw('DELETE', `${SLICES_PATH}?fieldSelector=${encodeURIComponent(`spec.nodeName=${NODE}`)}`);
    expect(response.status).toBe(200);
    // All three went (read from the server's history: the publisher may already be writing them again).
    expect(deletions() - deletionsBefore).toBe(3);
    await caughtUp(p);
    await p.whenPublished();
    const backAfterMs = Date.now() - deletedAt;
    expect(poolIs(3, namesOf(renamed))).toBe(true);
    expect(p.status()).toMatchObject({ state: 'published', generation: 3, slices: 3 });
    // The watch's reaction is a 25 ms coalescing window, one list and one publish (well under a
    // second, a few hundred ms on a loaded machine); without it the slices would wait for the
    // 60 s resync. 10 s lies well away from both.
    expect(backAfterMs).toBeLessThan(10_000);
  });

  it('restores a slice someone else changed', async () => {
    const p = publisher();
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    await until(() => api.activeWatches === 1, 'the watch to be open');
    const name = sliceName(DRIVER, NODE, 0);
    const tampered = api.resourceSlice(name)! as unknown as ResourceSlice;
    tampered.spec.devices = [];
    const response = await raw('PUT', `${SLICES_PATH}/${name}`, tampered);
    expect(response.status).toBe(200);
    await until(() => poolIs(2, namesOf(devices(2))), 'the slice to be restored');
  });

  it('deletes a stray slice of its pool, publishing above it when its generation would win', async () => {
    const p = publisher();
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    await caughtUp(p);
    const stray = (name: string, generation: number): Json => ({
      metadata: { name },
      spec: { driver: DRIVER, nodeName: NODE, pool: { name: NODE, generation, resourceSliceCount: 1 }, devices: [{ name: 'ghost' }] },
    });
    const oursBefore = api.resourceSlice(sliceName(DRIVER, NODE, 0));

    // Older: readers ignore it already; it goes, ours stay as they are.
    api.putResourceSlice(stray('stray-old', 0));
    await until(() => !api.resourceSlice('stray-old'), 'the older stray slice to go');
    await p.whenPublished();
    expect(api.resourceSlice(sliceName(DRIVER, NODE, 0))).toEqual(oursBefore);
    expect(p.status().generation).toBe(1);

    // Newer: readers would take it for the pool, so ours move above it.
    api.putResourceSlice(stray('stray-new', 5));
    await until(() => !api.resourceSlice('stray-new') && poolIs(6, namesOf(devices(2))), 'the pool above the newer stray slice');
    await p.whenPublished();
    expect(p.status().generation).toBe(6);
  });

  it('finds deleted slices by the periodic resync when the watch sees nothing', async () => {
    // Watches hang without answering; the resync is the only way to notice.
    api.addFault({ watch: true, respond: 'hang' });
    const p = publisher({ resyncMs: 100, requestTimeoutMs: 30_000 });
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    api.deleteResourceSlices({ nodeName: NODE });
    await until(() => poolIs(2, namesOf(devices(2))), 'the resync to bring the slices back');
    expect(lines.some((l) => l.msg === 'Checking the ResourceSlices on the server' && l['reason'] === 'periodic resync')).toBe(true);
  });

  it('watches again after the server ends the watch, catching up on what happened meanwhile', async () => {
    const p = publisher();
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    await until(() => api.activeWatches === 1, 'the watch to be open');
    const watchesBefore = api.requests.filter((r) => r.query.get('watch') === 'true').length;
    api.endWatches();
    api.deleteResourceSlices({ nodeName: NODE });
    await until(() => poolIs(2, namesOf(devices(2))), 'the slices to be back');
    await until(() => api.activeWatches === 1, 'a new watch');
    expect(api.requests.filter((r) => r.query.get('watch') === 'true').length).toBeGreaterThan(watchesBefore);
  });
});

describe('when the API server misbehaves', () => {
  it('keeps retrying while the server is down at start, and publishes once it is up', async () => {
    await api.down();
    const p = publisher();
    p.update(devices(2));
    await p.start();
    expect(p.status().state).toBe('retrying');
    expect(p.status().lastError).toMatch(/ECONNREFUSED/);
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ errorKind: 'unreachable', msg: 'Kubernetes API unreachable; ResourceSlice publishing retrying' });

    await api.up();
    await p.whenPublished();
    expect(poolIs(1, namesOf(devices(2)))).toBe(true);
    expect(lines.filter((l) => l.msg === 'ResourceSlice publishing resumed')).toHaveLength(1);
    expect(warnings()).toHaveLength(1);
    expect(p.status().lastError).toBeUndefined();
  });

  it('asks for the KubeConfig again after it could not be loaded', async () => {
    let calls = 0;
    const p = publisher({
      kubeConfig: async () => {
        calls += 1;
        if (calls <= 2) throw new Error('no token file yet');
        return api.kubeConfig();
      },
    });
    p.update(devices(1));
    await p.start();
    expect(p.status()).toMatchObject({ state: 'retrying', lastError: 'loadConfig: no token file yet' });
    await p.whenPublished();
    expect(calls).toBe(3);
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ errorKind: 'config', msg: 'Kubernetes API configuration is unusable; ResourceSlice publishing retrying' });
  });

  it('retries 500s with backoff, logging once', async () => {
    api.addFault({ path: SLICES_PATH, method: 'POST', respond: 500, times: 4 });
    const p = publisher();
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    expect(api.requests.filter((r) => r.method === 'POST' && r.status === 500)).toHaveLength(4);
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ errorKind: 'serverError', statusCode: 500, operation: 'createResourceSlice' });
    expect(poolIs(1, namesOf(devices(2)))).toBe(true);
  });

  it('logs again when the kind of failure changes, and says what to check on 403', async () => {
    api.addFault({ path: SLICES_PATH, respond: 503, times: 2 });
    api.addFault({ path: SLICES_PATH, respond: 403, times: 2 });
    const p = publisher();
    p.update(devices(1));
    await p.start();
    await p.whenPublished();
    expect(warnings().map((l) => l['errorKind'])).toEqual(['serverError', 'forbidden']);
    expect(warnings()[1]!.msg).toMatch(/forbids publishing ResourceSlices; check the ClusterRole .*still retrying/);
  });

  it('re-reads and replaces a slice on a 409 conflict', async () => {
    const p = publisher();
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    api.addFault({ method: 'PUT', path: SLICES_PATH, respond: 409, times: 1 });
    p.update(devices(2, [0]));
    await p.whenPublished();
    const after = api.requests.filter((r) => r.path.startsWith(`${SLICES_PATH}/`)).map((r) => `${r.method} ${r.status}`);
    expect(after).toEqual(['PUT 409', 'GET 200', 'PUT 200']);
    expect(poolIs(2, namesOf(devices(2)))).toBe(true);
    expect(warnings()).toHaveLength(0);
  });

  it('replaces a slice changed between its list and its update (a real stale resourceVersion)', async () => {
    const name = sliceName(DRIVER, NODE, 0);
    api.putResourceSlice({
      metadata: { name },
      spec: { driver: DRIVER, nodeName: NODE, pool: { name: NODE, generation: 1, resourceSliceCount: 1 }, devices: [] },
    });
    // Hold the update back until the test has changed the slice under it.
    api.addFault({ method: 'PUT', path: `${SLICES_PATH}/${name}`, respond: { delayMs: 300 }, times: 1 });
    const p = publisher();
    p.update(devices(2));
    const started = p.start();
    await until(() => api.requests.some((r) => r.method === 'PUT'), 'the update to arrive');
    api.putResourceSlice({ ...api.resourceSlice(name)!, metadata: { name, labels: { someone: 'else' } } });
    await started;
    await p.whenPublished();
    const puts = api.requests.filter((r) => r.path === `${SLICES_PATH}/${name}`).map((r) => `${r.method} ${r.status}`);
    expect(puts).toEqual(['PUT 409', 'GET 200', 'PUT 200']);
    expect(poolIs(2, namesOf(devices(2)))).toBe(true);
  });

  it('times out a hanging server and gets through once it answers', async () => {
    api.addFault({ path: SLICES_PATH, method: 'POST', respond: 'hang', times: 1 });
    // Every request has this deadline, not only the hanging one: 300 ms let an ordinary read of
    // the Node or a create on a loaded machine time out too, and a create that timed out after
    // the server stored it is published again one generation higher.
    const p = publisher({ requestTimeoutMs: 2000 });
    p.update(devices(2));
    await p.start();
    expect(p.status().state).toBe('retrying');
    expect(warnings()[0]).toMatchObject({ errorKind: 'timeout', operation: 'createResourceSlice' });
    await p.whenPublished();
    expect(poolIs(1, namesOf(devices(2)))).toBe(true);
  });

  it('publishes without an ownerReference when the Node cannot be read, and adds it at a later resync', async () => {
    api.addFault({ path: `/api/v1/nodes/${NODE}`, respond: 403, times: 1 });
    const p = publisher({ resyncMs: 50 });
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    expect(lines.some((l) => l.msg.startsWith('Could not read the Node; publishing ResourceSlices without an ownerReference'))).toBe(true);
    // Published at once without it...
    expect(api.requests.some((r) => r.method === 'POST' && !(r.body as ResourceSlice).metadata.ownerReferences)).toBe(true);
    // ...and with it once the Node could be read.
    await until(() => ours()[0]?.metadata.ownerReferences?.[0]?.uid === (api.node(NODE)!['metadata'] as Json)['uid'], 'the ownerReference');
    expect(ours()[0]!.spec.pool.generation).toBeGreaterThan(1);
  });

  it('keeps the previous pool when an update cannot be described, and says which device', async () => {
    const p = publisher();
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    const bad: PublishedDevice[] = [...devices(2), { resource: `example.com/${'x'.repeat(70)}`, device: { group: nvmeGroup(9), healthy: true } }];
    p.update(bad);
    p.update(bad);
    const errors = lines.filter((l) => l.level === 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]!['err']).toMatch(/device pci-0000-09-00-0 \(IOMMU group 9/);
    expect(p.status().lastError).toMatch(/pci-0000-09-00-0/);
    expect(p.activity()).toMatchObject({ timers: 0, running: false });
    await p.whenPublished();
    expect(poolIs(1, namesOf(devices(2)))).toBe(true);
  });
});

describe('stopping', () => {
  it('leaves the slices, and no timer, watch, request or connection behind', async () => {
    const p = publisher({ resyncMs: 60_000 });
    p.update(devices(2));
    await p.start();
    await p.whenPublished();
    await until(() => api.activeWatches === 1, 'the watch to be open');
    expect(p.activity()).toMatchObject({ timers: 1, watching: true });

    await p.stop();
    expect(p.status().state).toBe('stopped');
    expect(p.activity()).toMatchObject({ timers: 0, watching: false, requests: 0, running: false });
    // The server sees every connection of the client go: nothing would keep the process alive.
    await until(() => api.openConnections === 0 && api.activeWatches === 0, 'the client to close its connections');
    expect(poolIs(1, namesOf(devices(2)))).toBe(true);
    p.update(devices(3));
    expect(p.activity().timers).toBe(0);
  });

  it('stops promptly in the middle of a hanging request, and rejects whoever waits for a publish', async () => {
    api.addFault({ path: SLICES_PATH, method: 'POST', respond: 'hang' });
    const p = publisher({ requestTimeoutMs: 60_000 });
    p.update(devices(2));
    void p.start();
    await until(() => api.requests.some((r) => r.method === 'POST'), 'the create to hang');
    const waiting = p.whenPublished();
    await p.stop();
    await expect(waiting).rejects.toThrow(/stopped before the devices were published/);
    expect(p.activity()).toMatchObject({ timers: 0, watching: false, requests: 0, running: false });
    await until(() => api.openConnections === 0, 'the client to close its connections');
  });
});

describe('the fake API server, as the real client sees it', () => {
  it('selects ResourceSlices by field and label, refuses unknown fields, and serves ResourceClaims', async () => {
    const k8s = await import('@kubernetes/client-node');
    const resource = api.kubeConfig().makeApiClient(k8s.ResourceV1Api);
    const slice = (name: string, node: string, driver: string, labels: Record<string, string> = {}): Json => ({
      metadata: { name, labels },
      spec: { driver, nodeName: node, pool: { name: node, generation: 1, resourceSliceCount: 1 }, devices: [] },
    });
    api.putResourceSlice(slice('a', 'n1', DRIVER, { tier: 'gold' }));
    api.putResourceSlice(slice('b', 'n1', 'other.example.com'));
    api.putResourceSlice(slice('c', 'n2', DRIVER, { tier: 'gold' }));
    const names = async (q: { fieldSelector?: string; labelSelector?: string }) =>
      (await resource.listResourceSlice(q)).items.map((s) => s.metadata?.name);
    expect(await names({ fieldSelector: `spec.nodeName=n1,spec.driver=${DRIVER}` })).toEqual(['a']);
    expect(await names({ fieldSelector: 'spec.nodeName!=n1' })).toEqual(['c']);
    expect(await names({ labelSelector: 'tier=gold' })).toEqual(['a', 'c']);
    expect(await names({ labelSelector: '!tier' })).toEqual(['b']);
    await expect(resource.listResourceSlice({ fieldSelector: 'spec.pool.name=n1' })).rejects.toMatchObject({ code: 400 });

    const stored = api.resourceSlice('a')!;
    expect(stored['metadata']).toMatchObject({ uid: expect.any(String), resourceVersion: expect.any(String), creationTimestamp: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) });
    const stale = { ...stored, metadata: { name: 'a', resourceVersion: '1' } };
    await expect(resource.replaceResourceSlice({ name: 'a', body: stale as never })).rejects.toMatchObject({ code: 409 });

    api.putResourceClaim({ metadata: { name: 'vm-disk', namespace: 'vms' }, spec: { devices: { requests: [] } } });
    api.setResourceClaimStatus('vms', 'vm-disk', {
      allocation: { devices: { results: [{ request: 'disk', driver: DRIVER, pool: NODE, device: 'pci-0030-01-00-0' }] } },
    });
    const claim = await resource.readNamespacedResourceClaim({ namespace: 'vms', name: 'vm-disk' });
    expect(claim.metadata?.uid).toMatch(/^uid-claim-/);
    expect(claim.status?.allocation?.devices?.results?.[0]).toMatchObject({ driver: DRIVER, device: 'pci-0030-01-00-0' });
    await expect(resource.readNamespacedResourceClaim({ namespace: 'vms', name: 'nope' })).rejects.toMatchObject({ code: 404 });
  });

  it('replays changes after a resourceVersion to a watch, and answers 410 when it has forgotten them', async () => {
    const first = api.putResourceSlice({ metadata: { name: 'a' }, spec: { driver: DRIVER, nodeName: NODE, pool: { name: NODE, generation: 1, resourceSliceCount: 1 } } });
    const from = (first['metadata'] as Json)['resourceVersion'] as string;
    api.putResourceSlice({ metadata: { name: 'b' }, spec: { driver: DRIVER, nodeName: NODE, pool: { name: NODE, generation: 1, resourceSliceCount: 1 } } });
    api.deleteResourceSlices({ name: 'a' });
    const controller = new AbortController();
    const response = await fetch(`${api.url}${SLICES_PATH}?watch=true&resourceVersion=${from}`, { signal: controller.signal });
    const reader = response.body!.getReader();
    let text = '';
    while (text.split('\n').length < 3) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += new TextDecoder().decode(chunk.value);
    }
    controller.abort();
    const events = text.trim().split('\n').map((l) => JSON.parse(l) as { type: string; object: { metadata: { name: string } } });
    expect(events.map((e) => `${e.type} ${e.object.metadata.name}`)).toEqual(['ADDED b', 'DELETED a']);

    // The server forgets all but the latest change: a watch from the old version cannot be served.
    api.historyLimit = 1;
    api.putResourceSlice({ metadata: { name: 'c' }, spec: { driver: DRIVER, nodeName: NODE, pool: { name: NODE, generation: 1, resourceSliceCount: 1 } } });
    const gone = await (await fetch(`${api.url}${SLICES_PATH}?watch=true&resourceVersion=${from}`)).text();
    expect(JSON.parse(gone.trim())).toMatchObject({ type: 'ERROR', object: { code: 410, reason: 'Expired' } });
  });
});
