// The node reporter with the real @kubernetes/client-node against a local
// fake API server: what it writes, and how it behaves when the server forbids,
// conflicts, fails, hangs or is down. Backoffs are a few milliseconds and every
// wait polls with a deadline, so the timing of the machine does not matter.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeApiServer, startFakeApiServer } from '../../src/simulate/api-server.js';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NodeReporter, loadKubeConfig, type NodeReporterOptions } from '../../src/report/node-reporter.js';
import { CONDITION_TYPE, conditionFor } from '../../src/report/node-report.js';
import type { NodeSnapshot } from '../../src/report/snapshot.js';
import { capturedLogger, sleep, until, type LogLine } from './support.js';

const NODE = 'power9-node-1';
const NVME = 'ibm.com/nvme';

function snap(devices: Record<string, true | string>, extra: Partial<NodeSnapshot> = {}): NodeSnapshot {
  return {
    resources: [
      {
        name: NVME,
        devices: Object.entries(devices).map(([id, state]) =>
          state === true ? { id, healthy: true } : { id, healthy: false, reason: state },
        ),
      },
    ],
    ...extra,
  };
}

let api: FakeApiServer;
let reporters: NodeReporter[] = [];
let lines: LogLine[];

function reporter(options: Partial<NodeReporterOptions> = {}): NodeReporter {
  const captured = capturedLogger();
  lines = captured.lines;
  const r = new NodeReporter({
    kubeConfig: api.kubeConfig(),
    nodeName: NODE,
    logger: captured.logger,
    // Far above what a request to the local fake server takes even on a loaded machine: a timed-out
    // request is retried, and the tests that count requests would see the retry.
    requestTimeoutMs: 10_000,
    backoff: { initialMs: 5, maxMs: 40, jitter: 0.2 },
    eventCoalesceMs: 5,
    heartbeatIntervalMs: 0,
    ...options,
  });
  reporters.push(r);
  return r;
}

function ours(): Record<string, unknown> | undefined {
  return api.condition(NODE, CONDITION_TYPE);
}

/** The node shows exactly what `snapshot` means and the reporter has nothing left to send. */
async function consistent(r: NodeReporter, snapshot: NodeSnapshot, timeoutMs = 5000): Promise<void> {
  const want = conditionFor(snapshot);
  await until(() => {
    const c = ours();
    return r.status().synced && c?.['status'] === want.status && c['reason'] === want.reason && c['message'] === want.message;
  }, `the node to show ${want.reason}`, timeoutMs);
}

function warnings(): LogLine[] {
  return lines.filter((l) => l.level === 'warn');
}
function resumed(): LogLine[] {
  return lines.filter((l) => l.msg === 'Node reporting resumed');
}

beforeEach(async () => {
  api = await startFakeApiServer();
  api.addNode(NODE, { labels: { 'topology.kubernetes.io/zone': 'z1' } });
  reporters = [];
});

afterEach(async () => {
  await Promise.all(reporters.map((r) => r.stop()));
  await api.close();
});

