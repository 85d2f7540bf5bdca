// The whole plugin on a sysfs tree: discovery -> selection -> the kubelet,
// through the real gRPC path, while the tree changes under it.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { Daemon } from '../src/daemon.js';
import { createLogger } from '../src/log.js';
import { SimulatedKubelet } from '../src/simulate/kubelet.js';
import { simulatedNodeConfig } from '../src/simulate/node-config.js';
import { writeSysfsTree, addGroup, removeGroup, bindDriver, setEehState, setAerFatal, type NodeSpec } from '../src/simulate/sysfs-tree.js';
import { HealthTracker } from '../src/health/health-tracker.js';
import { builtinPowerNode, FROZEN_EEH_STATE, HEALTHY_EEH_STATE } from '../src/simulate/power-node.js';
import { simulatedSettings } from '../src/simulate/settings.js';
import type { DiscoveryRoots } from '../src/topology/types.js';
import { malformedTree } from './helpers/fixtures.js';
import { parseConfigText } from '../src/config/load.js';
import { startFakeApiServer, type FakeApiServer } from '../src/simulate/api-server.js';
import { NodeReporter } from '../src/report/node-reporter.js';
import { createMetrics, type PluginMetrics } from '../src/report/metrics.js';
import { waitFor } from './helpers/fixtures.js';

let dir: string;
let kubelet: SimulatedKubelet;
let daemon: Daemon | null;
let roots: DiscoveryRoots;
let logLines: { level: string; msg: string; [k: string]: unknown }[];

let reporting: { api: FakeApiServer; reporter: NodeReporter; metrics: PluginMetrics } | null = null;
let health: HealthTracker | null = null;

async function startDaemon(spec: NodeSpec | DiscoveryRoots = builtinPowerNode(), config = simulatedNodeConfig()): Promise<void> {
  roots = 'groups' in spec ? await writeSysfsTree(join(dir, 'node'), spec) : spec;
  const settings = simulatedSettings({ roots, dir, resources: config.resources, pollIntervalMs: 200 });
  kubelet = new SimulatedKubelet(settings.devicePluginDir);
  await kubelet.start();
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logLines.push(JSON.parse(line));
      cb();
    },
  });
  const logger = createLogger({ level: 'debug', destination: sink });
  daemon = new Daemon(settings, {
    logger,
    socketCheckIntervalMs: 200,
    ...(reporting ? { reporter: reporting.reporter, metrics: reporting.metrics } : {}),
    ...(health ? { health } : {}),
  });
  // Counted from before the daemon starts: its first scan and five registrations, generous for a loaded machine.
  const registered = Promise.all(config.resources.map((r) => kubelet.waitForRegistration(r.name, 15_000)));
  await daemon.start();
  await registered;
}

beforeEach(async () => {
  dir = await mkdtemp('/tmp/pvdp-');
  daemon = null;
  logLines = [];
});

afterEach(async () => {
  await daemon?.stop();
  await reporting?.api.close();
  reporting = null;
  health = null;
  await kubelet?.stop();
  await rm(dir, { recursive: true, force: true });
});

const ids = (devices: { ID: string }[]) => devices.map((d) => d.ID);

