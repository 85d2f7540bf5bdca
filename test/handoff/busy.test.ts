// The handoff under load: a plugin refusing a crowd answers BUSY (on accept
// past the transport's cap too), and a client whose request meets a socket the
// plugin already dropped (EPIPE on sendmsg) still reads that answer, then
// retries with jittered backoff up to its deadline. Real unix sockets and fds.
import { describe, it, expect, beforeAll, beforeEach, afterEach } from 'vitest';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import { createNativeBinding, type NativeBinding } from '../../src/vfio/native-binding.js';
import { HandoffManager } from '../../src/handoff/manager.js';
import { unixClaimTransport, unixTransport, type ClaimTransport, type HandoffConnection, type HandoffTransport } from '../../src/handoff/transport.js';
import { busyBackoffMs, claim, claimedFdList } from '../../src/handoff/client.js';
import { HANDOFF_SOCKET_NAME } from '../../src/handoff/protocol.js';
import { busyThenSilent, eduGroups, handoffResource, MiB, openFdCount, realFdSource, removeDir, tempDir, type RealFdSourceState } from './support.js';
import { waitFor } from '../helpers/fixtures.js';

let native: NativeBinding;
let dir: string;
let manager: HandoffManager;
let state: RealFdSourceState;
/** Server-side connections the plugin has closed (BUSY ones close at once). */
let serverClosed = 0;
/** Server-side connections accepted and handed to the endpoint. */
let serverAccepted = 0;
const held: net.Socket[] = [];

beforeAll(() => {
  native = createNativeBinding();
});

/** The real transport, counting what the plugin accepts and closes. */
function observedTransport(inner: HandoffTransport): HandoffTransport {
  return {
    kind: inner.kind,
    listen: (path, onConnection, options) =>
      inner.listen(
        path,
        (connection) => {
          serverAccepted += 1;
          const close = connection.close.bind(connection);
          connection.close = async (o) => {
            await close(o);
            serverClosed += 1;
          };
          onConnection(connection);
        },
        options,
      ),
  };
}

async function startManager(maxConnections: number): Promise<string> {
  const real = realFdSource(native, dir);
  state = real.state;
  manager = new HandoffManager({
    hostDir: join(dir, 'h'),
    containerDir: '/run/h',
    transport: observedTransport(unixTransport(native)),
    source: real.source,
    // Silent connections are held long enough for every test here.
    limits: { requestTimeoutMs: 15_000, maxConnections },
  });
  await manager.start();
  const resource = handoffResource();
  const groups = [eduGroups()[0]!];
  const extra = await manager.allocate(resource, groups);
  await manager.preStart(resource, groups);
  return join(extra.mounts![0]!.host_path!, HANDOFF_SOCKET_NAME);
}

/** A silent connection that holds one of the plugin's slots until destroyed. */
function hold(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path, () => resolve(s));
    s.on('error', reject);
    held.push(s);
  });
}

function releaseHeld(): void {
  for (const s of held.splice(0)) s.destroy();
}

beforeEach(async () => {
  dir = await tempDir();
  serverClosed = 0;
  serverAccepted = 0;
});

afterEach(async () => {
  releaseHeld();
  // Not every test starts a manager.
  await manager?.stop();
  for (const o of state?.observers.splice(0) ?? []) await native.munmap(o, MiB);
  await removeDir(dir);
});