describe('the Node condition', () => {
  it('is written with a strategic merge patch of the status that leaves other conditions alone', async () => {
    const r = reporter();
    const s = snap({ 1: true, 2: 'the PE is frozen by EEH' });
    r.report(s);
    await consistent(r, s);

    const patches = api.requests.filter((q) => q.method === 'PATCH' && q.path === `/api/v1/nodes/${NODE}/status`);
    expect(patches).toHaveLength(1);
    expect(patches[0]?.contentType).toBe('application/strategic-merge-patch+json');
    const body = patches[0]?.body as { status: { conditions: Array<Record<string, string>> } };
    expect(Object.keys(body)).toEqual(['status']);
    expect(body.status.conditions).toHaveLength(1);
    expect(body.status.conditions[0]).toMatchObject({
      type: 'PowerVfioDevicePluginHealthy',
      status: 'False',
      reason: 'DevicesUnhealthy',
      message: '1 of 2 IOMMU groups is Unhealthy: ibm.com/nvme group 2: the PE is frozen by EEH',
    });

    const healthy = snap({ 1: true, 2: true });
    r.report(healthy);
    await consistent(r, healthy);
    const conditions = api.conditions(NODE);
    expect(conditions.map((c) => c['type'])).toEqual(['Ready', CONDITION_TYPE]);
    expect(conditions[0]).toMatchObject({ type: 'Ready', status: 'True', reason: 'KubeletReady', lastTransitionTime: '2024-01-01T00:00:00Z' });
  });

  it('moves lastTransitionTime only when the status changes, and lastHeartbeatTime on every write', async () => {
    let now = Date.parse('2025-03-01T10:00:00.000Z');
    const r = reporter({ now: () => new Date(now) });
    const step = async (s: NodeSnapshot, at: string) => {
      now = Date.parse(at);
      r.report(s);
      await consistent(r, s);
      return ours() as Record<string, string>;
    };
    let c = await step(snap({ 1: true }), '2025-03-01T10:00:00.000Z');
    expect(c).toMatchObject({ status: 'True', lastTransitionTime: '2025-03-01T10:00:00.000Z', lastHeartbeatTime: '2025-03-01T10:00:00.000Z' });
    c = await step(snap({ 1: true, 2: true }), '2025-03-01T10:01:00.000Z');
    expect(c).toMatchObject({ status: 'True', lastTransitionTime: '2025-03-01T10:00:00.000Z', lastHeartbeatTime: '2025-03-01T10:01:00.000Z' });
    c = await step(snap({ 1: true, 2: 'unbound from vfio-pci' }), '2025-03-01T10:02:00.000Z');
    expect(c).toMatchObject({ status: 'False', lastTransitionTime: '2025-03-01T10:02:00.000Z', lastHeartbeatTime: '2025-03-01T10:02:00.000Z' });
    c = await step(snap({ 1: true, 2: 'the PE is frozen by EEH' }), '2025-03-01T10:03:00.000Z');
    expect(c).toMatchObject({ status: 'False', lastTransitionTime: '2025-03-01T10:02:00.000Z', lastHeartbeatTime: '2025-03-01T10:03:00.000Z' });
    c = await step(snap({ 1: true, 2: true }), '2025-03-01T10:04:00.000Z');
    expect(c).toMatchObject({ status: 'True', lastTransitionTime: '2025-03-01T10:04:00.000Z' });
  });

  it('keeps the transition time an earlier run left when the status is the same, not when it differs', async () => {
    api.addNode(NODE, {
      conditions: [
        { type: CONDITION_TYPE, status: 'True', reason: 'AllDevicesHealthy', message: 'old', lastHeartbeatTime: '2024-06-01T00:00:00Z', lastTransitionTime: '2024-05-01T00:00:00Z' },
      ],
    });
    const first = reporter();
    first.report(snap({ 1: true }));
    await consistent(first, snap({ 1: true }));
    expect(ours()?.['lastTransitionTime']).toBe('2024-05-01T00:00:00.000Z');
    await first.stop();

    const second = reporter();
    second.report(snap({ 1: 'gone' }));
    await consistent(second, snap({ 1: 'gone' }));
    expect(Date.parse(String(ours()?.['lastTransitionTime']))).toBeGreaterThan(Date.parse('2025-01-01T00:00:00Z'));
  });

  it('refreshes the heartbeat periodically without moving the transition time', async () => {
    const r = reporter({ heartbeatIntervalMs: 30 });
    r.report(snap({ 1: true }));
    await consistent(r, snap({ 1: true }));
    const first = ours() as Record<string, string>;
    await until(() => api.requests.filter((q) => q.path.endsWith('/status')).length >= 3, 'heartbeats');
    const later = ours() as Record<string, string>;
    expect(later['lastTransitionTime']).toBe(first['lastTransitionTime']);
    expect(Date.parse(later['lastHeartbeatTime'] ?? '')).toBeGreaterThan(Date.parse(first['lastHeartbeatTime'] ?? ''));
  });
});

