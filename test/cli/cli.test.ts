// The command-line program as an operator runs it: a separate process,
// signals, exit codes and what it prints.
import { describe, it, expect, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { SimulatedKubelet } from '../../src/simulate/kubelet.js';
import { simulatedNodeConfig } from '../../src/simulate/node-config.js';

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
      // Probes and metrics on the one HTTP port.
      const serving = r
        .stdout()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { msg: string; port?: number })
        .find((l) => l.msg === 'Serving /metrics, /healthz and /readyz');
      expect(serving?.port).toBeGreaterThan(0);
      const base = `http://127.0.0.1:${serving!.port}`;
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      let ready = await fetch(`${base}/readyz`);
      for (let i = 0; i < 50 && ready.status !== 200; i++) {
        await new Promise((res) => setTimeout(res, 100));
        ready = await fetch(`${base}/readyz`);
      }
      expect(ready.status).toBe(200);
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
