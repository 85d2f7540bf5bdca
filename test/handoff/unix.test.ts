// The handoff over real unix sockets with real fds (a memfd and regular files
// standing in for the VFIO fds, which this machine does not have): what the
// Node client receives, what is shared, what hostile clients cannot break,
// and that no fd is left behind in this process.
import { describe, it, expect, beforeAll, beforeEach, afterEach } from 'vitest';
import net from 'node:net';
import { stat, readdir } from 'node:fs/promises';
import { closeSync, readSync, fstatSync } from 'node:fs';
import { join } from 'node:path';
import { createNativeBinding, type NativeBinding } from '../../src/vfio/native-binding.js';
import { HandoffManager } from '../../src/handoff/manager.js';
import { unixTransport } from '../../src/handoff/transport.js';
import { claim, claimedFdList } from '../../src/handoff/client.js';
import { HANDOFF_SOCKET_NAME } from '../../src/handoff/protocol.js';
import { eduGroups, handoffResource, MiB, openFdCount, realFdSource, removeDir, tempDir, type RealFdSourceState } from './support.js';
import { waitFor } from '../helpers/fixtures.js';

let native: NativeBinding;
let dir: string;
let manager: HandoffManager;
let state: RealFdSourceState;
const resource = handoffResource();
const [g4] = eduGroups();

beforeAll(() => {
  native = createNativeBinding();
});

async function startManager(claimTimeoutMs?: number): Promise<void> {
  const real = realFdSource(native, dir);
  state = real.state;
  manager = new HandoffManager({
    hostDir: join(dir, 'h'),
    containerDir: '/run/h',
    transport: unixTransport(native),
    source: real.source,
    limits: { requestTimeoutMs: 300, maxConnections: 4 },
    ...(claimTimeoutMs !== undefined ? { claimTimeoutMs } : {}),
  });
  await manager.start();
}

beforeEach(async () => {
  dir = await tempDir();
  await startManager();
});

afterEach(async () => {
  await manager.stop();
  await removeDir(dir);
});

async function prepared(): Promise<string> {
  const extra = await manager.allocate(resource, [g4!]);
  await manager.preStart(resource, [g4!]);
  return join(extra.mounts![0]!.host_path!, HANDOFF_SOCKET_NAME);
}

/** Raw bytes on a real connection; resolves with what came back before the plugin closed. */
function rawExchange(socketPath: string, bytes: Buffer | null, options: { closeEarly?: boolean } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let text = '';
    socket.on('error', reject);
    socket.on('data', (d) => (text += d.toString()));
    socket.on('close', () => resolve(text));
    socket.on('connect', () => {
      if (bytes) socket.write(bytes);
      if (options.closeEarly) socket.destroy();
    });
  });
}

