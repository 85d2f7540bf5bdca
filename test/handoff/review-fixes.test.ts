// Findings of the handoff review, one test each (see the names): what a pod can
// do to its mount, overlapping group sets, races between Allocate, reconcile,
// claims and the claim timer, listen failures, floods, and PodResources gaps.
import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import net from 'node:net';
import { basename, dirname, join } from 'node:path';
import { claim } from '../../src/handoff/client.js';
import { HandoffManager, readAllocationRecord, type HandoffPayload, type HandoffSource } from '../../src/handoff/manager.js';
import { HandoffEndpoint } from '../../src/handoff/server.js';
import { HANDOFF_SOCKET_NAME, encodeClaimRequest } from '../../src/handoff/protocol.js';
import { FdsDeliveredError, unixTransport, type HandoffConnection, type HandoffListener, type HandoffTransport } from '../../src/handoff/transport.js';
import { PodResourcesPoller } from '../../src/kubelet/pod-resources.js';
import { createLogger, silentLogger } from '../../src/log.js';
import { createNativeBinding } from '../../src/vfio/native-binding.js';
import { eduGroups, handoffResource, removeDir, simNode, tempDir, type SimNode } from './support.js';
import { waitFor } from '../helpers/fixtures.js';

const resource = handoffResource();
const [g4, g5] = eduGroups() as [ReturnType<typeof eduGroups>[number], ReturnType<typeof eduGroups>[number]];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => {
  await removeDir(dir);
});

function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  return Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`${what} did not finish within ${ms} ms`)))]);
}

// ---- a scripted transport and source: the manager's logic without a kernel ----

interface FakeConnectionScript {
  /** What send does: resolve, reject (nothing sent), or reject after the fds went out. */
  send?: (data: Buffer, fds: number[]) => Promise<void>;
}

class FakeConnection implements HandoffConnection {
  sent: string[] = [];
  closed = false;
  private markClosed!: () => void;
  /** Settles when the endpoint closes the connection, which it does last, once it handled it. */
  readonly whenClosed = new Promise<void>((r) => (this.markClosed = r));
  constructor(private readonly script: FakeConnectionScript = {}) {}
  async readRequest(): Promise<Buffer> {
    return encodeClaimRequest().subarray(0, -1);
  }
  async send(data: Buffer, fds: number[]): Promise<void> {
    if (this.script.send) await this.script.send(data, fds);
    this.sent.push(data.toString());
  }
  async close(): Promise<void> {
    this.closed = true;
    this.markClosed();
  }
}

class FakeTransport implements HandoffTransport {
  readonly kind = 'simulated' as const;
  readonly open = new Map<string, (c: HandoffConnection) => void>();
  /** Per path: a gate listen() waits for, or an error it throws. */
  gates = new Map<string, Promise<void>>();
  failures = new Map<string, Error>();
  closeFailures = new Set<string>();
  async listen(socketPath: string, onConnection: (c: HandoffConnection) => void): Promise<HandoffListener> {
    await this.gates.get(socketPath);
    const failure = this.failures.get(socketPath);
    if (failure) throw failure;
    this.open.set(socketPath, onConnection);
    return {
      socketPath,
      close: async () => {
        this.open.delete(socketPath);
        if (this.closeFailures.has(socketPath)) throw new Error(`closing ${socketPath} failed`);
      },
    };
  }
  /** Delivers a connection to the socket; resolves once the endpoint handled it and closed the connection. */
  async connect(socketPath: string, connection: FakeConnection): Promise<void> {
    const on = this.open.get(socketPath);
    if (!on) throw new Error(`nothing listens on ${socketPath}`);
    on(connection);
    await within(5000, connection.whenClosed, `the connection to ${socketPath}`);
  }
}

function fakeSource() {
  const counts = { prepared: 0, released: 0, handedOver: 0 };
  const source: HandoffSource = async (res, groups) => {
    counts.prepared += 1;
    const payload: HandoffPayload = {
      description: { protocol: 1, resource: res.name } as HandoffPayload['description'],
      fds: [100, 101, ...groups.map((g) => 200 + g.id)],
      async handedOver() {
        counts.handedOver += 1;
      },
      async release() {
        counts.released += 1;
      },
    };
    return payload;
  };
  return { source, counts };
}

