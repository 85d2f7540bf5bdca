// The command-line program as an operator runs it: a separate process,
// signals, exit codes and what it prints.
import { describe, it, expect, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { SimulatedKubelet } from '../../src/simulate/kubelet.js';
import { simulatedNodeConfig } from '../../src/simulate/node-config.js';
import { DraKubelet } from '../../src/simulate/dra-kubelet.js';
import { waitFor } from '../helpers/fixtures.js';

const MAIN = join(import.meta.dirname, '..', '..', 'dist', 'cli', 'main.js');

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function run(args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, [MAIN, ...args], { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, stdout: () => out, stderr: () => err, exit };
}

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

describe('command line', () => {
  it('refuses a malformed configuration file naming each bad field, and exits 2', async () => {
    const dir = await mkdtemp('/tmp/pvdp-');
    dirs.push(dir);
    const file = join(dir, 'bad.yaml');
    await writeFile(file, 'resources:\n  - name: ibm.com/nvme\n    selectors: { vendors: ["zz"] }\n    preparation: { mode: eager }\n');
    const r = run(['--config', file, '--device-plugin-dir', dir]);
    children.push(r.child);
    const { code } = await r.exit;
    expect(code).toBe(2);
    expect(r.stderr()).toMatch(/resources\[0\]\.selectors\.vendors\[0\]: must be a 4-digit hex vendor id/);
    expect(r.stderr()).toMatch(/resources\[0\]\.preparation\.mode: /);
    expect(await readdir(dir)).toEqual(['bad.yaml']);
  });

  it('prints usage for --help and refuses unknown flags', async () => {
    const help = run(['--help']);
    expect((await help.exit).code).toBe(0);
    expect(help.stdout()).toMatch(/--sysfs-root <value>.*PVDP_SYSFS_ROOT/);
    const bad = run(['--no-such-flag']);
    expect((await bad.exit).code).toBe(2);
    expect(bad.stderr()).toMatch(/no-such-flag/);
  });

  it('runs on the simulated node, registers every resource, and on SIGTERM closes streams, removes its sockets and exits 0', async () => {
    const dir = await mkdtemp('/tmp/pvdp-');
    dirs.push(dir);
    const kubelet = new SimulatedKubelet(dir);
    await kubelet.start();
    try {
      const resources = simulatedNodeConfig().resources.map((r) => r.name);
      const registered = Promise.all(resources.map((r) => kubelet.waitForRegistration(r, 15_000)));
      const r = run(['--simulate'], {
        PVDP_DEVICE_PLUGIN_DIR: dir,
        PVDP_LOG_LEVEL: 'info',
        PVDP_METRICS_PORT: '0',
        PVDP_METRICS_BIND: '127.0.0.1',
      });
      children.push(r.child);
      await registered;
      const gpus = await kubelet.waitForDevices('ibm.com/gpu', (d) => d.length === 2);
      expect(gpus.every((d) => d.health === 'Healthy')).toBe(true);
      // Probes and metrics on the one HTTP port. The log line comes through the stdout pipe, which
      // need not be read by the time the registrations came through the kubelet socket.
      const serving = await waitFor(
        () =>
          r
            .stdout()
            .split('\n')
            .slice(0, -1) // whole lines only: the last may still be arriving
            .filter((l) => l.startsWith('{'))
            .map((l) => JSON.parse(l) as { msg: string; port?: number })
            .find((l) => l.msg === 'Serving /metrics, /healthz and /readyz'),
        { timeoutMs: 15_000, what: 'the metrics server log line' },
      );
      expect(serving.port).toBeGreaterThan(0);
      const base = `http://127.0.0.1:${serving.port}`;
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      await waitFor(async () => (await fetch(`${base}/readyz`)).status === 200, { timeoutMs: 15_000, intervalMs: 100, what: '/readyz to answer 200' });
      const metrics = await (await fetch(`${base}/metrics`)).text();
      expect(metrics).toMatch(/power_vfio_devices\{resource="ibm.com\/gpu",health="Healthy"\} 2/);
      expect(metrics).toMatch(/power_vfio_registrations_total\{resource="ibm.com\/gpu",reason="start"\} 1/);
      const ended = new Promise<void>((resolve) => kubelet.once('streamEnded', () => resolve()));
      r.child.kill('SIGTERM');
      const { code } = await r.exit;
      expect(code).toBe(0);
      await ended;
      expect(await readdir(dir)).toEqual(['kubelet.sock']);
      const lines = r.stdout().trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: string });
      expect(lines.some((l) => l.msg === 'Registered with the kubelet')).toBe(true);
      expect(lines.some((l) => l.msg === 'Shutting down')).toBe(true);
    } finally {
      await kubelet.stop();
    }
  });

  it('serves DRA on the simulated node with an API server stand-in, registers through the registry, and on SIGTERM removes its sockets and exits 0', async () => {
    const dir = await mkdtemp('/tmp/pvdp-');
    dirs.push(dir);
    const registry = join(dir, 'reg');
    const kubelet = new DraKubelet(registry, { retryMs: 100 });
    await kubelet.start();
    try {
      const r = run(['--simulate', '--kubelet-api', 'dra', '--plugins-registry-dir', registry], { PVDP_LOG_LEVEL: 'info', PVDP_METRICS_PORT: 'off' });
      children.push(r.child);
      const plugin = await kubelet.waitForPlugin('power-vfio.ibm.com', 15_000);
      // The service socket lives under the simulated node's temporary root, not the host's kubelet directory.
      expect(plugin.endpoint).toMatch(/^\/tmp\/pvdp-sim-[^/]+\/plugins\/power-vfio\.ibm\.com\/dra\.sock$/);
      const health = await kubelet.waitForHealth('power-vfio.ibm.com', (h) => h.length === 8, 15_000);
      expect(health.every((h) => h.pool === 'power9-sim' && h.health === 'HEALTHY')).toBe(true);
      // The driver registers before its first publish has finished (publishing goes on in the
      // background): a SIGTERM right after the health stream could stop it before the slices are out.
      await waitFor(() => r.stdout().includes('"msg":"Published the ResourceSlices of this node"'), {
        timeoutMs: 15_000,
        what: 'the first publish',
      });
      r.child.kill('SIGTERM');
      const { code } = await r.exit;
      expect(code).toBe(0);
      expect(await readdir(registry)).toEqual([]);
      const lines = r.stdout().trim().split('\n').map((l) => JSON.parse(l) as { msg: string; root?: string });
      expect(lines.some((l) => l.msg === 'Published the ResourceSlices of this node')).toBe(true);
      const root = lines.find((l) => l.msg === 'Running on the simulated POWER node')?.root;
      expect(root).toBeDefined();
      await expect(readdir(root!)).rejects.toThrow(/ENOENT/);
    } finally {
      await kubelet.stop();
    }
  });

  it('the demo runs end to end and shows discovery, advertising and an allocation', async () => {
    const r = run(['demo']);
    children.push(r.child);
    const { code } = await r.exit;
    expect(r.stdout()).toMatch(/Discovered IOMMU groups/);
    expect(r.stdout()).toMatch(/PCI_RESOURCE_IBM_COM_GPU=/);
    expect(r.stdout()).toMatch(/re-registered/);
    // Measured after the pod's exit, in units a person reads.
    expect(r.stdout()).toMatch(/while the pod ran, the plugin held 257 MiB locked for it/);
    expect(r.stdout()).toMatch(/the pod exits: the kernel releases everything; the plugin holds 0 bytes locked, group 6 opens again: yes/);
    expect(code).toBe(0);
  }, 60_000);
});