describe('Events on the Node', () => {
  it('posts one per transition, on the Node, from our component', async () => {
    const r = reporter();
    r.report(snap({ 1: true, 2: true }));
    await consistent(r, snap({ 1: true, 2: true }));
    expect(api.events()).toHaveLength(0);

    r.report(snap({ 1: true, 2: 'the PE is frozen by EEH' }));
    await until(() => api.events().length === 1, 'the Unhealthy event');
    const node = api.node(NODE) as { metadata: { uid: string } };
    expect(api.events()[0]).toMatchObject({
      metadata: { namespace: 'default' },
      involvedObject: { kind: 'Node', name: NODE, uid: node.metadata.uid, apiVersion: 'v1' },
      type: 'Warning',
      reason: 'DeviceUnhealthy',
      message: 'IOMMU group 2 of resource ibm.com/nvme became Unhealthy: the PE is frozen by EEH',
      count: 1,
      source: { component: 'power-vfio-device-plugin', host: NODE },
    });
    expect(String((api.events()[0]?.['metadata'] as Record<string, string>)['name'])).toMatch(new RegExp(`^${NODE}\\.[0-9a-f]+$`));

    r.report(snap({ 1: true, 2: true }));
    await until(() => api.events().length === 2, 'the Healthy event');
    expect(api.events()[1]).toMatchObject({ type: 'Normal', reason: 'DeviceHealthy', message: 'IOMMU group 2 of resource ibm.com/nvme is Healthy again' });
  });

  it('aggregates a repeated transition into the same Event with a count', async () => {
    const r = reporter();
    r.report(snap({ 2: true }));
    await consistent(r, snap({ 2: true }));
    for (let i = 0; i < 3; i += 1) {
      r.report(snap({ 2: 'the PE is frozen by EEH' }));
      await consistent(r, snap({ 2: 'the PE is frozen by EEH' }));
      r.report(snap({ 2: true }));
      await consistent(r, snap({ 2: true }));
    }
    const events = api.events();
    expect(events).toHaveLength(2);
    expect(events.map((e) => [e['reason'], e['count']])).toEqual([
      ['DeviceUnhealthy', 3],
      ['DeviceHealthy', 3],
    ]);
    const eventPatches = api.requests.filter((q) => q.method === 'PATCH' && q.path.includes('/events/'));
    expect(eventPatches).toHaveLength(4);
    expect(eventPatches.every((q) => q.contentType === 'application/merge-patch+json')).toBe(true);
  });

  it('coalesces a flapping group within the window into counted Events', async () => {
    const r = reporter({ eventCoalesceMs: 300 });
    r.report(snap({ 2: true }));
    for (let i = 0; i < 5; i += 1) {
      r.report(snap({ 2: 'frozen' }));
      r.report(snap({ 2: true }));
    }
    await consistent(r, snap({ 2: true }));
    expect(api.events().map((e) => [e['reason'], e['count']])).toEqual([
      ['DeviceUnhealthy', 5],
      ['DeviceHealthy', 5],
    ]);
    expect(api.requests.filter((q) => q.path.includes('/events'))).toHaveLength(2);
  });

  it('summarises a burst (a PHB freeze takes many PEs) instead of flooding', async () => {
    const r = reporter();
    const all: Record<string, true | string> = {};
    const frozen: Record<string, true | string> = {};
    for (let i = 1; i <= 15; i += 1) {
      all[String(i)] = true;
      frozen[String(i)] = 'the PE is frozen by EEH';
    }
    r.report(snap(all));
    await consistent(r, snap(all));
    r.report(snap(frozen));
    await consistent(r, snap(frozen));
    const events = api.events();
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      type: 'Warning',
      reason: 'DeviceUnhealthy',
      count: 15,
      message: '15 IOMMU groups of resource ibm.com/nvme became Unhealthy: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15',
    });
  });

  it('starts a new Event when the one it would count up has expired', async () => {
    const r = reporter();
    r.report(snap({ 2: true }));
    r.report(snap({ 2: 'frozen' }));
    await consistent(r, snap({ 2: 'frozen' }));
    r.report(snap({ 2: true }));
    await consistent(r, snap({ 2: true }));
    // The Event TTL ran out on the server.
    const api2 = api as unknown as { eventStore: Map<string, unknown> };
    api2.eventStore.clear();
    r.report(snap({ 2: 'frozen' }));
    await consistent(r, snap({ 2: 'frozen' }));
    expect(api.events().map((e) => [e['reason'], e['count']])).toEqual([['DeviceUnhealthy', 1]]);
  });
});