describe('the plugin on a changing node', () => {
  it('advertises each resource its groups; host-owned groups are not offered', async () => {
    await startDaemon();
    expect(ids(await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 2))).toEqual(['1', '4']);
    expect(ids(await kubelet.waitForDevices('ibm.com/gpu', (d) => d.length === 2))).toEqual(['2', '5']);
    expect(ids(await kubelet.waitForDevices('ibm.com/connectx5', (d) => d.length === 1))).toEqual(['3']);
    expect(ids(await kubelet.waitForDevices('ibm.com/connectx5-vf', (d) => d.length === 2))).toEqual(['7', '8']);
    const res = await kubelet.allocate('ibm.com/connectx5', [['3']]);
    expect(res.container_responses[0]!.envs.PCI_RESOURCE_IBM_COM_CONNECTX5).toBe('0030:01:00.0,0030:01:00.1');
  });

  it('picks up a hot-plugged group and a hot-unplugged one without a restart', async () => {
    await startDaemon();
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 2);
    await addGroup(roots, {
      id: 9,
      name: 'domain53-pe1fb',
      functions: [{ address: '0035:03:00.0', vendor: '144d', device: 'a808', classCode: '010802', driver: 'vfio-pci', numaNode: 8 }],
    });
    // A scan may catch the group half-written (its /dev/vfio node comes last): Unhealthy until whole.
    const after = await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 3 && d.find((x) => x.ID === '9')?.health === 'Healthy');
    expect(after.find((d) => d.ID === '9')).toMatchObject({ health: 'Healthy', topology: { nodes: [{ ID: '8' }] } });
    await kubelet.allocate('ibm.com/nvme', [['9']]);
    await removeGroup(roots, 4);
    expect(ids(await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 2))).toEqual(['1', '9']);
    const err = await kubelet.allocate('ibm.com/nvme', [['4']]).catch((e: unknown) => e);
    expect((err as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('follows driver rebinding: to vfio-pci the group appears, to a host driver it turns unhealthy', async () => {
    await startDaemon();
    await bindDriver(roots, '0000:01:00.0', 'vfio-pci');
    const nvme = await kubelet.waitForDevices('ibm.com/nvme', (d) => d.some((x) => x.ID === '0' && x.health === 'Healthy'));
    expect(ids(nvme)).toEqual(['0', '1', '4']);
    // One function of the multi-function ConnectX-5 group goes back to the host.
    await bindDriver(roots, '0030:01:00.1', 'mlx5_core');
    await kubelet.waitForDevices('ibm.com/connectx5', (d) => d[0]?.health === 'Unhealthy');
    const err = await kubelet.allocate('ibm.com/connectx5', [['3']]).catch((e: unknown) => e);
    expect((err as grpc.ServiceError).code).toBe(grpc.status.FAILED_PRECONDITION);
    expect((err as grpc.ServiceError).details).toMatch(/0030:01:00\.1.*mlx5_core/);
    await bindDriver(roots, '0030:01:00.1', 'vfio-pci');
    await kubelet.waitForDevices('ibm.com/connectx5', (d) => d[0]?.health === 'Healthy');
  });

  it('reports a frozen PE unhealthy and healthy again once it recovers', async () => {
    await startDaemon();
    await kubelet.waitForDevices('ibm.com/fpga', (d) => d[0]?.health === 'Healthy');
    await setEehState(roots, '0035:02:00.0', FROZEN_EEH_STATE);
    await kubelet.waitForDevices('ibm.com/fpga', (d) => d[0]?.health === 'Unhealthy');
    await setEehState(roots, '0035:02:00.0', HEALTHY_EEH_STATE);
    await kubelet.waitForDevices('ibm.com/fpga', (d) => d[0]?.health === 'Healthy');
  });

  it('reports a group two resources select and advertises it under neither', async () => {
    const spec = builtinPowerNode();
    // A GPU with an NVMe function in the same PE: both the gpu and nvme selectors match.
    spec.groups.push({
      id: 10,
      name: 'domain53-pe1fa',
      functions: [
        { address: '0035:04:00.0', vendor: '10de', device: '1db1', classCode: '030200', driver: 'vfio-pci', numaNode: 8 },
        { address: '0035:04:00.1', vendor: '144d', device: 'a808', classCode: '010802', driver: 'vfio-pci', numaNode: 8 },
      ],
    });
    await startDaemon(spec);
    expect(ids(await kubelet.waitForDevices('ibm.com/gpu', (d) => d.length === 2))).toEqual(['2', '5']);
    expect(ids(await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 2))).toEqual(['1', '4']);
    const warning = logLines.find((l) => l.msg.startsWith('IOMMU group matches several resources'));
    expect(warning).toMatchObject({ group: 10, resources: ['ibm.com/gpu', 'ibm.com/nvme'] });
  });
});

describe('the plugin on a malformed sysfs tree', () => {
  it('keeps serving the good groups and logs each bad entry', async () => {
    const tree = await malformedTree();
    try {
      const config = parseConfigText('resources: [{ name: ibm.com/any, selectors: { vendors: ["144d", "10de", "15b3"] }, preparation: { mode: verify } }]');
      await startDaemon(tree.roots, config);
      const devices = await kubelet.waitForDevices('ibm.com/any', (d) => d.length > 0);
      const healthy = devices.filter((d) => d.health === 'Healthy').map((d) => Number(d.ID));
      expect(healthy.sort((a, b) => a - b)).toEqual(tree.goodGroups);
      // Broken groups that are still VFIO candidates are advertised, but as Unhealthy.
      expect(devices.filter((d) => d.health === 'Unhealthy').map((d) => d.ID)).toContain('7');
      for (const id of tree.goodGroups) await kubelet.allocate('ibm.com/any', [[String(id)]]);
      const err = await kubelet.allocate('ibm.com/any', [['7']]).catch((e: unknown) => e);
      expect((err as grpc.ServiceError).code).toBe(grpc.status.FAILED_PRECONDITION);
      const skipped = logLines.filter((l) => l.msg.startsWith('Skipped part of the sysfs tree'));
      const paths = skipped.map((l) => String(l.path));
      expect(paths.some((p) => p.endsWith('/iommu_groups/abc'))).toBe(true);
      expect(paths.some((p) => p.endsWith('/dev/vfio/42'))).toBe(true);
      expect(paths.some((p) => p.includes('0030:04:00.0'))).toBe(true);
      expect(skipped.every((l) => l.level === 'warn')).toBe(true);
    } finally {
      await tree.cleanup();
    }
  });
});