function fakeManager(options: Partial<ConstructorParameters<typeof HandoffManager>[0]> = {}) {
  const transport = new FakeTransport();
  const { source, counts } = fakeSource();
  const manager = new HandoffManager({ hostDir: join(dir, 'h'), containerDir: '/run/h', transport, source, ...options });
  return { manager, transport, counts };
}

function socketOf(extra: Awaited<ReturnType<HandoffManager['allocate']>>): string {
  return join(extra.mounts![0]!.host_path!, HANDOFF_SOCKET_NAME);
}

describe('1, 2: a pod cannot touch the allocation records', () => {
  let node: SimNode;
  afterEach(async () => {
    await node?.manager.stop();
  });

  it('a pod rewriting files in its mount cannot make a restarted plugin serve its directory for another pod\'s groups', async () => {
    node = simNode(dir);
    await node.manager.start();
    const a = await node.manager.allocate(resource, [g4]);
    const b = await node.manager.allocate(resource, [g5]);
    expect(a.mounts![0]!.read_only).toBe(true);
    // Pod A writes what it can: anything inside its mount.
    const forged = JSON.stringify({ version: 1, resource: 'ibm.com/edu', groups: [5], createdMs: 9e15 });
    for (const name of ['allocation.json', 'record.json']) await writeFile(join(a.mounts![0]!.host_path!, name), forged);
    await node.manager.stop();

    node = simNode(dir);
    await node.manager.start();
    await node.manager.preStart(resource, [g5]);
    const five = node.manager.status().find((s) => s.groups.join() === '5')!;
    expect(five.sockets).toEqual([socketOf(b)]);
    expect(node.network.has(socketOf(a))).toBe(false);
    const podA = node.kernel.spawnProcess();
    await expect(claim(socketOf(a), { transport: node.network.claimTransport(podA) })).rejects.toMatchObject({ code: 'PVDP_HANDOFF_NO_SOCKET' });
    podA.exit();
  });

  it('FIFOs, symlinks to /dev/zero and huge files where a record is read do not hang or stall the start; such directories go', async () => {
    node = simNode(dir);
    await node.manager.start();
    const a = await node.manager.allocate(resource, [g4]);
    // What a pod can plant in its mount...
    execFileSync('mkfifo', [join(a.mounts![0]!.host_path!, 'allocation.json')]);
    await symlink('/dev/zero', join(a.mounts![0]!.host_path!, 'record.json'));
    // ...and, were a record ever reachable, the same where the plugin reads it.
    const bad: string[] = [];
    for (const [i, plant] of [
      (p: string) => execFileSync('mkfifo', [p]),
      (p: string) => symlink('/dev/zero', p),
      (p: string) => writeFile(p, `{"version":1,"resource":"ibm.com/edu","groups":[4],"createdMs":1,"pad":"${'x'.repeat(10_000)}"}`),
      (p: string) => writeFile(p, '{"version":1,"resource":"ibm.com/edu","groups":[4,4],"createdMs":1}'),
    ].entries()) {
      const d = join(node.hostDir, `alloc-${String(i).padStart(16, '0')}`);
      await mkdir(join(d, 'sock'), { recursive: true });
      await plant(join(d, 'record.json'));
      bad.push(basename(d));
    }
    await node.manager.stop();
    node = simNode(dir);
    // A FIFO read would never end and /dev/zero never runs dry: a start that finishes at all
    // did not read them. The bound leaves a loaded machine all the time it needs.
    await within(10_000, node.manager.start(), 'start');
    expect(await readdir(node.hostDir)).toEqual([basename(dirname(a.mounts![0]!.host_path!))]);
    expect(node.manager.status()).toEqual([expect.objectContaining({ groups: [4] })]);
    expect(await readAllocationRecord('/dev/zero', Date.now())).toMatch(/not a regular file/);
  });
});