describe('node labels', () => {
  it('labels capabilities, removes our stale labels and leaves everyone else’s', async () => {
    api.addNode(NODE, { labels: { 'power-vfio.ibm.com/dynamic-windows': 'true', 'example.com/team': 'hpc' } });
    const r = reporter();
    const s = snap(
      { 1: true, 2: true },
      { capabilities: { spaprTceV2: true, iommuPageSizes: [4096, 65536, 2 ** 21, 2 ** 30], powerGeneration: 'POWER9', groups: 12 } },
    );
    r.report(s);
    await consistent(r, s);
    const labels = api.labels(NODE);
    expect(labels).toEqual({
      'kubernetes.io/hostname': NODE,
      'example.com/team': 'hpc',
      'power-vfio.ibm.com/spapr-tce-v2': 'true',
      'power-vfio.ibm.com/iommu-page-sizes': '4K.64K.2M.1G',
      'power-vfio.ibm.com/power-generation': 'power9',
      'power-vfio.ibm.com/groups': '12',
    });
    const labelPatch = api.requests.find((q) => q.method === 'PATCH' && q.path === `/api/v1/nodes/${NODE}`);
    expect(labelPatch?.contentType).toBe('application/merge-patch+json');
    expect(labelPatch?.body).toMatchObject({ metadata: { labels: { 'power-vfio.ibm.com/dynamic-windows': null } } });

    // The VFIO layer learns more later; capabilities not repeated in a snapshot are kept.
    r.setCapabilities({ dynamicWindows: false });
    r.report(snap({ 1: true, 2: true, 3: true }));
    await until(() => api.labels(NODE)['power-vfio.ibm.com/dynamic-windows'] === 'false' && r.status().synced, 'the new label');
    expect(api.labels(NODE)['power-vfio.ibm.com/spapr-tce-v2']).toBe('true');
    for (const value of Object.values(api.labels(NODE))) expect(value).toMatch(/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/);
  });

  it('counts the advertised groups when discovery gives no count', async () => {
    const r = reporter();
    r.report(snap({ 1: true, 2: 'x', 3: true }));
    await consistent(r, snap({ 1: true, 2: 'x', 3: true }));
    expect(api.labels(NODE)['power-vfio.ibm.com/groups']).toBe('3');
  });
});

