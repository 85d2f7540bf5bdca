// Managed binding on the simulated node: groups stay on their host drivers
// until a claim is prepared, which moves them to vfio-pci through sysfs
// (driver_override, unbind, drivers_probe, done by the simulated sysfs kernel
// as the kernel does them); unprepare gives them back. Refusals name what the
// host uses; a failure part-way rolls every function back; a restarted driver
// finishes what an earlier process left.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile, access } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/log.js';
import { startDraNode, SIMULATED_NODE_NAME, type DraNode } from '../../src/simulate/dra-node.js';
import { allocatedClaim, ClaimStore } from '../../src/simulate/claims.js';
import { addHostDevice, type FunctionSpec, type GroupSpec, type NodeSpec } from '../../src/simulate/sysfs-tree.js';
import { builtinPowerNode } from '../../src/simulate/power-node.js';
import { DEFAULT_DRIVER_NAME } from '../../src/dra/constants.js';
import { resourceSchema, type ResourceConfig } from '../../src/config/schema.js';
import type { PublishedDevice } from '../../src/dra/slices.js';
import { buildSlices } from '../../src/dra/slices.js';
import type { DiscoveryRoots } from '../../src/topology/types.js';

const DRIVER = DEFAULT_DRIVER_NAME;
const POOL = SIMULATED_NODE_NAME;
const FREE = 'pci-0036-01-00-0'; // group 9: an NVMe on nvme, nothing in use
const MOUNTED = 'pci-0036-02-00-0'; // group 10: its namespace is mounted
const HELD = 'pci-0036-03-00-0'; // group 11: its namespace is held by dm-0
const NIC = 'pci-0036-04-00-0'; // group 12: a ConnectX-5 PF on mlx5_core, eth0 up
const OPEN = 'pci-0036-05-00-0'; // group 13: its controller's character device is open
const DUAL = 'pci-0036-06-00-0'; // group 14: two NVMe functions in one group
const SLOW = 'pci-0036-08-00-0'; // group 16: a resource with a short binding timeout
const GPU = 'pci-0000-03-00-0'; // group 2: a static resource's GPU on vfio-pci

function nvme(address: string, driver = 'nvme'): FunctionSpec {
  return { address, vendor: '144d', device: 'a808', classCode: '010802', driver, driverOverride: null, numaNode: 8, parent: '0036:00:00.0' };
}

function managedNode(): NodeSpec {
  const base = builtinPowerNode();
  const g = (id: number, functions: FunctionSpec[]): GroupSpec => ({ id, name: `domain54-pe${id.toString(16)}`, functions });
  return {
    ...base,
    groups: [
      ...base.groups,
      g(9, [nvme('0036:01:00.0')]),
      g(10, [nvme('0036:02:00.0')]),
      g(11, [nvme('0036:03:00.0')]),
      g(12, [{ address: '0036:04:00.0', vendor: '15b3', device: '1017', classCode: '020000', driver: 'mlx5_core', driverOverride: null, numaNode: 8, parent: '0036:00:00.0' }]),
      g(13, [nvme('0036:05:00.0')]),
      g(14, [nvme('0036:06:00.0'), nvme('0036:06:00.1')]),
      // An AHCI controller: ahci is not an allowed driver, so the group is not offered.
      g(15, [{ address: '0036:07:00.0', vendor: '1b4b', device: '9230', classCode: '010601', driver: 'ahci', driverOverride: null, numaNode: 8, parent: '0036:00:00.0' }]),
      g(16, [nvme('0036:08:00.0')]),
    ],
  };
}

const resources: ResourceConfig[] = [
  resourceSchema.parse({ name: 'ibm.com/gpu', selectors: { vendors: ['10de'] }, preparation: { mode: 'verify' } }),
  resourceSchema.parse({
    name: 'ibm.com/host-devices',
    selectors: { addresses: ['0036:01:00.0', '0036:02:00.0', '0036:03:00.0', '0036:04:00.0', '0036:05:00.0', '0036:06:00.*', '0036:07:00.0'] },
    preparation: { mode: 'verify' },
    binding: { mode: 'managed', allowedDrivers: ['nvme', 'mlx5_core'], timeoutSeconds: 10 },
  }),
  resourceSchema.parse({
    name: 'ibm.com/slow',
    selectors: { addresses: ['0036:08:00.0'] },
    preparation: { mode: 'none' },
    binding: { mode: 'managed', allowedDrivers: ['nvme'], timeoutSeconds: 0.3 },
  }),
];

