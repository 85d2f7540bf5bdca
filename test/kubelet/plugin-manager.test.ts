// The kubelet conversation over real unix sockets: a simulated kubelet on one
// side, the plugin manager on the other, topologies given in memory.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, rm, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { PluginManager } from '../../src/kubelet/plugin-manager.js';
import { socketNameFor } from '../../src/kubelet/socket-path.js';
import type { Preparer } from '../../src/prepare/types.js';
import { SimulatedKubelet } from '../../src/simulate/kubelet.js';
import { parseConfigText } from '../../src/config/load.js';
import type { IommuGroup } from '../../src/topology/types.js';
import { fn, group, topologyOf } from '../helpers/groups.js';
import { waitFor } from '../helpers/fixtures.js';

const CONFIG = parseConfigText(`
resources:
  - name: ibm.com/nvme
    selectors: { classes: ["0108"] }
    preparation: { mode: verify }
  - name: ibm.com/gpu
    selectors: { vendors: ["10de"] }
    preparation: { mode: none }
`);

function nodeGroups(): IommuGroup[] {
  return [
    // NVMe on PHB 0x30 (NUMA 0) and 0x31 (NUMA 8), one multi-function group.
    group(3, [fn('0030:01:00.0')], { phb: 0x30 }),
    group(4, [fn('0030:02:00.0'), fn('0030:02:00.1')], { phb: 0x30 }),
    group(7, [fn('0031:01:00.0', { numaNode: 8 })], { phb: 0x31 }),
    group(8, [fn('0031:02:00.0', { numaNode: 8 })], { phb: 0x31 }),
    group(9, [fn('0032:01:00.0', { numaNode: 8 })], { phb: 0x32 }),
    group(12, [fn('0033:01:00.0', { vendor: '10de', device: '1db1', classCode: '030200' })], { phb: 0x33 }),
  ];
}

function grpcCode(err: unknown): number | undefined {
  return (err as grpc.ServiceError).code;
}

let dir: string;
let kubelet: SimulatedKubelet;
let manager: PluginManager | null;

async function startManager(preparer?: Preparer, groups = nodeGroups()): Promise<PluginManager> {
  manager = new PluginManager({
    pluginDir: dir,
    resources: CONFIG.resources,
    checkIntervalMs: 200,
    retryMinMs: 50,
    retryMaxMs: 400,
    ...(preparer ? { preparer } : {}),
  });
  manager.applyTopology(topologyOf(groups));
  const registered = Promise.all([kubelet.waitForRegistration('ibm.com/nvme'), kubelet.waitForRegistration('ibm.com/gpu')]);
  await manager.start();
  await registered;
  return manager;
}

beforeEach(async () => {
  dir = await mkdtemp('/tmp/pvdp-');
  kubelet = new SimulatedKubelet(dir);
  await kubelet.start();
  manager = null;
});