describe('3: overlapping group sets', () => {
  let node: SimNode;
  afterEach(async () => {
    await node?.manager.stop();
  });

  it('Allocate and PreStart of a set sharing a group release the unclaimed preparation; reconcile keeps only exactly held sets', async () => {
    node = simNode(dir, { platform: 'powernv9', claimTimeoutMs: 60_000, podResourcesGraceMs: 0 });
    await node.manager.start();
    const { manager } = node;
    await manager.allocate(resource, [g4, g5]);
    await manager.preStart(resource, [g4, g5]);
    // The pod went unclaimed; a new pod gets group 4 alone and starts at once, not after the claim timeout.
    await manager.allocate(resource, [g4]);
    // Waiting for the old preparation's claim timeout would take 60 s; a loaded machine needs far less than 10.
    await within(10_000, manager.preStart(resource, [g4]), 'preStart of {4}');
    const state = (key: string) => manager.status().find((s) => s.groups.join() === key)?.state;
    expect(state('4,5')).toBe('released');
    expect(state('4')).toBe('ready');
    // A container holds {4}: the {4,5} set is not held, though one of its groups is.
    await manager.reconcile({ takenAtMs: Date.now() + 3_600_000, byResource: new Map([['ibm.com/edu', new Set(['4'])]]), groupSets: new Map([['ibm.com/edu', new Set(['4'])]]) });
    expect(manager.status().map((s) => s.groups.join())).toEqual(['4']);
    // Without per-container sets, a set is held only when all its groups are.
    await manager.allocate(resource, [g4, g5]);
    await manager.reconcile({ takenAtMs: Date.now() + 3_600_000, byResource: new Map([['ibm.com/edu', new Set(['4'])]]) });
    expect(manager.status().map((s) => s.groups.join())).toEqual(['4']);
  });
});

describe('4: reconcile racing Allocate', () => {
  it('an Allocate queued behind a reconcile that forgets the slot still leaves a directory PreStart finds', async () => {
    const { manager } = fakeManager({ podResourcesGraceMs: 0, claimTimeoutMs: 10 });
    await manager.start();
    await manager.allocate(resource, [g4]);
    const slot = (manager as unknown as { slots: Map<string, unknown> }).slots.get('ibm.com/edu:4')!;
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    // Hold the slot's queue, queue the reconcile, then the Allocate behind it.
    void (manager as unknown as { serial: (s: unknown, run: () => Promise<void>) => Promise<void> }).serial(slot, () => gate);
    const reconciled = manager.reconcile({ takenAtMs: Date.now() + 3_600_000, byResource: new Map() });
    const allocated = manager.allocate(resource, [g4]);
    await sleep(30);
    open();
    await Promise.all([reconciled, allocated]);
    await expect(manager.preStart(resource, [g4])).resolves.toBeUndefined();
    expect(manager.status()).toEqual([expect.objectContaining({ groups: [4], state: 'ready' })]);
    await manager.stop();
  });
});