describe('handoff over unix sockets with real fds', () => {
  it('the Node client receives the fds and the description; memory written on one side is read on the other', async () => {
    const before = await openFdCount();
    const socket = await prepared();
    expect((await stat(socket)).isSocket()).toBe(true);
    const during = await openFdCount();
    expect(during).toBeGreaterThan(before); // the plugin holds the preparation

    const { fds, description } = await claim(socket);
    expect(description.groups).toEqual([{ group: 4, fdIndex: 2, functions: ['0001:00:01.0'] }]);
    expect(description.ranges).toHaveLength(2);
    const buf = Buffer.alloc(32);
    const n = readSync(fds.container, buf, 0, 32, 0);
    expect(buf.subarray(0, n).toString()).toBe('I am the container');
    expect(fstatSync(fds.groups[0]!).size).toBe('I am group 4'.length);

    // The claimer maps the memory fd; the plugin side's mapping sees its writes and the reverse.
    const mine = await native.mmap(fds.memory, MiB);
    native.writeMemory(mine + 100n, Buffer.from('from the pod'));
    expect(native.readMemory(state.observers[0]! + 100n, 12).toString()).toBe('from the pod');
    native.writeMemory(state.observers[0]! + 4096n, Buffer.from('from the plugin'));
    expect(native.readMemory(mine + 4096n, 15).toString()).toBe('from the plugin');

    // The plugin closed its copies and removed the socket. The client has its answer before the
    // plugin's side of the claim has finished (closing the socket, then its copies): wait for it.
    await waitFor(() => state.handedOver === 1, { what: 'the plugin to close its copies' });
    await expect(stat(socket)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(claim(socket)).rejects.toMatchObject({ code: 'PVDP_HANDOFF_NO_SOCKET' });
    for (const fd of claimedFdList(fds)) closeSync(fd);
    await native.munmap(mine, MiB);
    await native.munmap(state.observers[0]!, MiB);
    // The plugin closes its end of the connection last, after the claim.
    await waitFor(async () => (await openFdCount()) === before, { what: `the fd count back at ${before}` });
  });

  it('hostile clients (garbage, oversized, early close, many connections, wrong version) get errors or nothing, and leak nothing', async () => {
    const socket = await prepared();
    const baseline = await openFdCount();
    const code = (text: string) => (JSON.parse(text) as { error: { code: string } }).error.code;
    expect(code(await rawExchange(socket, Buffer.from('\u0000\u0001garbage\n')))).toBe('PVDP_HANDOFF_MALFORMED');
    expect(code(await rawExchange(socket, Buffer.alloc(64 * 1024, 0x7b)))).toBe('PVDP_HANDOFF_TOO_LARGE');
    expect(code(await rawExchange(socket, Buffer.from('{"protocol":0,"request":"claim"}\n')))).toBe('PVDP_HANDOFF_UNSUPPORTED_PROTOCOL');
    await rawExchange(socket, Buffer.from('{"protocol":1'), { closeEarly: true });
    await rawExchange(socket, null, { closeEarly: true });
    // Silent clients are dropped after the request timeout.
    expect(await rawExchange(socket, null)).toBe('');
    // A crowd: the excess is refused at once with BUSY, the rest time out.
    const crowd = await Promise.all(Array.from({ length: 30 }, () => rawExchange(socket, null)));
    expect(crowd.filter((t) => t.includes('PVDP_HANDOFF_BUSY')).length).toBeGreaterThanOrEqual(20);
    expect(manager.status()[0]!.state).toBe('ready');
    await waitFor(async () => (await openFdCount()) === baseline, { what: `the fd count back at ${baseline}` });
    const { fds } = await claim(socket);
    for (const fd of claimedFdList(fds)) closeSync(fd);
    await native.munmap(state.observers[0]!, MiB);
  });

  it('an unclaimed preparation is released after the claim timeout and at shutdown; a late claim is told RELEASED', async () => {
    await manager.stop();
    await startManager(50);
    const before = await openFdCount();
    const socket = await prepared();
    await waitFor(() => state.released === 1, { what: 'the release after the claim timeout' });
    await manager.idle();
    expect(state.released).toBe(1);
    await expect(claim(socket)).rejects.toMatchObject({ code: 'PVDP_HANDOFF_RELEASED' });
    await manager.preStart(resource, [g4!]);
    await manager.stop();
    expect(state.released).toBe(2);
    await expect(stat(socket)).rejects.toMatchObject({ code: 'ENOENT' });
    for (const o of state.observers) await native.munmap(o, MiB);
    expect(await openFdCount()).toBe(before);
    expect(await readdir(join(dir, 'h'))).toHaveLength(1);
  });

  it('the native recvFds reports MSG_CTRUNC as its own error naming RLIMIT_NOFILE and keeps none of the fds', async () => {
    const before = await openFdCount();
    const [a, b] = await native.socketPair();
    const memfds = [await native.memfdCreate('x'), await native.memfdCreate('y'), await native.memfdCreate('z')];
    await native.sendFds(a, Buffer.from('three'), memfds);
    const err = await native.recvFds(b, 64, 1).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'MSG_CTRUNC' });
    expect((err as Error).message).toMatch(/RLIMIT_NOFILE/);
    for (const fd of [a, b, ...memfds]) await native.close(fd);
    expect(await openFdCount()).toBe(before);
  });
});