describe('BUSY reaches the client as the coded error', () => {
  it('a request sent after the plugin dropped the connection (EPIPE) still reads BUSY, and the claim retries through', async () => {
    const socket = await startManager(1);
    const baseline = await openFdCount();
    await hold(socket);
    await waitFor(() => serverAccepted === 1, { what: 'the held connection to be served' });
    const inner = unixClaimTransport(native);
    let attempts = 0;
    // The first request is written only once the plugin has answered BUSY and closed:
    // the order a loaded node produces, made certain here.
    const transport: ClaimTransport = {
      closeFd: inner.closeFd,
      async connect(path, timeoutMs) {
        attempts += 1;
        const channel = await inner.connect(path, timeoutMs);
        if (attempts > 1) return channel;
        const io = channel.io;
        return {
          ...channel,
          io: {
            recvFds: (fd, max, maxFds) => io.recvFds(fd, max, maxFds),
            close: (fd) => io.close(fd),
            sendFds: async (fd, data, fds) => {
              await waitFor(() => serverClosed >= 1, { what: 'the plugin to drop the BUSY connection' });
              return io.sendFds(fd, data, fds);
            },
          },
        };
      },
    };
    const busy: number[] = [];
    const { fds, description } = await claim(socket, {
      transport,
      timeoutMs: 10_000,
      backoff: { initialMs: 5, maxMs: 50 },
      onBusy: (attempt) => {
        busy.push(attempt);
        releaseHeld();
      },
    });
    expect(busy).toEqual([1]);
    expect(attempts).toBe(2);
    expect(description.groups[0]?.group).toBe(4);
    for (const fd of claimedFdList(fds)) closeSync(fd);
    await manager.idle();
    await waitFor(async () => (await openFdCount()) <= baseline, { what: 'every fd to be closed' });
  });

  it('a crowd that never leaves ends the claim at its deadline with PVDP_HANDOFF_BUSY, not a raw socket error', async () => {
    const socket = await startManager(1);
    await hold(socket);
    await waitFor(() => serverAccepted === 1, { what: 'the held connection to be served' });
    const before = await openFdCount();
    let waits = 0;
    // Long enough for the first BUSY answer on a loaded machine: without one the claim ends as a timeout.
    const err = await claim(socket, { timeoutMs: 1500, backoff: { initialMs: 5, maxMs: 40 }, onBusy: () => (waits += 1) }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'PVDP_HANDOFF_BUSY', message: expect.stringMatching(/still busy after \d+ attempts within 1500 ms/) });
    expect(waits).toBeGreaterThanOrEqual(1);
    // Every refused attempt's socket was closed; the plugin closes its end of the last one after
    // the client has read the answer.
    await waitFor(async () => (await openFdCount()) <= before, { what: `the fd count back at ${before}` });
  });

  it('a retry that the deadline cuts short after a BUSY answer ends as PVDP_HANDOFF_BUSY, not as a timeout', async () => {
    const path = join(dir, 'busy-then-silent.sock');
    const server = await busyThenSilent(path);
    try {
      // The deadline leaves ample time for the BUSY answer and the retry, which then waits it out.
      const err = await claim(path, { timeoutMs: 2000, backoff: { initialMs: 5, maxMs: 10 } }).catch((e: unknown) => e);
      expect(err).toMatchObject({
        code: 'PVDP_HANDOFF_BUSY',
        message: 'Too many connections (still busy after 1 attempts within 2000 ms; one more had no answer by the deadline)',
        cause: expect.objectContaining({ code: 'PVDP_HANDOFF_TIMEOUT' }),
      });
      expect(server.connections()).toBe(2);
    } finally {
      await server.close();
    }
  });

  it('a flood of connections past the transport cap is answered BUSY too, and a real claim gets through once it thins', async () => {
    const socket = await startManager(2);
    const baseline = await openFdCount();
    // Two served and held; the rest of the flood is refused at once.
    await hold(socket);
    await hold(socket);
    await waitFor(() => serverAccepted === 2, { what: 'the held connections to be served' });
    const answers = await Promise.all(
      Array.from(
        { length: 64 },
        () =>
          new Promise<string>((resolve) => {
            // Silent: net would drop an answer that races its own EPIPE (our clients read it).
            const s = net.connect(socket);
            let text = '';
            s.on('data', (d) => (text += d.toString()));
            s.on('error', () => undefined);
            s.on('close', () => resolve(text));
          }),
      ),
    );
    expect(answers.filter((a) => !a.includes('"code":"PVDP_HANDOFF_BUSY"'))).toEqual([]);
    let busy = 0;
    const result = await claim(socket, {
      timeoutMs: 10_000,
      backoff: { initialMs: 2, maxMs: 20 },
      onBusy: () => {
        busy += 1;
        if (busy === 3) releaseHeld();
      },
    });
    expect(busy).toBe(3);
    for (const fd of claimedFdList(result.fds)) closeSync(fd);
    await manager.idle();
    await waitFor(async () => (await openFdCount()) <= baseline, { what: 'every fd to be closed' });
  });

  it('the transport answers past its cap instead of dropping silently', async () => {
    const path = join(dir, 'cap.sock');
    const kept: HandoffConnection[] = [];
    const listener = await unixTransport(native).listen(path, (c) => kept.push(c), { maxConnections: 1, overflowAnswer: Buffer.from('BUSY\n') });
    manager = new HandoffManager({ hostDir: join(dir, 'h'), containerDir: '/run/h', transport: unixTransport(native), source: realFdSource(native, dir).source });
    state = { observers: [], released: 0, handedOver: 0 };
    const read = () =>
      new Promise<string>((resolve) => {
        const s = net.connect(path);
        let text = '';
        s.on('data', (d) => {
          text += d.toString();
          if (kept.length > 0 && text === '') s.destroy();
        });
        s.on('error', () => undefined);
        s.on('close', () => resolve(text));
        held.push(s);
      });
    const first = read();
    await waitFor(() => kept.length === 1, { what: 'the first connection' });
    expect(await read()).toBe('BUSY\n');
    for (const c of kept) await c.close({ now: true });
    expect(await first).toBe('');
    await listener.close();
  });
});

describe('backoff', () => {
  it('doubles from the first wait up to the longest, jittered in the upper half', () => {
    const at = (attempt: number, r: number) => busyBackoffMs(attempt, { initialMs: 10, maxMs: 1000, random: () => r });
    expect([at(0, 0), at(0, 0.999)]).toEqual([5, 10]);
    expect([at(3, 0), at(3, 0.5)]).toEqual([40, 60]);
    expect([at(20, 0), at(20, 0.999)]).toEqual([500, 1000]);
    expect(at(10_000, 0.5)).toBe(750);
    for (let i = 0; i < 200; i++) {
      const w = busyBackoffMs(i % 12);
      expect(w).toBeGreaterThanOrEqual(5);
      expect(w).toBeLessThanOrEqual(1000);
    }
  });
});

describe('power-vfio-handoff exec under load', () => {
  it('retries a busy socket, says so on stderr, and runs CMD once the crowd leaves', async () => {
    const socket = await startManager(1);
    await hold(socket);
    await waitFor(() => serverAccepted === 1, { what: 'the held connection to be served' });
    const cli = join(import.meta.dirname, '..', '..', 'dist', 'handoff', 'exec-cli.js');
    const child = spawn(process.execPath, [cli, 'exec', '--socket', socket, '--timeout', '20', '--', process.execPath, '-e', 'process.exit(7)'], {
      env: { PATH: process.env['PATH'] },
    });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d.toString();
      if (/busy/.test(stderr)) releaseHeld();
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(stderr).toMatch(/The handoff socket is busy \(PVDP_HANDOFF_BUSY\); retrying in \d+ ms \(attempt 1\)/);
    expect(code).toBe(7);
    // The wrapper may exit before the plugin has finished dropping its copies.
    await waitFor(() => state.handedOver > 0, { what: 'the plugin to close its copies' });
    expect(state.handedOver).toBe(1);
  });
});