describe('when the API server misbehaves', () => {
  for (const code of [403, 409, 500] as const) {
    it(`answers ${code}: keeps retrying, logs once when paused and once when resumed, ends consistent`, async () => {
      api.addFault({ respond: code });
      const r = reporter();
      r.report(snap({ 1: true }));
      await until(() => r.status().state === 'degraded' && r.status().consecutiveFailures >= 4, 'several failed attempts');
      const kind = { 403: 'forbidden', 409: 'conflict', 500: 'serverError' }[code];
      expect(r.status().lastError).toMatchObject({ kind, statusCode: code });
      // Reports keep coming while it fails: none throws, the latest wins.
      expect(() => r.report(snap({ 1: 'the PE is frozen by EEH' }))).not.toThrow();
      const last = snap({ 1: 'the PE is frozen by EEH', 2: true });
      r.report(last);
      await until(() => r.status().consecutiveFailures >= 8, 'more failed attempts');
      expect(warnings()).toHaveLength(1);
      expect(warnings()[0]).toMatchObject({ errorKind: kind, statusCode: code });
      expect(warnings()[0]?.msg).toMatch(/^Kubernetes API .*; node reporting paused$/);

      api.clearFaults();
      await consistent(r, last);
      expect(r.status()).toMatchObject({ state: 'ok', consecutiveFailures: 0 });
      expect(resumed()).toHaveLength(1);
      expect(warnings()).toHaveLength(1);
      // The transitions made while paused still reach the node as Events.
      expect(api.events().map((e) => e['reason']).sort()).toEqual(['DeviceAdded', 'DeviceUnhealthy']);
    });
  }

  it('names the remedy for 403 (RBAC)', async () => {
    api.addFault({ respond: 403 });
    const r = reporter();
    r.report(snap({ 1: true }));
    await until(() => warnings().length === 1, 'the warning');
    expect(warnings()[0]?.msg).toContain('check the ClusterRole');
  });

  it('hangs: each request times out, the reporter carries on and recovers', async () => {
    api.addFault({ respond: 'hang', times: 3 });
    // Short enough to wait out three hangs, long enough that the requests that do get answers are
    // not cut short too on a loaded machine (they would keep it paused).
    const r = reporter({ requestTimeoutMs: 500 });
    const s = snap({ 1: true, 2: 'unbound' });
    r.report(s);
    // report() returned before any request could time out: it does not wait for the API server.
    expect(r.status().lastError).toBeNull();
    await until(() => r.status().lastError?.kind === 'timeout', 'a timeout');
    await consistent(r, s, 15_000);
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]?.msg).toBe('Kubernetes API did not answer in time; node reporting paused');
    expect(resumed()).toHaveLength(1);
  });

  it('is down, then back: sends only the latest state, logs once each way', async () => {
    const r = reporter();
    r.report(snap({ 1: true, 2: true }));
    await consistent(r, snap({ 1: true, 2: true }));
    await api.down();
    const before = api.requests.length;
    let last = snap({ 1: true });
    for (let i = 0; i < 10; i += 1) {
      last = snap({ 1: i % 2 === 0 ? 'the PE is frozen by EEH' : true, 2: true, [String(10 + i)]: true });
      r.report(last);
      await sleep(5);
    }
    await until(() => r.status().state === 'degraded' && r.status().consecutiveFailures >= 3, 'failures while down');
    expect(r.status().lastError?.kind).toBe('unreachable');
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]?.msg).toBe('Kubernetes API unreachable; node reporting paused');

    await api.up();
    await consistent(r, last);
    const after = api.requests.slice(before);
    expect(after.filter((q) => q.path.endsWith('/status'))).toHaveLength(1);
    expect(resumed()).toHaveLength(1);
    expect(warnings()).toHaveLength(1);
    expect(api.labels(NODE)['power-vfio.ibm.com/groups']).toBe('3');
  });

  it('is down from the start and the node is read once it is up', async () => {
    await api.down();
    const r = reporter();
    const s = snap({ 4: 'frozen' });
    r.report(s);
    await until(() => r.status().consecutiveFailures >= 2, 'failures');
    expect(r.status().state).toBe('degraded');
    await api.up();
    await consistent(r, s);
    const node = api.node(NODE) as { metadata: { uid: string } };
    expect((api.events()[0]?.['involvedObject'] as Record<string, string>)['uid']).toBe(node.metadata.uid);
  });

  it('keeps a bounded queue of Events while down and says how many it dropped', async () => {
    const r = reporter({ maxPendingEvents: 3 });
    const healthy: Record<string, true | string> = { 1: true, 2: true, 3: true, 4: true, 5: true, 6: true };
    r.report(snap(healthy));
    await consistent(r, snap(healthy));
    await api.down();
    const broken: Record<string, true | string> = {};
    for (const id of Object.keys(healthy)) broken[id] = `fault ${id}`;
    r.report(snap(broken));
    await until(() => r.status().consecutiveFailures >= 1, 'a failure');
    expect(r.status()).toMatchObject({ pendingEvents: 3, droppedEvents: 3 });
    await api.up();
    await consistent(r, snap(broken));
    // The newest transitions survive; the condition still names every group.
    expect(api.events().map((e) => e['message'])).toEqual([4, 5, 6].map((id) => `IOMMU group ${id} of resource ibm.com/nvme became Unhealthy: fault ${id}`));
    expect(String(ours()?.['message'])).toContain('6 of 6 IOMMU groups are Unhealthy');
    expect(lines.filter((l) => String(l.msg).startsWith('Dropped node events'))).toHaveLength(1);
    expect(lines.find((l) => String(l.msg).startsWith('Dropped node events'))?.['droppedEvents']).toBe(3);
  });

  it('changes kind while paused: logs the new cause once, not every attempt', async () => {
    api.addFault({ respond: 500, times: 3 });
    api.addFault({ respond: 403, times: 3 });
    const r = reporter();
    r.report(snap({ 1: true }));
    await consistent(r, snap({ 1: true }));
    expect(warnings().map((w) => w['errorKind'])).toEqual(['serverError', 'forbidden']);
    expect(warnings()[1]?.msg).toMatch(/still paused$/);
    expect(resumed()).toHaveLength(1);
  });

  it('backs off exponentially with jitter, capped', () => {
    const fixed = reporter({ backoff: { initialMs: 1000, maxMs: 60_000, jitter: 0 } });
    expect([1, 2, 3, 4, 5, 6, 7, 8, 20].map((n) => fixed.backoffDelay(n))).toEqual([1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000]);
    const low = reporter({ backoff: { initialMs: 1000, maxMs: 60_000, jitter: 0.2 }, random: () => 0 });
    const high = reporter({ backoff: { initialMs: 1000, maxMs: 60_000, jitter: 0.2 }, random: () => 0.999999 });
    expect(low.backoffDelay(1)).toBe(800);
    expect(high.backoffDelay(1)).toBe(1200);
    expect(high.backoffDelay(30)).toBe(60_000);
  });

  it('does not know the node: pauses, then reports once the node exists', async () => {
    api.deleteNode(NODE);
    const r = reporter();
    r.report(snap({ 1: true }));
    await until(() => r.status().lastError?.kind === 'notFound', 'notFound');
    api.addNode(NODE);
    await consistent(r, snap({ 1: true }));
  });

  it('has no usable configuration: pauses, retries the factory, never throws', async () => {
    let calls = 0;
    const r = reporter({
      kubeConfig: () => {
        calls += 1;
        if (calls < 3) throw new Error('not running in a cluster (KUBERNETES_SERVICE_HOST is unset); pass --kubeconfig');
        return api.kubeConfig();
      },
    });
    r.report(snap({ 1: true }));
    await until(() => r.status().lastError?.kind === 'config', 'config error');
    await consistent(r, snap({ 1: true }));
    expect(calls).toBe(3);
    expect(warnings()[0]).toMatchObject({ errorKind: 'config', operation: 'loadConfig' });
  });

  it('survives a malformed report without throwing, keeping the previous one', async () => {
    const r = reporter();
    const good = snap({ 1: true, 2: 'frozen' });
    r.report(good);
    expect(() => r.report(null as unknown as NodeSnapshot)).not.toThrow();
    expect(() => r.report({} as NodeSnapshot)).not.toThrow();
    expect(() => r.report({ resources: [{ name: NVME, devices: [{ id: 3 }] }] } as unknown as NodeSnapshot)).not.toThrow();
    expect(lines.filter((l) => l.level === 'error')).toHaveLength(3);
    await consistent(r, good);
  });

  it('merges capabilities from snapshots and setCapabilities; undefined forgets one', async () => {
    const r = reporter();
    r.setCapabilities({ spaprTceV2: true, dynamicWindows: true });
    r.report(snap({ 1: true }, { capabilities: { groups: 4, powerGeneration: 'power10' } }));
    await until(() => r.status().synced && api.labels(NODE)['power-vfio.ibm.com/groups'] === '4', 'labels');
    expect(api.labels(NODE)).toMatchObject({
      'power-vfio.ibm.com/spapr-tce-v2': 'true',
      'power-vfio.ibm.com/dynamic-windows': 'true',
      'power-vfio.ibm.com/power-generation': 'power10',
    });
    r.report(snap({ 1: true }, { capabilities: { groups: 5, dynamicWindows: undefined } }));
    await until(() => r.status().synced && api.labels(NODE)['power-vfio.ibm.com/groups'] === '5', 'new labels');
    expect(api.labels(NODE)['power-vfio.ibm.com/dynamic-windows']).toBeUndefined();
    expect(api.labels(NODE)['power-vfio.ibm.com/spapr-tce-v2']).toBe('true');
  });

  it('tells hooks about state changes and request errors', async () => {
    const states: string[] = [];
    const kinds: string[] = [];
    api.addFault({ respond: 500, times: 2 });
    const r = reporter({ onStateChange: (s) => states.push(s.state), onRequestError: (e) => kinds.push(e.kind) });
    r.report(snap({ 1: true }));
    await consistent(r, snap({ 1: true }));
    await r.stop();
    expect(states).toEqual(['degraded', 'ok', 'stopped']);
    expect(kinds).toEqual(['serverError', 'serverError']);
  });
});

