// Start-up and shutdown as an operator meets them: one clear line and exit 2
// for anything that keeps the daemon from starting, exit 0 for a signal at
// any moment, and nothing left behind either way. Each run gets its own
// TMPDIR, so "nothing left" is checked on a directory no one else uses.
import { describe, it, expect, afterEach } from 'vitest';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { mkdtemp, mkdir, readdir, realpath, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SimulatedKubelet } from '../../src/simulate/kubelet.js';
import { simulatedNodeConfig } from '../../src/simulate/node-config.js';
import { writeSysfsTree } from '../../src/simulate/sysfs-tree.js';
import { builtinPowerNode } from '../../src/simulate/power-node.js';

const ENTRY = join(import.meta.dirname, '..', '..', 'dist', 'cli', 'entry.js');

interface LogLine {
  msg: string;
  level: string;
  [key: string]: unknown;
}

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  lines: () => LogLine[];
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first log line that satisfies `match` (checked on every chunk of output). */
  waitFor: (match: (line: LogLine) => boolean) => Promise<LogLine>;
}

const dirs: string[] = [];
const children: ChildProcess[] = [];
const servers: Server[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const s of servers.splice(0)) s.close();
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function scratch(): Promise<string> {
  const d = await mkdtemp('/tmp/pvdp-');
  dirs.push(d);
  return d;
}

function run(args: string[], env: NodeJS.ProcessEnv): Run {
  const child = spawn(process.execPath, [ENTRY, ...args], { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  const waiters: { match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  const parse = (): LogLine[] =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine);
  const check = () => {
    const lines = parse();
    for (const w of [...waiters]) {
      const hit = lines.find(w.match);
      if (hit) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(hit);
      }
    }
  };
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    check();
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    lines: parse,
    exit,
    waitFor: (match) =>
      new Promise<LogLine>((resolve, reject) => {
        waiters.push({ match, resolve });
        check();
        void exit.then(() => reject(new Error(`exited before the awaited line; stdout:\n${out}\nstderr:\n${err}`)));
      }),
  };
}

function listen(host: string): Promise<{ server: Server; port: number }> {
  return new Promise((resolve) => {
    const server = createServer();
    servers.push(server);
    server.listen(0, host, () => resolve({ server, port: (server.address() as { port: number }).port }));
  });
}

/** A non-simulated run: a sysfs tree, a configuration with one resource in mode none (no native addon needed). */
async function realModeFixture(): Promise<{ dir: string; tree: string; config: string; pluginDir: string }> {
  const dir = await scratch();
  const tree = join(dir, 'node');
  await writeSysfsTree(tree, builtinPowerNode());
  const config = join(dir, 'c.yaml');
  await writeFile(config, 'resources: [{name: ibm.com/nvme, selectors: {classes: ["010802"]}, preparation: {mode: none}}]\n');
  const pluginDir = join(dir, 'dp');
  await mkdir(pluginDir);
  return { dir, tree, config, pluginDir };
}

describe('start-up failures', () => {
  it('a metrics port in use is one line naming the flag and the remedy, exit 2, and the simulated node is removed', async () => {
    const tmp = await scratch();
    const { port } = await listen('127.0.0.1');
    const r = run(['--simulate', '--metrics-port', String(port), '--metrics-bind', '127.0.0.1'], { TMPDIR: tmp });
    expect((await r.exit).code).toBe(2);
    expect(r.stderr()).toBe(
      `Cannot serve /metrics, /healthz and /readyz on 127.0.0.1:${port}: the port is already in use: stop the other process or choose another port with --metrics-port ("off" turns the server off)\n`,
    );
    expect(await readdir(tmp)).toEqual([]);
  });

  it('names the environment variable when the port came from it', async () => {
    const tmp = await scratch();
    const { port } = await listen('127.0.0.1');
    const r = run(['--simulate'], { TMPDIR: tmp, PVDP_METRICS_PORT: String(port), PVDP_METRICS_BIND: '127.0.0.1' });
    expect((await r.exit).code).toBe(2);
    expect(r.stderr()).toMatch(/choose another port with PVDP_METRICS_PORT/);
    expect(await readdir(tmp)).toEqual([]);
  });

  it('refuses a device-plugins directory that is a file, and a blank metrics port, with exit 2 and nothing left', async () => {
    const tmp = await scratch();
    const file = join(tmp, 'not-a-dir');
    await writeFile(file, '');
    const r = run(['--simulate', '--device-plugin-dir', file, '--metrics-port', 'off'], { TMPDIR: tmp });
    expect((await r.exit).code).toBe(2);
    expect(r.stderr()).toBe(
      `The device-plugins directory ${file} (--device-plugin-dir) is not a directory: point --device-plugin-dir at the kubelet's device-plugins directory (/var/lib/kubelet/device-plugins unless the kubelet runs with another --root-dir)\n`,
    );
    const blank = run(['--simulate'], { TMPDIR: tmp, PVDP_METRICS_PORT: ' ' });
    expect((await blank.exit).code).toBe(2);
    expect(blank.stderr()).toBe('PVDP_METRICS_PORT: " " is not a port number: write a decimal port in [0, 65535] (0 picks a free one) or "off"\n');
    expect(await readdir(tmp)).toEqual(['not-a-dir']);
  });

  it('a directory that cannot be created names its flag', async () => {
    const tmp = await scratch();
    const blocker = join(tmp, 'file');
    await writeFile(blocker, '');
    const r = run(['--simulate', '--metrics-port', 'off', '--handoff-dir', join(blocker, 'handoff')], { TMPDIR: tmp });
    expect((await r.exit).code).toBe(2);
    expect(r.stderr()).toMatch(new RegExp(`^Start-up failed: cannot mkdir ${join(blocker, 'handoff')} \\(--handoff-dir\\) \\(ENOTDIR\\): a file stands where a directory must be: remove it or choose another with --handoff-dir\\n$`));
    expect(await readdir(tmp)).toEqual(['file']);
  });
});

