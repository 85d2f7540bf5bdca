// The C client (clients/c), built with the machine's cc, claiming from the
// Node handoff server over a real unix socket with real fds: it parses the
// description, receives the fds, and what it writes through the memory fd the
// plugin side reads (and the reverse). Skipped where no C compiler exists.
import { describe, it, expect, beforeAll, beforeEach, afterEach } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { createNativeBinding, type NativeBinding } from '../../src/vfio/native-binding.js';
import { HandoffManager, type HandoffSource } from '../../src/handoff/manager.js';
import { unixTransport } from '../../src/handoff/transport.js';
import { HANDOFF_SOCKET_NAME } from '../../src/handoff/protocol.js';
import { busyThenSilent, eduGroups, handoffResource, MiB, realFdSource, removeDir, tempDir, type RealFdSourceState } from './support.js';
import { waitFor } from '../helpers/fixtures.js';

const CLIENT_DIR = join(import.meta.dirname, '..', '..', 'clients', 'c');
const hasCc = ['/usr/bin/cc', '/usr/local/bin/cc'].some((p) => existsSync(p));
let native: NativeBinding;
let buildDir: string;
let example: string;
/** The example built with AddressSanitizer (and UBSan), or null with the reason printed. */
let asanExample: string | null = null;
let dir: string;
let manager: HandoffManager;
let state: RealFdSourceState;

/** Clients still running: a test that failed or timed out must not leave one behind. */
const running = new Set<ChildProcess>();