describe('5: a claim whose send fails', () => {
  it('the claim timer firing during a failing claim still releases the preparation', async () => {
    const { manager, transport, counts } = fakeManager({ claimTimeoutMs: 30 });
    await manager.start();
    const extra = await manager.allocate(resource, [g4]);
    await manager.preStart(resource, [g4]);
    // The send takes past the claim timeout, then fails with nothing sent.
    const failing = new FakeConnection({ send: () => sleep(80).then(() => Promise.reject(new Error('EPIPE'))) });
    await transport.connect(socketOf(extra), failing);
    await manager.idle();
    expect(manager.status()[0]).toMatchObject({ state: 'released' });
    expect(counts.released).toBe(1);
    await manager.stop();
  });

  it('a failed send re-arms the timer when it already fired', async () => {
    const { manager, transport, counts } = fakeManager({ claimTimeoutMs: 300 });
    await manager.start();
    const extra = await manager.allocate(resource, [g4]);
    await manager.preStart(resource, [g4]);
    await transport.connect(socketOf(extra), new FakeConnection({ send: () => Promise.reject(new Error('EPIPE')) }));
    expect(manager.status()[0]).toMatchObject({ state: 'ready' });
    await waitFor(() => manager.status()[0]?.state === 'released', { what: 'the release after the claim timeout' });
    await manager.idle();
    expect(manager.status()[0]).toMatchObject({ state: 'released' });
    expect(counts.released).toBe(1);
    await manager.stop();
  });

  it('once the fds went out the claim stands: no second claim, the plugin drops its copies', async () => {
    const { manager, transport, counts } = fakeManager({ claimTimeoutMs: 60_000 });
    await manager.start();
    const extra = await manager.allocate(resource, [g4]);
    await manager.preStart(resource, [g4]);
    const socket = socketOf(extra);
    const partial = new FakeConnection({ send: async () => Promise.reject(new FdsDeliveredError('the rest of the line failed')) });
    await transport.connect(socket, partial);
    expect(manager.status()[0]).toMatchObject({ state: 'claimed', claims: 1 });
    expect(counts).toMatchObject({ handedOver: 1, released: 0 });
    expect(transport.open.size).toBe(0);
    await manager.stop();
    expect(counts.released).toBe(0);
  });
});

describe('6, 13: serving the sockets', () => {
  it('a listen failure releases the preparation and fails the start (no held preparation, no timer needed)', async () => {
    const { manager, transport, counts } = fakeManager({ claimTimeoutMs: 60_000 });
    await manager.start();
    const extra = await manager.allocate(resource, [g4]);
    transport.failures.set(socketOf(extra), Object.assign(new Error('EISDIR: illegal operation on a directory'), { code: 'EISDIR' }));
    await expect(manager.preStart(resource, [g4])).rejects.toThrow(/cannot serve the handoff socket: EISDIR/);
    expect(manager.status()[0]).toMatchObject({ state: 'failed' });
    expect(counts).toMatchObject({ prepared: 1, released: 1 });
    await manager.stop();
  });

  it('with the real transport: a directory where the socket goes fails the start and releases', async () => {
    const native = createNativeBinding();
    const { source, counts } = fakeSource();
    const manager = new HandoffManager({ hostDir: join(dir, 'h'), containerDir: '/run/h', transport: unixTransport(native), source, claimTimeoutMs: 60_000 });
    await manager.start();
    const extra = await manager.allocate(resource, [g4]);
    await mkdir(socketOf(extra));
    await expect(manager.preStart(resource, [g4])).rejects.toThrow(/cannot serve the handoff socket/);
    expect(counts.released).toBe(1);
    await manager.stop();
  });

  it('a claim while later sockets are still being opened leaves none of them open', async () => {
    const { manager, transport, counts } = fakeManager({ claimTimeoutMs: 60_000 });
    await manager.start();
    const first = await manager.allocate(resource, [g4]);
    const second = await manager.allocate(resource, [g4]);
    let open!: () => void;
    transport.gates.set(socketOf(second), new Promise<void>((r) => (open = r)));
    const starting = manager.preStart(resource, [g4]);
    await waitFor(() => transport.open.has(socketOf(first)), { what: 'the first socket served' });
    const c = new FakeConnection();
    await transport.connect(socketOf(first), c);
    expect(c.sent[0]).toMatch(/"result":"claimed"/);
    open();
    await starting;
    expect([...transport.open.keys()]).toEqual([]);
    expect(manager.status()[0]).toMatchObject({ state: 'claimed', sockets: [] });
    expect(counts.handedOver).toBe(1);
    await manager.stop();
  });
});