let dir: string;
let store: ClaimStore;
let node: DraNode | null;
let published: PublishedDevice[][];
let logLines: { level: string; msg: string; [k: string]: unknown }[];

function logger() {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logLines.push(JSON.parse(line));
      cb();
    },
  });
  return createLogger({ level: 'debug', destination: sink });
}

/** The host's view: mounts, swaps, and a process with the open-device group's controller open. */
async function writeProc(root: string): Promise<void> {
  await mkdir(join(root, 'proc', '1'), { recursive: true });
  await writeFile(join(root, 'proc', '1', 'mountinfo'), '22 1 259:0 / / rw,relatime shared:1 - xfs /dev/sda1 rw\n31 22 259:2 / /var/lib/data rw,relatime shared:9 - xfs /dev/nvme2n1 rw\n');
  await writeFile(join(root, 'proc', 'swaps'), 'Filename\tType\tSize\tUsed\tPriority\n');
  await mkdir(join(root, 'proc', '4242', 'fd'), { recursive: true });
  await writeFile(join(root, 'proc', '4242', 'comm'), 'nvme-cli\n');
  // /dev/null is character device 1:3; group 13's controller claims that number below.
  await symlink('/dev/null', join(root, 'proc', '4242', 'fd', '3'));
}

async function hostDevices(roots: DiscoveryRoots): Promise<void> {
  for (const [address, n] of [['0036:01:00.0', 1], ['0036:02:00.0', 2], ['0036:03:00.0', 3], ['0036:06:00.0', 6], ['0036:06:00.1', 7]] as const) {
    await addHostDevice(roots, address, { kind: 'char', name: `nvme${n}`, dev: `242:${n}`, parent: 'nvme' });
    await addHostDevice(roots, address, { kind: 'block', name: `nvme${n}n1`, dev: `259:${n}`, parent: `nvme/nvme${n}`, ...(n === 3 ? { holders: ['dm-0'] } : {}) });
  }
  await addHostDevice(roots, '0036:05:00.0', { kind: 'char', name: 'nvme5', dev: '1:3', parent: 'nvme' });
  await addHostDevice(roots, '0036:04:00.0', { kind: 'net', name: 'eth0', up: true });
}

async function start(reuse?: DraNode): Promise<DraNode> {
  const procRoot = join(dir, 'host');
  if (!reuse) await writeProc(procRoot);
  node = await startDraNode({
    dir,
    logger: logger(),
    claims: store.source(),
    spec: managedNode(),
    resources,
    procRoot,
    slices: { start: async () => undefined, update: (devices) => void published.push(devices), stop: async () => undefined },
    ...(reuse ? { roots: reuse.roots } : {}),
  });
  if (!reuse) await hostDevices(node.roots);
  return node;
}

function claimOf(name: string, devices: { request: string; device: string }[]) {
  return store.put(allocatedClaim({ name, driver: DRIVER, pool: POOL, devices }));
}