describe('stop()', () => {
  it('cancels a hanging request at once and sends nothing afterwards', async () => {
    api.addFault({ respond: 'hang' });
    const r = reporter({ requestTimeoutMs: 30_000 });
    r.report(snap({ 1: true }));
    await until(() => api.requests.length >= 1, 'the hanging request');
    const started = Date.now();
    await r.stop();
    // The request timeout is 30 s: stop() did not wait for it.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.status().state).toBe('stopped');
    api.clearFaults();
    const count = api.requests.length;
    r.report(snap({ 1: 'x' }));
    await sleep(100);
    expect(api.requests.length).toBe(count);
    expect(warnings()).toHaveLength(0);
  });

  it('cancels a pending retry', async () => {
    api.addFault({ respond: 500 });
    const r = reporter({ backoff: { initialMs: 50, maxMs: 50, jitter: 0 } });
    r.report(snap({ 1: true }));
    await until(() => r.status().consecutiveFailures >= 1, 'a failure');
    await r.stop();
    const count = api.requests.length;
    await sleep(150);
    expect(api.requests.length).toBe(count);
  });
});

describe('loadKubeConfig', () => {
  it('reads a kubeconfig file, and refuses in-cluster configuration outside a cluster', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pvdp-kc-'));
    try {
      const path = join(dir, 'kubeconfig');
      await writeFile(
        path,
        [
          'apiVersion: v1',
          'kind: Config',
          'clusters: [{name: fake, cluster: {server: "' + api.url + '", insecure-skip-tls-verify: true}}]',
          'users: [{name: fake, user: {}}]',
          'contexts: [{name: fake, context: {cluster: fake, user: fake}}]',
          'current-context: fake',
          '',
        ].join('\n'),
      );
      const r = reporter({ kubeConfig: () => loadKubeConfig(path) });
      r.report(snap({ 1: true }));
      await consistent(r, snap({ 1: true }));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const saved = process.env['KUBERNETES_SERVICE_HOST'];
    delete process.env['KUBERNETES_SERVICE_HOST'];
    try {
      expect(() => loadKubeConfig()).toThrow(/not running in a cluster/);
    } finally {
      if (saved !== undefined) process.env['KUBERNETES_SERVICE_HOST'] = saved;
    }
  });
});