afterEach(async () => {
  await manager?.stop();
  await kubelet.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('registration and ListAndWatch', () => {
  it('serves, registers each resource and streams devices with health and NUMA topology', async () => {
    await startManager();
    expect(kubelet.resources()).toEqual(['ibm.com/gpu', 'ibm.com/nvme']);
    const nvme = kubelet.plugin('ibm.com/nvme')!;
    expect(nvme.endpoint).toBe(socketNameFor(dir, 'ibm.com/nvme'));
    expect(nvme.options).toEqual({ pre_start_required: true, get_preferred_allocation_available: true });
    expect(kubelet.plugin('ibm.com/gpu')!.options.pre_start_required).toBe(false);
    const devices = await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
    expect(devices.map((d) => d.ID)).toEqual(['3', '4', '7', '8', '9']);
    expect(devices.every((d) => d.health === 'Healthy')).toBe(true);
    expect(devices[2]!.topology).toEqual({ nodes: [{ ID: '8' }] });
    await kubelet.waitForDevices('ibm.com/gpu', (d) => d.length === 1 && d[0]!.ID === '12');
  });

  it('pushes an update when a health or the set changes, and only then', async () => {
    await startManager();
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
    const before = kubelet.plugin('ibm.com/nvme')!.updates;
    manager!.applyTopology(topologyOf(nodeGroups()));
    const groups = nodeGroups();
    groups[0] = { ...groups[0]!, usable: false, problems: ['Function 0030:01:00.0 is bound to host driver nvme'] };
    manager!.applyTopology(topologyOf(groups.filter((g) => g.id !== 9)));
    const devices = await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 4);
    expect(devices.find((d) => d.ID === '3')!.health).toBe('Unhealthy');
    // The identical topology before the change sent nothing.
    expect(kubelet.plugin('ibm.com/nvme')!.updates).toBe(before + 1);
  });

  it('registers once the kubelet comes up after the plugin', async () => {
    await kubelet.stop();
    manager = new PluginManager({ pluginDir: dir, resources: CONFIG.resources, checkIntervalMs: 200, retryMinMs: 50, retryMaxMs: 400 });
    manager.applyTopology(topologyOf(nodeGroups()));
    await manager.start();
    expect(manager.registered('ibm.com/nvme')).toBe(false);
    kubelet = new SimulatedKubelet(dir);
    const registered = kubelet.waitForRegistration('ibm.com/nvme', 10_000);
    await kubelet.start();
    await registered;
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
  });

  it('re-registers after three kubelet restarts in a row, each within about a second', async () => {
    // New connections the kubelet made to our nvme endpoint: one per kubelet.
    let dialled = 0;
    kubelet.on('registered', (resource: string) => {
      if (resource === 'ibm.com/nvme') dialled += 1;
    });
    await startManager();
    for (let i = 0; i < 3; i++) {
      // Registration follows the new kubelet.sock (watch and 200 ms poll), not the backoff (capped
      // at 400 ms here), so no clock is read: the benchmark measures the real figure. The deadline
      // is only generous for a loaded machine.
      const back = Promise.all([kubelet.waitForRegistration('ibm.com/nvme', 10_000), kubelet.waitForRegistration('ibm.com/gpu', 10_000)]);
      await kubelet.restart();
      await back;
      const devices = await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
      expect(devices.every((d) => d.health === 'Healthy')).toBe(true);
      // Allocation works against the new kubelet's connection.
      const res = await kubelet.allocate('ibm.com/nvme', [['3']]);
      expect(res.container_responses).toHaveLength(1);
    }
    expect(kubelet.restarts).toBe(3);
    // Read once the stream-end timers armed by the restarts (0, 50 and 100 ms) have fired.
    await new Promise((r) => setTimeout(r, 500));
    expect(dialled).toBe(4);
    // One Register per kubelet: the timer armed when the old kubelet's stream ended finds the
    // endpoint already registered with the new kubelet and registers nothing more.
    expect(manager!.registrations('ibm.com/nvme')).toBe(4);
    const files = (await readdir(dir)).sort();
    expect(files).toEqual(['kubelet.sock', socketNameFor(dir, 'ibm.com/gpu'), socketNameFor(dir, 'ibm.com/nvme')].sort());
  });

  it('registers again when the kubelet ends a ListAndWatch stream', async () => {
    await startManager();
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
    const back = kubelet.waitForRegistration('ibm.com/nvme', 10_000);
    kubelet.dropStream('ibm.com/nvme');
    await back;
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5 && d.every((x) => x.health === 'Healthy'));
    // The plugin counts the registration when the kubelet's answer arrives, which can come after
    // the new stream's devices: wait for it, then see that no further one follows (no loop).
    await waitFor(() => manager!.registrations('ibm.com/nvme') >= 2, { what: 'the second registration to be counted' });
    await new Promise((r) => setTimeout(r, 500));
    expect(manager!.registrations('ibm.com/nvme')).toBe(2);
  });

  it('registers again when the kubelet accepted Register but never opened ListAndWatch', async () => {
    kubelet.openStreams = false;
    manager = new PluginManager({ pluginDir: dir, resources: CONFIG.resources, checkIntervalMs: 200, retryMinMs: 50, streamWatchdogMs: 300 });
    manager.applyTopology(topologyOf(nodeGroups()));
    await manager.start();
    const first = kubelet.registerCalls;
    const back = kubelet.waitForRegistration('ibm.com/nvme', 10_000);
    kubelet.openStreams = true;
    await back;
    expect(kubelet.registerCalls).toBeGreaterThan(first);
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
  });

  it('a second copy of the plugin on the same directory does not take the sockets over', async () => {
    await startManager();
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
    const second = new PluginManager({ pluginDir: dir, resources: CONFIG.resources, checkIntervalMs: 200, retryMinMs: 50, retryMaxMs: 400 });
    second.applyTopology(topologyOf(nodeGroups()));
    const calls = kubelet.registerCalls;
    try {
      await second.start();
      await new Promise((r) => setTimeout(r, 600));
      expect(second.registered('ibm.com/nvme')).toBe(false);
      // The first copy keeps its stream: no registration storm.
      expect(kubelet.registerCalls).toBe(calls);
      expect(kubelet.plugin('ibm.com/nvme')!.streamOpen).toBe(true);
      await kubelet.allocate('ibm.com/nvme', [['3']]);
    } finally {
      await second.stop();
    }
  });

  it('accepts a device-plugins directory in any spelling and names the endpoint by its base name', async () => {
    manager = new PluginManager({ pluginDir: `${dir}/./`, resources: CONFIG.resources, checkIntervalMs: 200, retryMinMs: 50 });
    manager.applyTopology(topologyOf(nodeGroups()));
    const registered = kubelet.waitForRegistration('ibm.com/nvme');
    await manager.start();
    await registered;
    expect(kubelet.plugin('ibm.com/nvme')!.endpoint).toBe(socketNameFor(dir, 'ibm.com/nvme'));
  });

  it('stop ends the streams and removes our sockets', async () => {
    await startManager();
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
    const ended = new Promise<string>((resolve) => kubelet.once('streamEnded', resolve));
    await manager!.stop();
    manager = null;
    expect(await ended).toMatch(/^ibm\.com\//);
    expect(await readdir(dir)).toEqual(['kubelet.sock']);
  });

  it('replaces a stale socket file left by a previous run', async () => {
    const { writeFile } = await import('node:fs/promises');
    await writeFile(join(dir, socketNameFor(dir, 'ibm.com/nvme')), 'stale');
    await startManager();
    expect((await stat(join(dir, socketNameFor(dir, 'ibm.com/nvme')))).isSocket()).toBe(true);
  });
});

describe('Allocate', () => {
  it('returns device nodes and every function of every group, per container', async () => {
    await startManager();
    const res = await kubelet.allocate('ibm.com/nvme', [['4', '7'], ['3']]);
    expect(res.container_responses).toHaveLength(2);
    const [first, second] = res.container_responses;
    expect(first!.devices).toEqual([
      { container_path: '/dev/vfio/vfio', host_path: '/dev/vfio/vfio', permissions: 'rw' },
      { container_path: '/dev/vfio/4', host_path: '/dev/vfio/4', permissions: 'rw' },
      { container_path: '/dev/vfio/7', host_path: '/dev/vfio/7', permissions: 'rw' },
    ]);
    expect(first!.envs).toEqual({
      PCI_RESOURCE_IBM_COM_NVME: '0030:02:00.0,0030:02:00.1,0031:01:00.0',
      VFIO_GROUPS_IBM_COM_NVME: '4,7',
    });
    expect(second!.envs.PCI_RESOURCE_IBM_COM_NVME).toBe('0030:01:00.0');
    expect(second!.devices.map((d) => d.host_path)).toEqual(['/dev/vfio/vfio', '/dev/vfio/3']);
  });

  const hostile: [string, string[][], number, RegExp][] = [
    ['unknown group', [['5']], grpc.status.INVALID_ARGUMENT, /IOMMU group 5 is not a device of ibm\.com\/nvme/],
    ['group of another resource', [['12']], grpc.status.INVALID_ARGUMENT, /not a device/],
    ['duplicate in one container', [['3', '3']], grpc.status.INVALID_ARGUMENT, /more than once/],
    ['duplicate across containers', [['3'], ['4', '3']], grpc.status.INVALID_ARGUMENT, /containers 0 and 1/],
    ['path traversal', [['../3']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['absolute path', [['/dev/vfio/3']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['hex', [['0x3']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['negative', [['-3']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['leading zero', [['03']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['whitespace', [[' 3']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['empty id', [['']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['huge', [['99999999999999999999']], grpc.status.INVALID_ARGUMENT, /malformed/],
    ['no ids', [[]], grpc.status.INVALID_ARGUMENT, /No device IDs/],
    ['no containers', [], grpc.status.INVALID_ARGUMENT, /no container requests/],
  ];
  for (const [name, containers, code, message] of hostile) {
    it(`refuses a request with ${name} and changes nothing`, async () => {
      await startManager();
      await kubelet.waitForDevices('ibm.com/nvme', (d) => d.length === 5);
      const before = JSON.stringify(kubelet.plugin('ibm.com/nvme')!.devices);
      const err = await kubelet.allocate('ibm.com/nvme', containers).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).not.toBeNull();
      expect(grpcCode(err)).toBe(code);
      expect((err as grpc.ServiceError).details).toMatch(message);
      // The plugin still serves, and the same devices still allocate.
      const ok = await kubelet.allocate('ibm.com/nvme', [['3'], ['4']]);
      expect(ok.container_responses).toHaveLength(2);
      expect(JSON.stringify(kubelet.plugin('ibm.com/nvme')!.devices)).toBe(before);
    });
  }

  it('refuses an unhealthy group with FailedPrecondition naming the cause', async () => {
    const groups = nodeGroups();
    groups[1] = { ...groups[1]!, usable: false, problems: ['Function 0030:02:00.1 is bound to host driver nvme; bind it to vfio-pci'] };
    await startManager(undefined, groups);
    const err = await kubelet.allocate('ibm.com/nvme', [['3', '4']]).catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(grpc.status.FAILED_PRECONDITION);
    expect((err as grpc.ServiceError).details).toMatch(/IOMMU group 4 .* unhealthy: Function 0030:02:00\.1 is bound to host driver nvme/);
  });
});

describe('GetPreferredAllocation', () => {
  it('honours must-include, then packs on the same NUMA node and PHB', async () => {
    await startManager();
    const res = await kubelet.preferred('ibm.com/nvme', [
      { available: ['3', '4', '7', '8', '9'], mustInclude: ['8'], size: 2 },
      { available: ['3', '4', '7', '8', '9'], size: 2 },
      { available: ['3', '4', '7', '8', '9'], size: 3 },
      { available: ['3', '7', '9'], mustInclude: ['3'], size: 3 },
    ]);
    const ids = res.container_responses.map((r) => r.deviceIDs);
    expect(ids[0]).toEqual(['8', '7']);
    // Two fit on NUMA 0 (3, 4) exactly: the tightest fit keeps NUMA 8 whole.
    expect(ids[1]).toEqual(['3', '4']);
    // Three only fit on NUMA 8; 7 and 8 share a PHB.
    expect(ids[2]!.sort()).toEqual(['7', '8', '9']);
    expect(ids[3]![0]).toBe('3');
    expect(ids[3]).toHaveLength(3);
  });

  it('never fails: unknown or repeated must-include IDs are dropped and the size is clamped', async () => {
    await startManager();
    const res = await kubelet.preferred('ibm.com/nvme', [
      { available: ['3', '7'], mustInclude: ['../../etc', '7', '7'], size: 2 },
      { available: ['3'], size: -1 },
      { available: ['3', '55', 'x'], size: 2 },
      { available: ['3', '4'], size: 9 },
    ]);
    const ids = res.container_responses.map((r) => r.deviceIDs);
    expect(ids[0]).toEqual(['7', '3']);
    expect(ids[1]).toEqual([]);
    // Unknown available IDs are ignored rather than offered.
    expect(ids[2]).toEqual(['3']);
    expect(ids[3]!.sort()).toEqual(['3', '4']);
    const empty = await kubelet.preferred('ibm.com/nvme', []);
    expect(empty.container_responses).toEqual([]);
  });
});

describe('PreStartContainer', () => {
  it('runs the preparer for the resource with its groups, and fails the start with its message', async () => {
    const calls: [string, number[]][] = [];
    let fail = false;
    await startManager(async (resource, groups) => {
      calls.push([resource.name, groups.map((g) => g.id)]);
      if (fail) throw new Error('RLIMIT_MEMLOCK is 64 MiB but 1024 MiB are needed: raise the memlock limit');
    });
    await kubelet.preStart('ibm.com/nvme', ['4', '7']);
    // Repeated PreStartContainer for the same groups (init containers) is fine.
    await kubelet.preStart('ibm.com/nvme', ['4', '7']);
    expect(calls).toEqual([
      ['ibm.com/nvme', [4, 7]],
      ['ibm.com/nvme', [4, 7]],
    ]);
    fail = true;
    const err = await kubelet.preStart('ibm.com/nvme', ['3']).catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(grpc.status.FAILED_PRECONDITION);
    expect((err as grpc.ServiceError).details).toMatch(/RLIMIT_MEMLOCK is 64 MiB/);
  });

  it('checks the groups are still usable and refuses hostile IDs', async () => {
    await startManager();
    await kubelet.preStart('ibm.com/nvme', ['3']);
    const groups = nodeGroups();
    groups[0] = { ...groups[0]!, devNode: false, usable: false, problems: ['/dev/vfio/3 is missing'] };
    manager!.applyTopology(topologyOf(groups));
    const err = await kubelet.preStart('ibm.com/nvme', ['3']).catch((e: unknown) => e);
    expect(grpcCode(err)).toBe(grpc.status.FAILED_PRECONDITION);
    expect((err as grpc.ServiceError).details).toMatch(/\/dev\/vfio\/3 is missing/);
    for (const ids of [['../3'], ['4', '4'], ['404'], []]) {
      const e = await kubelet.preStart('ibm.com/nvme', ids).catch((x: unknown) => x);
      expect(grpcCode(e)).toBe(grpc.status.INVALID_ARGUMENT);
    }
  });
});

describe('CDI', () => {
  it('writes a spec per resource, names CDI devices in Allocate and keeps the specs in step', async () => {
    const { CdiSpecWriter } = await import('../../src/cdi/spec-writer.js');
    const { readFile, writeFile } = await import('node:fs/promises');
    const cdiDir = join(dir, 'cdi');
    const writer = new CdiSpecWriter(cdiDir);
    const { mkdir } = await import('node:fs/promises');
    await mkdir(cdiDir);
    await writeFile(join(cdiDir, 'other-vendor.json'), '{}');
    manager = new PluginManager({ pluginDir: dir, resources: CONFIG.resources, checkIntervalMs: 200, retryMinMs: 50, cdi: writer });
    manager.applyTopology(topologyOf(nodeGroups()));
    const registered = kubelet.waitForRegistration('ibm.com/nvme');
    await manager.start();
    await registered;
    const res = await kubelet.allocate('ibm.com/nvme', [['4', '7']]);
    const c = res.container_responses[0]!;
    expect(c.cdi_devices).toEqual([{ name: 'ibm.com/nvme=4' }, { name: 'ibm.com/nvme=7' }]);
    expect(c.devices).toEqual([]);
    expect(c.envs.PCI_RESOURCE_IBM_COM_NVME).toBe('0030:02:00.0,0030:02:00.1,0031:01:00.0');
    await writer.update(new Map());
    await writer.update(new Map([['ibm.com/nvme', [3, 4, 7, 8, 9]]]));
    const spec = JSON.parse(await readFile(join(cdiDir, 'power-vfio-ibm.com_nvme.json'), 'utf8'));
    expect(spec.kind).toBe('ibm.com/nvme');
    expect(spec.cdiVersion).toBe('0.6.0');
    expect(spec.devices.map((d: { name: string }) => d.name)).toEqual(['3', '4', '7', '8', '9']);
    expect(spec.devices[0].containerEdits.deviceNodes).toEqual([{ path: '/dev/vfio/3', permissions: 'rw' }]);
    expect(spec.containerEdits.deviceNodes).toEqual([{ path: '/dev/vfio/vfio', permissions: 'rw' }]);
    // A group that goes away leaves the spec; a resource that goes away loses its file; others' files stay.
    await writer.update(new Map([['ibm.com/nvme', [3]]]));
    expect(JSON.parse(await readFile(join(cdiDir, 'power-vfio-ibm.com_nvme.json'), 'utf8')).devices).toHaveLength(1);
    expect((await readdir(cdiDir)).sort()).toEqual(['other-vendor.json', 'power-vfio-ibm.com_nvme.json']);
  });
});