async function driverOf(roots: DiscoveryRoots, address: string): Promise<string | null> {
  try {
    return basename(await readlink(join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', address, 'driver')));
  } catch {
    return null;
  }
}

async function overrideOf(roots: DiscoveryRoots, address: string): Promise<string> {
  return (await readFile(join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', address, 'driver_override'), 'utf8')).trim();
}

const exists = (path: string) => access(path).then(() => true, () => false);
const checkpointOf = (n: DraNode) => JSON.parse(readFileSync(join(n.settings.dra.driverDir, 'checkpoint.json'), 'utf8'));
const lastPublished = (name: string) => published.at(-1)?.find((d) => buildSlices({ driver: DRIVER, nodeName: POOL, platform: null, generation: 1 }, [d])[0]!.spec.devices![0]!.name === name);
const sliceDevice = (d: PublishedDevice) => buildSlices({ driver: DRIVER, nodeName: POOL, platform: null, generation: 1 }, [d])[0]!.spec.devices![0]!;

beforeEach(async () => {
  dir = await mkdtemp('/tmp/pvdp-');
  store = new ClaimStore();
  node = null;
  published = [];
  logLines = [];
});

afterEach(async () => {
  await node?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('managed binding: the pool', () => {
  it('publishes groups on allowed host drivers with the driver that holds them now; not those on other drivers; static devices unchanged', async () => {
    await start();
    const free = lastPublished(FREE)!;
    expect(free).toBeDefined();
    expect(free.device.healthy).toBe(true);
    const attrs = sliceDevice(free).attributes!;
    expect(attrs['binding']).toEqual({ string: 'managed' });
    expect(attrs['currentDrivers']).toEqual({ string: 'nvme' });
    expect(sliceDevice(free).taints).toBeUndefined();
    expect(sliceDevice(lastPublished(NIC)!).attributes!['currentDrivers']).toEqual({ string: 'mlx5_core' });
    // ahci is not allowed: the group is not in the pool at all.
    expect(lastPublished('pci-0036-07-00-0')).toBeUndefined();
    const gpu = sliceDevice(lastPublished(GPU)!);
    expect(gpu.attributes!['binding']).toBeUndefined();
    expect(gpu.attributes!['currentDrivers']).toBeUndefined();
  });
});

describe('managed binding: prepare and unprepare', () => {
  it('takes a group to vfio-pci (override, unbind, probe), records the original drivers first, and gives it back at unprepare', async () => {
    const n = await start();
    const writesBefore: string[] = [];
    // Whatever the first sysfs write of the prepare is, the checkpoint already holds the original driver.
    n.sysfsKernel.failWrite((w) => {
      if (writesBefore.length === 0) {
        const entry = Object.values(checkpointOf(n).claims)[0] as { state: string; bindings: unknown };
        writesBefore.push(JSON.stringify({ state: entry?.state, bindings: entry?.bindings }));
      }
      void w;
      return false;
    });
    const ref = claimOf('free', [{ request: 'disk', device: FREE }]);
    const answer = (await n.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!;
    expect(answer.error).toBe('');
    expect(JSON.parse(writesBefore[0]!)).toEqual({
      state: 'preparing',
      bindings: [{ resource: 'ibm.com/host-devices', group: 9, timeoutMs: 10_000, functions: [{ address: '0036:01:00.0', driver: 'nvme', driverOverride: null, isBridge: false }] }],
    });
    expect(await driverOf(n.roots, '0036:01:00.0')).toBe('vfio-pci');
    expect(await overrideOf(n.roots, '0036:01:00.0')).toBe('vfio-pci');
    expect(await exists(join(n.roots.devRoot, 'dev', 'vfio', '9'))).toBe(true);
    // The verification ran on the group once it was viable.
    expect(n.preparation.describe(9)).toMatch(/sPAPR/);
    const sysfs = join(n.roots.sysfsRoot, 'sys');
    const rel = (p: string) => p.slice(sysfs.length + 1);
    expect(n.sysfsKernel.writes.map((w) => `${rel(w.path)} <- ${w.value.trim()}`)).toEqual([
      'bus/pci/devices/0036:01:00.0/driver_override <- vfio-pci',
      'bus/pci/drivers/nvme/unbind <- 0036:01:00.0',
      'bus/pci/drivers_probe <- 0036:01:00.0',
    ]);
    expect(checkpointOf(n).claims[ref.uid].state).toBe('prepared');
    await n.daemon.refresh();
    expect(sliceDevice(lastPublished(FREE)!).attributes!['currentDrivers']).toEqual({ string: 'vfio-pci' });

    n.sysfsKernel.writes.length = 0;
    expect((await n.kubelet!.unprepare(DRIVER, [ref]))[ref.uid]).toEqual({ error: '' });
    expect(await driverOf(n.roots, '0036:01:00.0')).toBe('nvme');
    expect(await overrideOf(n.roots, '0036:01:00.0')).toBe('(null)');
    expect(await exists(join(n.roots.devRoot, 'dev', 'vfio', '9'))).toBe(false);
    expect(n.sysfsKernel.writes.map((w) => `${rel(w.path)} <- ${w.value.trim()}`)).toEqual([
      'bus/pci/devices/0036:01:00.0/driver_override <- ',
      'bus/pci/drivers/vfio-pci/unbind <- 0036:01:00.0',
      'bus/pci/drivers_probe <- 0036:01:00.0',
    ]);
    expect(checkpointOf(n).claims).toEqual({});
    await n.daemon.refresh();
    expect(sliceDevice(lastPublished(FREE)!).attributes!['currentDrivers']).toEqual({ string: 'nvme' });
    // A repeated unprepare is success and writes nothing.
    n.sysfsKernel.writes.length = 0;
    expect((await n.kubelet!.unprepare(DRIVER, [ref]))[ref.uid]).toEqual({ error: '' });
    expect(n.sysfsKernel.writes).toEqual([]);
  });

  it('refuses, naming what the host uses: a mounted, a held and an open device, an interface that is up; writes nothing', async () => {
    const n = await start();
    const mounted = claimOf('mounted', [{ request: 'disk', device: MOUNTED }]);
    const held = claimOf('held', [{ request: 'disk', device: HELD }]);
    const nic = claimOf('nic', [{ request: 'nic', device: NIC }]);
    const open = claimOf('open', [{ request: 'disk', device: OPEN }]);
    const ahci = claimOf('ahci', [{ request: 'disk', device: 'pci-0036-07-00-0' }]);
    const answer = await n.kubelet!.prepare(DRIVER, [mounted, held, nic, open, ahci]);
    expect(answer[mounted.uid]!.error).toMatch(/default\/mounted .*device pci-0036-02-00-0 \(IOMMU group 10\) cannot be taken from the host: block device nvme2n1 of function 0036:02:00\.0 is mounted at \/var\/lib\/data/);
    expect(answer[held.uid]!.error).toMatch(/IOMMU group 11\) cannot be taken from the host: block device nvme3n1 of function 0036:03:00\.0 is held by dm-0/);
    expect(answer[nic.uid]!.error).toMatch(/IOMMU group 12\) cannot be taken from the host: network interface eth0 of function 0036:04:00\.0 is up/);
    expect(answer[open.uid]!.error).toMatch(/IOMMU group 13\) cannot be taken from the host: character device nvme5 \(1:3\) of function 0036:05:00\.0 is open by process 4242 \(nvme-cli\)/);
    expect(answer[ahci.uid]!.error).toMatch(/pci-0036-07-00-0 .*is not a device of this node's pool/);
    expect(n.sysfsKernel.writes).toEqual([]);
    for (const a of ['0036:02:00.0', '0036:03:00.0', '0036:05:00.0']) expect(await driverOf(n.roots, a)).toBe('nvme');
    expect(await driverOf(n.roots, '0036:04:00.0')).toBe('mlx5_core');
    expect(checkpointOf(n).claims).toEqual({});
    // The interface goes down: now the NIC can be taken.
    await writeFile(join(n.roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', '0036:04:00.0', 'net', 'eth0', 'flags'), '0x1002\n');
    expect((await n.kubelet!.prepare(DRIVER, [nic]))[nic.uid]!.error).toBe('');
    expect(await driverOf(n.roots, '0036:04:00.0')).toBe('vfio-pci');
    expect((await n.kubelet!.unprepare(DRIVER, [nic]))[nic.uid]).toEqual({ error: '' });
    expect(await driverOf(n.roots, '0036:04:00.0')).toBe('mlx5_core');
  });

  it('rolls every function back when a write fails half-way, and reports the group as tainted while the failure stands', async () => {
    const n = await start();
    // The second function's unbind fails after the first function already moved.
    n.sysfsKernel.failWrite((w) => w.path.endsWith('/drivers/nvme/unbind') && w.value === '0036:06:00.1', 'EBUSY');
    const ref = claimOf('dual', [{ request: 'disk', device: DUAL }]);
    const answer = (await n.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!;
    expect(answer.error).toMatch(/cannot unbind 0036:06:00\.1 from nvme \(write to .*drivers\/nvme\/unbind: EBUSY/);
    expect(answer.error).toMatch(/every function was given back/);
    expect(await driverOf(n.roots, '0036:06:00.0')).toBe('nvme');
    expect(await driverOf(n.roots, '0036:06:00.1')).toBe('nvme');
    expect(await overrideOf(n.roots, '0036:06:00.0')).toBe('(null)');
    expect(await overrideOf(n.roots, '0036:06:00.1')).toBe('(null)');
    expect(await exists(join(n.roots.devRoot, 'dev', 'vfio', '14'))).toBe(false);
    expect(checkpointOf(n).claims).toEqual({});
    expect(await readdirOrEmpty(n.settings.dra.cdiSpecDir)).toEqual([]);
    // The failed move is a taint on the device until a move of the group succeeds.
    expect(sliceDevice(lastPublished(DUAL)!).taints).toEqual([{ key: `${DRIVER}/binding`, value: 'RebindFailed', effect: 'NoSchedule' }]);
    expect(logLines.some((l) => l.msg === 'Moving an IOMMU group between drivers failed' && l['group'] === 14)).toBe(true);
    // The kubelet retries: the write works now.
    expect((await n.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
    expect(await driverOf(n.roots, '0036:06:00.1')).toBe('vfio-pci');
    expect(sliceDevice(lastPublished(DUAL)!).taints).toBeUndefined();
    expect((await n.kubelet!.unprepare(DRIVER, [ref]))[ref.uid]).toEqual({ error: '' });
    expect(await driverOf(n.roots, '0036:06:00.0')).toBe('nvme');
  });

  it('gives up after the binding timeout when vfio-pci never binds, and gives the function back', async () => {
    const n = await start();
    n.sysfsKernel.absentDriver('vfio-pci');
    const ref = claimOf('slow', [{ request: 'disk', device: SLOW }]);
    const answer = (await n.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!;
    expect(answer.error).toMatch(/timed out after 300 ms waiting for IOMMU group 16 to be bound to vfio-pci: 0036:08:00\.0 is on no driver, .*dev\/vfio\/16 does not exist; every function was given back/);
    expect(await driverOf(n.roots, '0036:08:00.0')).toBe('nvme');
    expect(await overrideOf(n.roots, '0036:08:00.0')).toBe('(null)');
    expect(checkpointOf(n).claims).toEqual({});
  });

  it('marks a group in transition: the device is tainted Rebinding while it moves and a second claim for it is refused', async () => {
    const n = await start();
    const seen: string[] = [];
    const other = claimOf('other', [{ request: 'disk', device: FREE }]);
    let otherAnswer: string | undefined;
    // Mid-move (before the probe binds vfio-pci): what the pool says, and a second claim for the group.
    n.sysfsKernel.observe(async (w) => {
      if (!w.path.endsWith('drivers_probe') || otherAnswer !== undefined) return;
      const d = published.at(-1)?.find((p) => p.device.group.id === 9);
      seen.push(JSON.stringify(d ? (sliceDevice(d).taints ?? []) : 'not published'));
      seen.push(String(n.daemon.dra!.claims.rebinding().moving.get(9)));
      otherAnswer = (await n.kubelet!.prepare(DRIVER, [other]))[other.uid]!.error;
    });
    const ref = claimOf('moving', [{ request: 'disk', device: FREE }]);
    expect((await n.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
    n.sysfsKernel.observe(null);
    expect(seen).toEqual([JSON.stringify([{ key: `${DRIVER}/binding`, value: 'Rebinding', effect: 'NoSchedule' }]), 'taking']);
    expect(otherAnswer).toMatch(/default\/other .*device pci-0036-01-00-0 \(IOMMU group 9\) is moving between drivers for another claim; the kubelet will retry/);
    expect(sliceDevice(lastPublished(FREE)!).taints).toBeUndefined();
    expect((await n.kubelet!.unprepare(DRIVER, [ref]))[ref.uid]).toEqual({ error: '' });
  });
});

describe('managed binding: restarts', () => {
  it('a restarted driver gives back a group an earlier process took, and finishes an unprepare it could not', async () => {
    const first = await start();
    const ref = claimOf('kept', [{ request: 'disk', device: FREE }]);
    expect((await first.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
    await first.stop();
    node = null;
    expect(await driverOf(first.roots, '0036:01:00.0')).toBe('vfio-pci');

    const second = await start(first);
    expect(checkpointOf(second).claims[ref.uid].bindings[0].functions[0].driver).toBe('nvme');
    // Giving back fails once: the claim is released but the group stays on vfio-pci, recorded as such.
    second.sysfsKernel.failWrite((w) => w.path.endsWith('/drivers/vfio-pci/unbind'), 'EIO');
    const un = (await second.kubelet!.unprepare(DRIVER, [ref]))[ref.uid]!;
    expect(un.error).toMatch(/cannot give IOMMU group 9 back to its host drivers: cannot unbind 0036:01:00\.0 from vfio-pci .*EIO/);
    expect(checkpointOf(second).claims[ref.uid].state).toBe('unpreparing');
    expect(await readdirOrEmpty(second.settings.dra.cdiSpecDir)).toEqual([]);
    expect(await driverOf(second.roots, '0036:01:00.0')).toBe('vfio-pci');
    expect(sliceDevice(lastPublished(FREE)!).taints).toEqual([{ key: `${DRIVER}/binding`, value: 'RebindFailed', effect: 'NoSchedule' }]);
    // Another claim for the group waits: the retry of the first would take the group from under it.
    const next = claimOf('next', [{ request: 'disk', device: FREE }]);
    expect((await second.kubelet!.prepare(DRIVER, [next]))[next.uid]!.error).toMatch(/IOMMU group 9\) still belongs to ResourceClaim default\/kept \(unpreparing\)/);
    await second.stop();
    node = null;

    // The next process finishes the unprepare at start.
    const third = await start(first);
    expect(checkpointOf(third).claims).toEqual({});
    expect(await driverOf(third.roots, '0036:01:00.0')).toBe('nvme');
    expect(await overrideOf(third.roots, '0036:01:00.0')).toBe('(null)');
    expect(logLines.some((l) => l.msg === 'Finishing an unprepare that an earlier run did not finish')).toBe(true);
    expect((await third.kubelet!.unprepare(DRIVER, [ref]))[ref.uid]).toEqual({ error: '' });
  });

  it('undoes, at start, a prepare an earlier process left half done (the group taken, no answer given)', async () => {
    const first = await start();
    const ref = claimOf('interrupted', [{ request: 'disk', device: DUAL }]);
    expect((await first.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
    await first.stop();
    node = null;
    const path = join(first.settings.dra.driverDir, 'checkpoint.json');
    const data = JSON.parse(await readFile(path, 'utf8'));
    data.claims[ref.uid].state = 'preparing';
    await writeFile(path, JSON.stringify(data));
    // As if the process died between the two functions: only the first had moved.
    await writeFile(join(first.roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', '0036:06:00.1', 'driver_override'), '(null)\n');
    const { bindDriver } = await import('../../src/simulate/sysfs-tree.js');
    await bindDriver(first.roots, '0036:06:00.1', 'nvme');
    const second = await start(first);
    expect(checkpointOf(second).claims).toEqual({});
    expect(await driverOf(second.roots, '0036:06:00.0')).toBe('nvme');
    expect(await driverOf(second.roots, '0036:06:00.1')).toBe('nvme');
    expect(await exists(join(second.roots.devRoot, 'dev', 'vfio', '14'))).toBe(false);
    expect(logLines.some((l) => l.msg === 'Undoing a prepare that an earlier run did not finish')).toBe(true);
  });
});

async function readdirOrEmpty(path: string): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  return readdir(path).catch(() => []);
}