function run(args: string[], binary = example, shellPrefix = ''): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = shellPrefix ? spawn('sh', ['-c', `${shellPrefix}; exec "$0" "$@"`, binary, ...args]) : spawn(binary, args, { env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1' } });
    running.add(child);
    child.on('exit', () => running.delete(child));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d.toString()));
    child.stderr.on('data', (d) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe.skipIf(!hasCc)('C client', () => {
  beforeAll(async () => {
    native = createNativeBinding();
    buildDir = await tempDir();
    example = join(buildDir, 'example');
    execFileSync('cc', ['-std=c99', '-Wall', '-Wextra', '-Werror', '-pedantic', '-O2', '-o', example, join(CLIENT_DIR, 'example.c'), join(CLIENT_DIR, 'pvdp_handoff.c')]);
    try {
      const out = join(buildDir, 'example-asan');
      execFileSync('cc', ['-std=c99', '-g', '-O1', '-fno-omit-frame-pointer', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-o', out, join(CLIENT_DIR, 'example.c'), join(CLIENT_DIR, 'pvdp_handoff.c')], { stdio: 'pipe' });
      execFileSync(out, ['/nonexistent'], { stdio: 'pipe' }).toString();
      asanExample = out;
    } catch (err) {
      const e = err as { status?: number; stderr?: Buffer; message: string };
      // The sanitized build runs: exit 1 is the claim failing on a missing socket, as it should.
      if (e.status === 1 && /PVDP_HANDOFF_NO_SOCKET/.test(e.stderr?.toString() ?? '')) asanExample = join(buildDir, 'example-asan');
      else console.log(`AddressSanitizer runs skipped: cc -fsanitize=address does not build or run here (${(e.stderr?.toString() || e.message).split('\n')[0]})`);
    }
    return () => removeDir(buildDir);
  });

  beforeEach(async () => {
    dir = await tempDir();
    const real = realFdSource(native, dir);
    state = real.state;
    manager = new HandoffManager({ hostDir: join(dir, 'h'), containerDir: '/run/h', transport: unixTransport(native), source: real.source });
    await manager.start();
  });

  afterEach(async () => {
    for (const child of running) child.kill('SIGKILL');
    running.clear();
    await manager.stop();
    for (const o of state.observers) await native.munmap(o, MiB);
    await removeDir(dir);
  });

  async function prepared(): Promise<string> {
    const resource = handoffResource();
    const groups = [eduGroups()[0]!];
    const extra = await manager.allocate(resource, groups);
    await manager.preStart(resource, groups);
    return join(extra.mounts![0]!.host_path!, HANDOFF_SOCKET_NAME);
  }

  it('claims, parses the description, and shares the memory both ways', async () => {
    const socket = await prepared();
    native.writeMemory(state.observers[0]! + 4096n, Buffer.from('hello from the plugin\0'));
    const result = await run([socket, 'hello from C']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const lines = result.stdout.split('\n');
    expect(lines).toContain('protocol 1 resource ibm.com/edu iommu spapr-tce-v2 (7)');
    expect(lines).toContain('window 0x800000000000000+0x40000000 page 0x10000 (shift 16)');
    expect(result.stdout).toMatch(/^memory fd \d+ size 0x100000 hugetlb 0$/m);
    expect(result.stdout).toMatch(/^container fd \d+$/m);
    expect(result.stdout).toMatch(/^group 4 fd \d+ functions 0001:00:01.0$/m);
    expect(lines).toContain('range iova 0x800000000000000 size 0x80000 offset 0x0');
    expect(lines).toContain('range iova 0x800000000100000 size 0x80000 offset 0x80000');
    expect(lines).toContain('read at 4096: hello from the plugin');
    expect(native.readMemory(state.observers[0]!, 12).toString()).toBe('hello from C');
    // The client may exit before the plugin has finished dropping its copies.
    await waitFor(() => state.handedOver > 0, { what: 'the plugin to close its copies' });
    expect(state.handedOver).toBe(1);
  });

  it('retries BUSY with backoff until the crowd leaves, and at its deadline reports BUSY with the attempts (plain and under ASan)', async () => {
    const crowd: net.Socket[] = [];
    try {
      for (const [round, binary] of [example, ...(asanExample ? [asanExample] : [])].entries()) {
        await manager.stop();
        for (const o of state.observers) await native.munmap(o, MiB);
        const real = realFdSource(native, dir);
        state = real.state;
        manager = new HandoffManager({
          hostDir: join(dir, `busy-${round}`),
          containerDir: '/run/h',
          transport: unixTransport(native),
          source: real.source,
          limits: { maxConnections: 1, requestTimeoutMs: 15_000 },
        });
        await manager.start();
        const socket = await prepared();
        const holdOne = () =>
          new Promise<void>((resolve, reject) => {
            const s = net.connect(socket, () => resolve());
            s.on('error', reject);
            crowd.push(s);
          });
        const busyAnswer = () =>
          new Promise<string>((resolve) => {
            const s = net.connect(socket);
            let t = '';
            s.on('data', (d) => (t += d.toString()));
            s.on('error', () => undefined);
            s.on('close', () => resolve(t));
          });
        await holdOne();
        // The crowd holds the only slot once a newcomer is told BUSY.
        await waitFor(async () => (await busyAnswer()).includes('PVDP_HANDOFF_BUSY'), { what: 'a newcomer to be told BUSY' });

        // Deadline first: the crowd never leaves. Long enough for the first BUSY answer on a loaded
        // machine (a first attempt without one would end as a timeout, not BUSY).
        const env = { ...process.env, ASAN_OPTIONS: 'detect_leaks=1', PVDP_HANDOFF_DEBUG: '1' };
        const gaveUp = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
          const child = spawn(binary, [socket], { env: { ...env, PVDP_HANDOFF_TIMEOUT_MS: '1500' } });
          running.add(child);
          let stderr = '';
          child.stderr.on('data', (d) => (stderr += d.toString()));
          child.on('close', (code) => resolve({ code, stderr }));
        });
        expect(gaveUp.code).toBe(1);
        // The last retry can start just before the deadline and get its answer after it: then the
        // client says so. Both are the BUSY verdict with the attempts.
        expect(gaveUp.stderr).toMatch(/claim failed: PVDP_HANDOFF_BUSY: .*\(still busy after \d+ attempts within 1500 ms(; one more had no answer by the deadline)?\)/);

        // Then the crowd leaves after the first retry is announced; the claim goes through.
        const done = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(binary, [socket], { env });
          running.add(child);
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (d) => (stdout += d.toString()));
          child.stderr.on('data', (d) => {
            stderr += d.toString();
            if (/busy, retrying/.test(stderr)) for (const s of crowd.splice(0)) s.destroy();
          });
          child.on('close', (code) => resolve({ code, stdout, stderr }));
        });
        for (const s of crowd.splice(0)) s.destroy();
        expect(done.stderr).toMatch(/^pvdp_handoff: busy, retrying in \d+ ms \(attempt 1\)$/m);
        expect(done.stderr).not.toMatch(/ERROR: (Address|Leak)Sanitizer|runtime error/);
        expect(done.code).toBe(0);
        expect(done.stdout).toMatch(/^group 4 fd \d+ functions 0001:00:01.0$/m);
      }
    } finally {
      // A failed round must not leave the crowd holding the plugin's slots.
      for (const s of crowd.splice(0)) s.destroy();
    }
    // Two rounds, each waiting out a 1.5 s deadline, with sanitized binaries: more than the default.
  }, 60_000);

  it('reports the plugin\'s error codes: gone after a claim, released after the timeout', async () => {
    const socket = await prepared();
    expect((await run([socket])).code).toBe(0);
    const again = await run([socket]);
    expect(again.code).toBe(1);
    // The socket goes right after the claim; a client racing it is told ALREADY_CLAIMED instead,
    // or, connected while the listener closes (still in its backlog), sees the connection close.
    expect(again.stderr).toMatch(/^claim failed: PVDP_HANDOFF_(NO_SOCKET: cannot connect|ALREADY_CLAIMED|CONNECTION_CLOSED)/);
    await manager.stop();
    manager = new HandoffManager({ hostDir: join(dir, 'h2'), containerDir: '/run/h', transport: unixTransport(native), source: realFdSource(native, dir).source, claimTimeoutMs: 10 });
    await manager.start();
    const socket2 = await prepared();
    await waitFor(() => manager.status()[0]?.state === 'released', { what: 'the release after the claim timeout' });
    await manager.idle();
    expect((await run([socket2])).stderr).toMatch(/^claim failed: PVDP_HANDOFF_RELEASED: /);
  });

  it('refuses a malformed answer without leaking', async () => {
    const path = join(dir, 'bad.sock');
    const answers = [
      '{"protocol":1,"result":"claimed","description":{"protocol":1}}\n',
      '{"protocol":1,"result":"claimed","description":{"protocol":1,"window":[}}\n',
      'not json at all\n',
      '',
    ];
    let i = 0;
    const server = net.createServer((s) => {
      s.once('data', () => s.end(answers[i++ % answers.length] ?? ''));
    });
    await new Promise<void>((r) => server.listen(path, r));
    try {
      for (const expected of [/PVDP_HANDOFF_MALFORMED: the description lacks/, /PVDP_HANDOFF_MALFORMED/, /PVDP_HANDOFF_MALFORMED: the answer has no result/, /PVDP_HANDOFF_CONNECTION_CLOSED/]) {
        const r = await run([path]);
        expect(r.code).toBe(1);
        expect(r.stderr).toMatch(expected);
      }
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  /** Serves one fixed answer per connection; runs the client (sanitized when it can) against each. */
  async function answersGive(cases: Array<[string, RegExp]>): Promise<void> {
    const path = join(dir, 'fixed.sock');
    let i = 0;
    const server = net.createServer((s) => {
      const answer = cases[i++]![0];
      s.once('data', () => s.end(answer));
    });
    await new Promise<void>((r) => server.listen(path, r));
    try {
      for (const [, expected] of cases) {
        const r = await run([path], asanExample ?? example);
        expect(r.stderr).not.toMatch(/Sanitizer|runtime error/);
        expect(r.code, r.stderr).toBe(1);
        expect(r.stderr).toMatch(expected);
      }
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  }

  it('a retry that the deadline cuts short after a BUSY answer ends as BUSY, not as a timeout', async () => {
    const path = join(dir, 'busy-then-silent.sock');
    const server = await busyThenSilent(path);
    try {
      const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        // The deadline leaves ample time for the BUSY answer and the retry, which then waits it out.
        const child = spawn(asanExample ?? example, [path], { env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1', PVDP_HANDOFF_TIMEOUT_MS: '2000' } });
        running.add(child);
        let stderr = '';
        child.stderr.on('data', (d) => (stderr += d.toString()));
        child.on('close', (code) => resolve({ code, stderr }));
      });
      expect(r.stderr).not.toMatch(/Sanitizer|runtime error/);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/^claim failed: PVDP_HANDOFF_BUSY: Too many connections \(still busy after 1 attempts within 2000 ms; one more had no answer by the deadline\)$/m);
      expect(server.connections()).toBe(2);
    } finally {
      await server.close();
    }
  });

  const description = (window: { start: string; size: string }, iommu = '"type":"spapr-tce-v2","value":7') =>
    `{"protocol":1,"result":"claimed","description":{"protocol":1,"iommu":{${iommu}},"window":{"start":"${window.start}","size":"${window.size}","pageShift":16,"pageSize":"0x10000","created":true},` +
    `"memory":{"fdIndex":1,"size":"0x100000","pageSize":"0x10000","hugetlb":false},"groups":[{"group":4,"fdIndex":2,"functions":[]}],"ranges":[]}}\n`;

  it('an answer of nearly 1 MiB with a huge array is refused at once, not counted element by element', async () => {
    // Counting 200000 ranges by rescanning from the start each time took minutes.
    const huge = description({ start: '0x0', size: '0x100000' }).replace('"ranges":[]', `"ranges":[${Array(200_000).fill('0').join(',')}]`);
    expect(huge.length).toBeLessThan(1 << 20);
    const started = Date.now();
    await answersGive([[huge, /^claim failed: PVDP_HANDOFF_MALFORMED: 1 groups and 65 ranges are outside this client's limits/]]);
    expect(Date.now() - started).toBeLessThan(15_000);
  });

  it('missing objects and fields are errors, not NULL dereferences (checked under ASan when available)', async () => {
    await answersGive([
      ['{"protocol":1,"result":"error"}\n', /^claim failed: PVDP_HANDOFF_INTERNAL: the plugin refused the claim/],
      ['{"protocol":1,"result":"error","error":{}}\n', /^claim failed: PVDP_HANDOFF_INTERNAL: the plugin refused the claim/],
      ['{"protocol":1,"result":"error","error":[]}\n', /^claim failed: PVDP_HANDOFF_INTERNAL/],
      [description({ start: '0x800000000000000', size: '0x40000000' }, '"value":7'), /PVDP_HANDOFF_MALFORMED: a field of iommu, window or memory is missing or mistyped/],
      [description({ start: '0x800000000000000', size: '0x40000000' }, ''), /PVDP_HANDOFF_MALFORMED: a field of iommu, window or memory/],
    ]);
  });

  it('accepts only 0x and 1 to 16 hex digits, and refuses a window that wraps past 2^64', async () => {
    const bad = /PVDP_HANDOFF_MALFORMED: a field of iommu, window or memory is missing or mistyped/;
    await answersGive([
      [description({ start: '0x-10', size: '0x1000' }), bad],
      [description({ start: '0x0x1000', size: '0x1000' }), bad],
      [description({ start: '0x 10', size: '0x1000' }), bad],
      [description({ start: '0x10 ', size: '0x1000' }), bad],
      [description({ start: '0x+10', size: '0x1000' }), bad],
      [description({ start: '0x', size: '0x1000' }), bad],
      [description({ start: '0x00000000000000001', size: '0x1000' }), bad],
      [description({ start: '0xffffffffffff0000', size: '0x100000' }), /PVDP_HANDOFF_MALFORMED: the window 0xffffffffffff0000\+0x100000 is empty or wraps past 2\^64/],
      // A well-formed one gets as far as counting the fds.
      [description({ start: '0xFFFF0000', size: '0x10000' }), /PVDP_HANDOFF_MALFORMED: 0 fds arrived for 1 groups/],
    ]);
  });

  it('a claimer at its open-file limit is told MSG_CTRUNC / RLIMIT_NOFILE, not a fd count mismatch', async () => {
    const socket = await prepared();
    // fds 0-2 and the socket (3) fit; the three passed fds do not.
    const r = await run([socket], example, 'ulimit -n 5');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^claim failed: PVDP_HANDOFF_FDS_TRUNCATED: .*MSG_CTRUNC.*RLIMIT_NOFILE/);
  });

  it('the example stays inside a range smaller than its TEXT and than 4096 + 32 bytes', async () => {
    await manager.stop();
    const small: HandoffSource = async (res, groups) => {
      const memfd = await native.memfdCreate('small');
      await native.ftruncate(memfd, 4096n);
      const fd = openSync('/dev/null', 'r');
      const g = openSync('/dev/null', 'r');
      const done = async () => {
        closeSync(fd);
        closeSync(g);
        await native.close(memfd);
      };
      return {
        description: {
          protocol: 1,
          resource: res.name,
          iommu: { type: 'spapr-tce-v2', value: 7 },
          window: { start: '0x1000000', size: '0x10000', pageShift: 12, pageSize: '0x1000', created: true },
          memory: { fdIndex: 1, size: '0x1000', pageSize: '0x1000', hugetlb: false },
          container: { fdIndex: 0 },
          groups: groups.map((x, i) => ({ group: x.id, fdIndex: 2 + i, functions: [] })),
          ranges: [{ iova: '0x1000000', size: '0x10', offset: '0xff0' }],
          fds: ['container', 'memory', 'group:4'],
        },
        fds: [fd, memfd, g],
        handedOver: done,
        release: done,
      };
    };
    manager = new HandoffManager({ hostDir: join(dir, 'h3'), containerDir: '/run/h', transport: unixTransport(native), source: small });
    await manager.start();
    const socket = await prepared();
    const r = await run([socket, 'x'.repeat(100)], asanExample ?? example);
    expect(r.stderr).not.toMatch(/Sanitizer|runtime error/);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/TEXT is 100 bytes, the range only 0x10: cut/);
    expect(r.stdout).toMatch(/read at 4096: \(the range is only 0x10 bytes\)/);
  });
});
