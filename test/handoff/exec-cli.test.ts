// The exec wrapper as a separate process against a handoff served here over a
// real unix socket with real fds: CMD gets the fds at 3, 4, 5 and the env
// describing them; what CMD writes into the memory fd the plugin side reads;
// signals are forwarded and the exit status passed on.
import { describe, it, expect, beforeAll, beforeEach, afterEach } from 'vitest';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import os from 'node:os';
import { readFile } from 'node:fs/promises';
import { createNativeBinding, type NativeBinding } from '../../src/vfio/native-binding.js';
import { HandoffManager } from '../../src/handoff/manager.js';
import { unixTransport } from '../../src/handoff/transport.js';
import { signalExitCode } from '../../src/handoff/exec-cli.js';
import { HANDOFF_SOCKET_NAME } from '../../src/handoff/protocol.js';
import { eduGroups, handoffResource, MiB, openFdCount, realFdSource, removeDir, tempDir, type RealFdSourceState } from './support.js';
import { waitFor } from '../helpers/fixtures.js';

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'handoff', 'exec-cli.js');
let native: NativeBinding;
let dir: string;
let manager: HandoffManager;
let state: RealFdSourceState;
let socket: string;

beforeAll(() => {
  native = createNativeBinding();
});

beforeEach(async () => {
  dir = await tempDir();
  const real = realFdSource(native, dir);
  state = real.state;
  manager = new HandoffManager({ hostDir: join(dir, 'h'), containerDir: '/run/h', transport: unixTransport(native), source: real.source });
  await manager.start();
  const resource = handoffResource();
  const groups = [eduGroups()[0]!];
  const extra = await manager.allocate(resource, groups);
  await manager.preStart(resource, groups);
  socket = join(extra.mounts![0]!.host_path!, HANDOFF_SOCKET_NAME);
});

afterEach(async () => {
  await manager.stop();
  for (const o of state.observers) await native.munmap(o, MiB);
  await removeDir(dir);
});

function run(args: string[], env: NodeJS.ProcessEnv = {}, onStdout?: (text: string, child: ReturnType<typeof spawn>) => void) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env['PATH'], ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d.toString();
      onStdout?.(stdout, child);
    });
    child.stderr.on('data', (d) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const CHILD = `
const fs = require('node:fs');
const buf = Buffer.alloc(64);
const n = fs.readSync(3, buf, 0, 64, 0);
fs.writeSync(4, 'written by CMD', 200);
const fds = fs.readdirSync('/proc/self/fd').map(Number).filter((f) => f > 2).sort((a, b) => a - b);
console.log(JSON.stringify({
  container: buf.subarray(0, n).toString(),
  group: fs.readFileSync('/proc/self/fd/5', 'utf8'),
  memfd: fs.readlinkSync('/proc/self/fd/4'),
  env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('PVDP_'))),
  argv: process.argv.slice(1),
}));
process.exit(3);
`;

describe('power-vfio-handoff exec', () => {
  it('runs CMD with the fds at 3, 4, 5, the env describing them, and passes its exit status on', async () => {
    const before = await openFdCount();
    const result = await run(['exec', '--', process.execPath, '-e', CHILD, 'one', 'two'], { PVDP_HANDOFF_SOCKET: socket });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(3);
    const seen = JSON.parse(result.stdout) as { container: string; group: string; memfd: string; env: Record<string, string>; argv: string[] };
    expect(seen.container).toBe('I am the container');
    expect(seen.group).toBe('I am group 4');
    expect(seen.memfd).toMatch(/^\/memfd:pvdp-test/);
    expect(seen.argv).toEqual(['one', 'two']);
    expect(seen.env).toMatchObject({
      PVDP_VFIO_CONTAINER_FD: '3',
      PVDP_HANDOFF_MEMORY_FD: '4',
      PVDP_VFIO_GROUP_FDS: '5',
      PVDP_VFIO_GROUP_FD_4: '5',
      PVDP_VFIO_GROUPS: '4',
      PVDP_IOMMU_TYPE: 'spapr-tce-v2',
      PVDP_DMA_WINDOW_START: '0x800000000000000',
      PVDP_DMA_WINDOW_SIZE: '0x40000000',
      PVDP_DMA_IOVA: '0x800000000000000',
      PVDP_DMA_MEMORY_SIZE: '0x100000',
      PVDP_IOMMU_PAGE_SIZE: '0x10000',
    });
    const description = JSON.parse(seen.env['PVDP_HANDOFF_DESCRIPTION']!) as { childFds: unknown; groups: unknown[] };
    expect(description.childFds).toEqual({ container: 3, memory: 4, groups: [5] });
    // What CMD wrote through the memory fd, the plugin side reads.
    expect(native.readMemory(state.observers[0]! + 200n, 14).toString()).toBe('written by CMD');
    // The wrapper may exit before the plugin has finished dropping its copies.
    await waitFor(() => state.handedOver > 0, { what: 'the plugin to close its copies' });
    expect(state.handedOver).toBe(1);
    expect(await openFdCount()).toBeLessThanOrEqual(before - 3); // the plugin's copies are closed
  });

  it('writes the description to a file when asked, forwards SIGTERM and reports a signal death as 128+n', async () => {
    const descFile = join(dir, 'desc.json');
    const waiter = `process.on('SIGTERM', () => { console.log('got SIGTERM'); process.exit(9); }); console.log('ready ' + process.env.PVDP_HANDOFF_DESCRIPTION); setInterval(() => {}, 1000);`;
    const result = await run(['exec', '--socket', socket, '--description-file', descFile, '--', process.execPath, '-e', waiter], {}, (text, wrapper) => {
      if (text.startsWith('ready') && !text.includes('got')) wrapper.kill('SIGTERM');
    });
    expect(result.stdout).toBe(`ready ${descFile}\ngot SIGTERM\n`);
    expect(result.code).toBe(9);
    expect(JSON.parse(await readFile(descFile, 'utf8'))).toMatchObject({ protocol: 1, childFds: { container: 3 } });
  });

  it('reports deaths by SIGSEGV, SIGABRT, SIGBUS and SIGPIPE as 128 + the signal number', async () => {
    expect([signalExitCode('SIGSEGV'), signalExitCode('SIGABRT'), signalExitCode('SIGBUS'), signalExitCode('SIGPIPE')]).toEqual(
      ['SIGSEGV', 'SIGABRT', 'SIGBUS', 'SIGPIPE'].map((name) => 128 + os.constants.signals[name as 'SIGSEGV']),
    );
    if (process.platform === 'linux') expect(signalExitCode('SIGSEGV')).toBe(139);
    const result = await run(['exec', '--socket', socket, '--', process.execPath, '-e', "process.kill(process.pid, 'SIGSEGV')"]);
    expect(result.code).toBe(128 + os.constants.signals.SIGSEGV);
  });

  it('fails clearly without a socket, on a second claim, and with bad usage', async () => {
    expect((await run(['exec', '--', 'true'])).stderr).toMatch(/No handoff socket: set PVDP_HANDOFF_SOCKET/);
    expect((await run(['exec', '--socket', socket, '--', 'true'])).code).toBe(0);
    const second = await run(['exec', '--socket', socket, '--', 'true']);
    expect(second.code).toBe(75);
    expect(second.stderr).toMatch(/PVDP_HANDOFF_NO_SOCKET/);
    expect((await run(['exec'])).code).toBe(2);
    expect((await run(['frobnicate', '--', 'true'])).stderr).toMatch(/^Usage: power-vfio-handoff exec/);
  });
});