describe('signals during start-up', () => {
  it('SIGTERM while the program still loads (before any log line) exits 0 and leaves nothing', async () => {
    // Only Node's own bootstrap (tens of ms) comes before the handlers. Later
    // moments are tried until one lands while the modules load: every run must
    // end cleanly, and at least one must have been stopped that early.
    const tmp = await scratch();
    let stoppedWhileLoading = 0;
    for (let delayMs = 10; delayMs <= 1000 && stoppedWhileLoading === 0; delayMs += 15) {
      const r = run(['--simulate', '--metrics-port', 'off'], { TMPDIR: tmp });
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      const before = r.stdout();
      r.child.kill('SIGTERM');
      const end = await r.exit;
      if (end.signal === 'SIGTERM') expect(before, 'killed by the signal after logging').toBe('');
      else expect(end, r.stderr()).toEqual({ code: 0, signal: null });
      expect(await readdir(tmp)).toEqual([]);
      if (end.code === 0 && before === '') stoppedWhileLoading += 1;
    }
    expect(stoppedWhileLoading).toBe(1);
  });

  it('SIGTERM right after the simulated node is written exits 0 and removes it', async () => {
    const tmp = await scratch();
    const r = run(['--simulate', '--metrics-port', 'off'], { TMPDIR: tmp, PVDP_LOG_LEVEL: 'debug' });
    await r.waitFor((l) => l.msg === 'Running on the simulated POWER node');
    r.child.kill('SIGTERM');
    expect(await r.exit).toEqual({ code: 0, signal: null });
    expect(await readdir(tmp)).toEqual([]);
  });

  it('SIGTERM during the first scan exits 0; a FIFO in the sysfs tree does not hold discovery', async () => {
    const { tree, config, pluginDir } = await realModeFixture();
    const vendor = await realpath(join(tree, 'sys', 'bus', 'pci', 'devices', '0000:02:00.0', 'vendor'));
    await rm(vendor);
    execFileSync('mkfifo', [vendor]);
    // The identity is read from uevent first: a FIFO there too, so the scan meets both and falls back to vendor.
    const uevent = join(vendor, '..', 'uevent');
    await rm(uevent);
    execFileSync('mkfifo', [uevent]);
    const args = ['--config', config, '--sysfs-root', tree, '--dev-root', tree, '--device-plugin-dir', pluginDir, '--metrics-port', 'off'];
    // Signalled as soon as the scan starts.
    const early = run(args, { PVDP_LOG_LEVEL: 'debug' });
    await early.waitFor((l) => l.msg === 'First scan of the IOMMU groups');
    early.child.kill('SIGTERM');
    expect(await early.exit).toEqual({ code: 0, signal: null });
    // Left alone, the scan steps over the FIFO and the daemon starts.
    const later = run(args, { PVDP_LOG_LEVEL: 'debug' });
    await later.waitFor((l) => l.msg === 'Plugin started');
    expect(later.lines().some((l) => /^Skipped part of the sysfs tree: (Cannot read|Unexpected content in) vendor of function 0000:02:00\.0/.test(l.msg))).toBe(true);
    later.child.kill('SIGTERM');
    expect(await later.exit).toEqual({ code: 0, signal: null });
    expect(await readdir(pluginDir)).toEqual([]);
  });
});