describe('node reporting from the whole plugin', () => {
  async function withReporting(): Promise<{ api: FakeApiServer; metrics: PluginMetrics }> {
    const api = await startFakeApiServer();
    api.addNode('power9-a');
    const metrics = createMetrics({ version: 'test', processMetrics: false });
    const reporter = new NodeReporter({
      kubeConfig: api.kubeConfig(),
      nodeName: 'power9-a',
      backoff: { initialMs: 5, maxMs: 40, jitter: 0.2 },
      eventCoalesceMs: 5,
      heartbeatIntervalMs: 0,
    });
    reporting = { api, reporter, metrics };
    return { api, metrics };
  }

  const condition = (api: FakeApiServer) => api.condition('power9-a', 'PowerVfioDevicePluginHealthy') as { status: string; reason: string; message: string } | undefined;

  it('an EEH freeze reaches ListAndWatch and the node condition, events and metrics; recovery clears it', async () => {
    const { api, metrics } = await withReporting();
    await startDaemon();
    await waitFor(() => condition(api)?.status === 'True', { timeoutMs: 5000 });
    await setEehState(roots, '0035:02:00.0', FROZEN_EEH_STATE);
    await kubelet.waitForDevices('ibm.com/fpga', (d) => d[0]?.health === 'Unhealthy');
    await waitFor(() => condition(api)?.status === 'False', { timeoutMs: 5000 });
    expect(condition(api)).toMatchObject({ reason: 'DevicesUnhealthy' });
    expect(condition(api)!.message).toMatch(/ibm\.com\/fpga.*6/);
    await waitFor(() => api.events().length > 0, { timeoutMs: 5000 });
    expect(JSON.stringify(api.events())).toMatch(/6/);
    expect(await metrics.text()).toMatch(/power_vfio_devices\{[^}]*resource="ibm.com\/fpga"[^}]*health="Unhealthy"[^}]*\} 1/);
    await setEehState(roots, '0035:02:00.0', HEALTHY_EEH_STATE);
    await kubelet.waitForDevices('ibm.com/fpga', (d) => d[0]?.health === 'Healthy');
    await waitFor(() => condition(api)?.status === 'True', { timeoutMs: 5000 });
  });

  it('a rise of the AER fatal count turns the group Unhealthy, reported, and Healthy after a quiet period', async () => {
    const { api } = await withReporting();
    // The Unhealthy spell lasts the quiet period; the test must see it in ListAndWatch and in the node
    // condition before it ends. 1.5 s left too little room on a loaded machine; 4 s leaves plenty.
    health = new HealthTracker({ aerQuietMs: 4000 });
    const spec = builtinPowerNode();
    spec.groups.find((g) => g.id === 4)!.functions[0]!.aerFatal = 2;
    await startDaemon(spec);
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.find((x) => x.ID === '4')?.health === 'Healthy');
    await setAerFatal(roots, '0030:02:00.0', 3);
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.find((x) => x.ID === '4')?.health === 'Unhealthy');
    await waitFor(() => condition(api)?.status === 'False', { timeoutMs: 5000 });
    expect(condition(api)!.message).toMatch(/AER fatal errors on 0030:02:00\.0 rose from 2 to 3/);
    // Back after the 4 s quiet period.
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.find((x) => x.ID === '4')?.health === 'Healthy', 15_000);
    await waitFor(() => condition(api)?.status === 'True', { timeoutMs: 5000 });
  });

  it('an unbind and a hot-unplug reach the node report; the plugin keeps serving while the API server is down', async () => {
    const { api } = await withReporting();
    await startDaemon();
    await waitFor(() => condition(api)?.status === 'True', { timeoutMs: 5000 });
    await api.down();
    await bindDriver(roots, '0030:01:00.1', 'mlx5_core');
    await kubelet.waitForDevices('ibm.com/connectx5', (d) => d[0]?.health === 'Unhealthy');
    // The kubelet side is unaffected by the API server being down.
    await kubelet.allocate('ibm.com/nvme', [['4']]);
    await api.up();
    await waitFor(() => condition(api)?.status === 'False', { timeoutMs: 5000 });
    expect(condition(api)!.message).toMatch(/connectx5.*3/);
    await bindDriver(roots, '0030:01:00.1', 'vfio-pci');
    await removeGroup(roots, 3);
    await kubelet.waitForDevices('ibm.com/connectx5', (d) => d.length === 0);
    await waitFor(() => condition(api)?.status === 'True', { timeoutMs: 5000 });
  });
});