describe('12: connection floods', () => {
  it('BUSY connections are dropped at once, and the transport caps open connections', async () => {
    const native = createNativeBinding();
    const path = join(dir, 'e.sock');
    const endpoint = new HandoffEndpoint(path, unixTransport(native), { claim: async () => undefined }, silentLogger(), { maxConnections: 2, requestTimeoutMs: 15_000 });
    await endpoint.listen();
    expect((endpoint as unknown as { listener: HandoffListener }).listener.maxConnections).toBe(4);
    const connect = (halfOpen: boolean) =>
      new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ path, allowHalfOpen: halfOpen }, () => resolve(s));
        s.on('error', reject);
      });
    const held = [await connect(false), await connect(false)];
    await waitFor(() => endpoint.activeConnections >= 2, { what: 'two connections served' });
    // A refused client that keeps its side open must not keep the plugin waiting.
    const busy = await connect(true);
    const text = await new Promise<string>((resolve) => {
      let t = '';
      busy.on('data', (d) => (t += d.toString()));
      busy.on('end', () => resolve(t));
    });
    expect(text).toMatch(/PVDP_HANDOFF_BUSY/);
    for (const s of held) s.destroy();
    const started = Date.now();
    await endpoint.drain();
    // The request timeout is 15 s: a drain well inside it did not wait for the refused client
    // (an immediate drain takes milliseconds; the bound leaves a loaded machine ample room).
    expect(Date.now() - started).toBeLessThan(7500);
    busy.destroy();
    await endpoint.close();
  });
});

describe('11: PodResources gaps', () => {
  it('a failing reconcile is not a List failure: no backoff, its own message', async () => {
    const lines: string[] = [];
    const logger = createLogger({ level: 'debug', destination: new Writable({ write: (chunk, _e, cb) => (lines.push(chunk.toString()), cb()) }) });
    let calls = 0;
    const poller = new PodResourcesPoller({
      client: { list: async () => ({ pod_resources: [] }) as never },
      onSnapshot: () => {
        calls += 1;
        throw new Error('disk on fire');
      },
      intervalMs: 10,
      logger,
    });
    vi.useFakeTimers();
    try {
      poller.start();
      await vi.advanceTimersByTimeAsync(120);
      await poller.stop();
    } finally {
      vi.useRealTimers();
    }
    // Every 10 ms: 12 or 13 calls in 120 ms. With a backoff (20, 40, 80 ms...) there would be 3 or 4.
    expect(calls).toBeGreaterThanOrEqual(12);
    expect(poller.reconcileFailures).toBe(calls);
    expect(lines.join('')).not.toMatch(/List failed/);
    expect(lines.join('')).toMatch(/Acting on a PodResources listing failed/);
  });

  it('reconcile goes on past a slot whose removal fails', async () => {
    const { manager, transport } = fakeManager({ claimTimeoutMs: 10, podResourcesGraceMs: 0 });
    await manager.start();
    const a = await manager.allocate(resource, [g4]);
    await manager.allocate(resource, [g5]);
    await manager.preStart(resource, [g4]);
    await manager.preStart(resource, [g5]);
    await waitFor(() => manager.status().every((s) => s.state === 'released'), { what: 'both claim windows to pass' });
    await manager.idle();
    transport.closeFailures.add(socketOf(a));
    await expect(manager.reconcile({ takenAtMs: Date.now() + 3_600_000, byResource: new Map() })).resolves.toBeUndefined();
    expect(manager.status().map((s) => s.groups.join())).not.toContain('5');
    await manager.stop();
  });

  it('a preparation for an init container (absent from the v1 List) is kept for its claim window', async () => {
    const { manager, counts } = fakeManager({ claimTimeoutMs: 60_000, podResourcesGraceMs: 0 });
    await manager.start();
    await manager.allocate(resource, [g4]);
    await manager.allocate(resource, [g5]);
    await manager.preStart(resource, [g4]);
    const later = Date.now() + 31_000;
    await manager.reconcile({ takenAtMs: later, byResource: new Map() });
    // The prepared one waits for its claim; the one not yet started keeps its directory.
    expect(manager.status().map((s) => [s.groups.join(), s.state])).toEqual([
      ['4', 'ready'],
      ['5', 'allocated'],
    ]);
    expect(counts.released).toBe(0);
    await manager.stop();
  });
});