describe('waiting for the kubelet', () => {
  it('a missing device-plugins directory is said once, /readyz says why, and the plugin registers when the kubelet comes', async () => {
    const { tree, config, dir } = await realModeFixture();
    const pluginDir = join(dir, 'kubelet', 'device-plugins');
    const r = run(
      ['--config', config, '--sysfs-root', tree, '--dev-root', tree, '--device-plugin-dir', pluginDir, '--metrics-port', '0', '--metrics-bind', '127.0.0.1'],
      { PVDP_LOG_LEVEL: 'debug' },
    );
    const serving = await r.waitFor((l) => l.msg === 'Serving /metrics, /healthz and /readyz');
    await r.waitFor((l) => l.msg === 'Plugin started');
    const ready = await fetch(`http://127.0.0.1:${serving.port as number}/readyz`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { missing: string[] }).missing).toContain(
      `The device-plugins directory ${pluginDir} does not exist yet (the kubelet creates it when it starts)`,
    );
    // Several quiet retries, one notice.
    await r.waitFor(() => r.lines().filter((l) => l.msg === 'Not registered yet; checking again').length >= 3);
    const kubelet = new SimulatedKubelet(pluginDir);
    await kubelet.start();
    try {
      await kubelet.waitForRegistration('ibm.com/nvme', 15_000);
      const notices = r.lines().filter((l) => String(l.msg).startsWith('Waiting for the kubelet'));
      // The kubelet stand-in creates the directory, then binds kubelet.sock: a retry that lands in
      // between rightly says once that it now waits for the socket. Each notice at most once.
      expect(notices.map((l) => l.msg).filter((m) => !m.startsWith('Waiting for the kubelet: serving'))).toEqual([
        'Waiting for the kubelet: the device-plugins directory does not exist yet (the kubelet creates it when it starts)',
      ]);
      expect(notices.filter((l) => l.msg.startsWith('Waiting for the kubelet: serving')).length).toBeLessThanOrEqual(1);
      expect(r.lines().filter((l) => l.level === 'warn' && /Registration failed|Cannot watch/.test(l.msg))).toEqual([]);
      expect(r.lines().filter((l) => /EACCES|ENOENT/.test(JSON.stringify(l)))).toEqual([]);
      r.child.kill('SIGTERM');
      expect((await r.exit).code).toBe(0);
    } finally {
      await kubelet.stop();
    }
  });

  it('the simulated node without a kubelet says once that it waits, keeps every path under its root, and leaves nothing', async () => {
    const tmp = await scratch();
    const r = run(['--simulate', '--metrics-port', 'off'], { TMPDIR: tmp, PVDP_LOG_LEVEL: 'debug' });
    const sim = await r.waitFor((l) => l.msg === 'Running on the simulated POWER node');
    const root = sim.root as string;
    expect(root.startsWith(`${tmp}/pvdp-sim-`)).toBe(true);
    for (const key of ['pluginDir', 'podResourcesSocket', 'handoffDir']) expect(String(sim[key]).startsWith(`${root}/`), key).toBe(true);
    await r.waitFor(() => r.lines().filter((l) => l.msg === 'Not registered yet; checking again').length >= 2 * simulatedNodeConfig().resources.length);
    const lines = r.lines();
    const waiting = lines.filter((l) => String(l.msg).startsWith('Waiting for the kubelet: serving'));
    expect(waiting).toHaveLength(1);
    expect(waiting[0]).toMatchObject({
      level: 'info',
      socket: `${root}/device-plugins/kubelet.sock`,
    });
    expect(lines.filter((l) => l.level === 'warn')).toEqual([]);
    expect(lines.find((l) => l.msg === 'Handoff mode started')).toMatchObject({ podResources: `${root}/pod-resources/kubelet.sock` });
    r.child.kill('SIGTERM');
    expect((await r.exit).code).toBe(0);
    expect(await readdir(tmp)).toEqual([]);
  });

  it('every kubelet-side log line carries the resource key once', async () => {
    const tmp = await scratch();
    const r = run(['--simulate', '--metrics-port', 'off'], { TMPDIR: tmp, PVDP_LOG_LEVEL: 'debug' });
    await r.waitFor((l) => l.msg === 'Not registered yet; checking again');
    r.child.kill('SIGTERM');
    await r.exit;
    const raw = r.stdout().split('\n').filter((l) => l.includes('"resource"'));
    expect(raw.length).toBeGreaterThan(0);
    for (const line of raw) expect(line.match(/"resource":/g), line).toHaveLength(1);
  });
});
