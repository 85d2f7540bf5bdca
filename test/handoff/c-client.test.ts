// The C client (clients/c), built with the machine's cc, claiming from the
// Node handoff server over a real unix socket with real fds: it parses the
// description, receives the fds, and what it writes through the memory fd the
// plugin side reads (and the reverse). Skipped where no C compiler exists.
import { describe, it, expect, beforeAll, beforeEach, afterEach } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { createNativeBinding, type NativeBinding } from '../../src/vfio/native-binding.js';
import { HandoffManager } from '../../src/handoff/manager.js';
import { unixTransport } from '../../src/handoff/transport.js';
import { HANDOFF_SOCKET_NAME } from '../../src/handoff/protocol.js';
import { eduGroups, handoffResource, MiB, realFdSource, removeDir, tempDir, type RealFdSourceState } from './support.js';

const CLIENT_DIR = join(import.meta.dirname, '..', '..', 'clients', 'c');
const hasCc = ['/usr/bin/cc', '/usr/local/bin/cc'].some((p) => existsSync(p));
let native: NativeBinding;
let buildDir: string;
let example: string;
let dir: string;
let manager: HandoffManager;
let state: RealFdSourceState;

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(example, args);
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
    for (let i = 0; i < 200 && state.handedOver === 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(state.handedOver).toBe(1);
  });

  it('reports the plugin\'s error codes: gone after a claim, released after the timeout', async () => {
    const socket = await prepared();
    expect((await run([socket])).code).toBe(0);
    const again = await run([socket]);
    expect(again.code).toBe(1);
    // The socket goes right after the claim; a client racing it is told ALREADY_CLAIMED instead.
    expect(again.stderr).toMatch(/^claim failed: PVDP_HANDOFF_(NO_SOCKET: cannot connect|ALREADY_CLAIMED)/);
    await manager.stop();
    manager = new HandoffManager({ hostDir: join(dir, 'h2'), containerDir: '/run/h', transport: unixTransport(native), source: realFdSource(native, dir).source, claimTimeoutMs: 10 });
    await manager.start();
    const socket2 = await prepared();
    await new Promise((r) => setTimeout(r, 50));
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
});
