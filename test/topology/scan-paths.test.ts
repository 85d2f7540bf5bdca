// One topology whichever way it is read: identity from uevent or from the
// attribute files, requests through libuv's pool or through the reader
// thread. Odd trees included, since that is where the ways could part.
import { describe, it, expect, afterEach } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { discoverGroup, discoverTopology } from '../../src/topology/discover.js';
import { parsePciUevent } from '../../src/topology/parse.js';
import { listedNames, poolReader, type SysfsRequest } from '../../src/topology/sysfs-read.js';
import { WorkerReader } from '../../src/topology/sysfs-worker.js';
import { builtinPowerNode } from '../../src/simulate/power-node.js';
import { bindDriver, setAttribute } from '../../src/simulate/sysfs-tree.js';
import type { DiscoveryRoots, IommuGroup, Topology } from '../../src/topology/types.js';
import { groupHealth } from '../../src/health/group-health.js';
import {
  buildTree,
  eehNode,
  hostDriverNode,
  malformedTree,
  multiFunctionNode,
  nvme,
  pnvGroup,
  pseriesNode,
  sharedPhbNode,
  sriovNode,
  type TestTree,
  type TmpDir,
} from '../helpers/fixtures.js';

const trees: TmpDir[] = [];
afterEach(async () => {
  await Promise.all(trees.splice(0).map((t) => t.cleanup()));
});

async function tree(spec: Parameters<typeof buildTree>[0]): Promise<TestTree> {
  const t = await buildTree(spec);
  trees.push(t);
  return t;
}

const devicesDir = (t: TestTree): string => join(t.dir, 'sys', 'devices');

/** Every `uevent` file of the tree's devices, found by walking sys/devices. */
async function ueventFiles(t: TestTree): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (e.isDirectory() && !e.isSymbolicLink()) await walk(join(dir, e.name));
      else if (e.name === 'uevent' && e.isFile()) found.push(join(dir, e.name));
    }
  };
  await walk(devicesDir(t));
  return found;
}

async function scanBothWays(roots: DiscoveryRoots): Promise<[Topology, Topology]> {
  return [await discoverTopology(roots, { worker: false }), await discoverTopology(roots, { worker: true })];
}

/** Builds the odd trees the doubt checks are about, next to good groups. */
async function oddTree(): Promise<TestTree> {
  const t = await tree({
    groups: [
      pnvGroup(0, 0x1, [nvme('0030:01:00.0')]),
      pnvGroup(1, 0x2, [nvme('0030:02:00.0')]),
      pnvGroup(2, 0x3, [nvme('0030:03:00.0')]),
      pnvGroup(3, 0x4, [nvme('0030:04:00.0')]),
      pnvGroup(4, 0x5, [nvme('0030:05:00.0')]),
      pnvGroup(5, 0x6, [nvme('0030:06:00.0'), nvme('0030:06:00.1')]),
      pnvGroup(6, 0x7, [nvme('0030:07:00.0')]),
    ],
  });
  const groupLink = (id: number, a: string): string => join(t.dir, 'sys/kernel/iommu_groups', String(id), 'devices', a);
  const dev = (a: string): string => join(devicesDir(t), `pci${a.slice(0, 7)}`, a);
  // A group link that dangles while the bus link reads fine.
  await rm(groupLink(0, '0030:01:00.0'));
  await symlink('../../../../devices/pci0030:01/gone/0030:01:00.0', groupLink(0, '0030:01:00.0'));
  // The bus link gone: the function is read through the group link.
  await rm(join(t.dir, 'sys/bus/pci/devices/0030:02:00.0'));
  // Members that cannot be listed.
  await rm(join(t.dir, 'sys/kernel/iommu_groups/2/devices'), { recursive: true });
  await writeFile(join(t.dir, 'sys/kernel/iommu_groups/2/devices'), 'not a directory\n');
  // Group 3: a driver attribute that is not a link.
  await rm(join(dev('0030:04:00.0'), 'driver'));
  await mkdir(join(dev('0030:04:00.0'), 'driver'));
  // An EEH state that exists but cannot be read as one.
  await writeFile(join(dev('0030:05:00.0'), 'eeh_pe_state'), 'banana\n');
  // A FIFO where the identity is read, and an AER file that is a directory.
  await rm(join(dev('0030:06:00.0'), 'uevent'));
  execFileSync('mkfifo', [join(dev('0030:06:00.0'), 'uevent')]);
  await mkdir(join(dev('0030:06:00.1'), 'aer_dev_fatal'));
  // A physfn link that names no PCI function.
  await symlink('../nowhere', join(dev('0030:07:00.0'), 'physfn'));
  return t;
}

const specs = {
  builtin: builtinPowerNode,
  sharedPhb: sharedPhbNode,
  multiFunction: multiFunctionNode,
  hostDriver: hostDriverNode,
  sriov: sriovNode,
  eeh: eehNode,
  pseries: pseriesNode,
};

describe('the same topology from uevent and from the attribute files, through the pool and the reader thread', () => {
  it.each(Object.entries(specs))('%s node', async (_name, spec) => {
    const t = await tree(spec());
    const withUevent = await scanBothWays(t.roots);
    expect(withUevent[1]).toEqual(withUevent[0]);
    const files = await ueventFiles(t);
    expect(files.length).toBeGreaterThan(0);
    await Promise.all(files.map((f) => rm(f)));
    const withoutUevent = await scanBothWays(t.roots);
    expect(withoutUevent[0]).toEqual(withUevent[0]);
    expect(withoutUevent[1]).toEqual(withUevent[0]);
  });

  it('a malformed tree', async () => {
    const t = await malformedTree();
    trees.push(t);
    const [pool, thread] = await scanBothWays(t.roots);
    expect(thread).toEqual(pool);
    await Promise.all((await ueventFiles(t)).map((f) => rm(f)));
    const [poolAttrs, threadAttrs] = await scanBothWays(t.roots);
    expect(poolAttrs).toEqual(pool);
    expect(threadAttrs).toEqual(pool);
  });

  it('odd trees: dangling links, unlistable members, FIFOs, directories where files belong', async () => {
    const t = await oddTree();
    const [pool, thread] = await scanBothWays(t.roots);
    expect(thread).toEqual(pool);
    // The doubt checks still bite.
    expect([0, 2, 3].map((id) => pool.groups.get(id)?.usable)).toEqual([false, false, false]);
    expect([0, 2, 3, 4].map((id) => groupHealth(pool.groups.get(id) as IommuGroup).healthy)).toEqual([false, false, false, false]);
    expect(pool.groups.get(4)?.eeh?.stateUnknown).toContain('banana');
    expect(pool.groups.get(1)).toMatchObject({ usable: true, functions: [{ address: '0030:02:00.0', vendor: '144d' }] });
    // The FIFO in place of uevent: the identity came from the attribute files.
    expect(pool.groups.get(5)?.functions.map((f) => f.vendor)).toEqual(['144d', '144d']);
    expect(pool.issues).toContainEqual(expect.objectContaining({ group: 6, message: expect.stringContaining('does not name a PCI function') }));
    await Promise.all((await ueventFiles(t)).map((f) => rm(f)));
    const [poolAttrs, threadAttrs] = await scanBothWays(t.roots);
    expect(poolAttrs).toEqual(pool);
    expect(threadAttrs).toEqual(pool);
  });

  it('many groups: the reader thread and the pool agree group for group', async () => {
    const groups = Array.from({ length: 150 }, (_, i) =>
      pnvGroup(i, i + 1, [nvme(`0031:${(i + 1).toString(16).padStart(2, '0')}:00.0`), nvme(`0031:${(i + 1).toString(16).padStart(2, '0')}:00.1`, { driver: i % 7 === 0 ? 'nvme' : 'vfio-pci' })]),
    );
    const t = await tree({ groups });
    const [pool, thread] = await scanBothWays(t.roots);
    expect(pool.groups.size).toBe(150);
    expect(thread).toEqual(pool);
    // The default for this many groups is the reader thread; the answer is the same.
    expect(await discoverTopology(t.roots)).toEqual(pool);
  });
});

describe('uevent and the attribute files disagreeing', () => {
  const at = (t: TestTree, file: string): string => join(devicesDir(t), 'pci0030:01', '0030:01:00.0', file);

  it('a complete uevent wins for the ids; the driver always comes from the link', async () => {
    const t = await tree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    // Planted behind the builder's back: the attribute files say otherwise.
    await writeFile(at(t, 'vendor'), '0x1014\n');
    await writeFile(at(t, 'subsystem_device'), '0x0001\n');
    // A stale DRIVER line, as a fixture that swaps the link would leave it.
    await rm(at(t, 'driver'));
    await symlink('../../../bus/pci/drivers/nvme', at(t, 'driver'));
    const { group } = await discoverGroup(t.roots, 0);
    expect(group?.functions[0]).toMatchObject({ vendor: '144d', subsystemDevice: 'a801', driver: 'nvme' });
    expect(await readFile(at(t, 'uevent'), 'utf8')).toContain('DRIVER=vfio-pci');
  });

  it.each([
    ['missing', null],
    ['for another slot', 'PCI_CLASS=10802\nPCI_ID=144D:A808\nPCI_SUBSYS_ID=144D:A801\nPCI_SLOT_NAME=0030:09:00.0\n'],
    ['without the subsystem ids', 'PCI_CLASS=10802\nPCI_ID=144D:A808\nPCI_SLOT_NAME=0030:01:00.0\n'],
    ['with an id twice', 'PCI_CLASS=10802\nPCI_ID=144D:A808\nPCI_ID=144D:A809\nPCI_SUBSYS_ID=144D:A801\nPCI_SLOT_NAME=0030:01:00.0\n'],
    ['garbled', 'PCI_CLASS=zz\nPCI_ID=144D:A808\nPCI_SUBSYS_ID=144D:A801\nPCI_SLOT_NAME=0030:01:00.0\n'],
    ['empty', ''],
  ])('a uevent %s leaves the attribute files in charge', async (_what, content) => {
    const t = await tree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    if (content === null) await rm(at(t, 'uevent'));
    else await writeFile(at(t, 'uevent'), content);
    await writeFile(at(t, 'vendor'), '0x1014\n');
    await writeFile(at(t, 'class'), '0x010803\n');
    for (const worker of [false, true]) {
      const topo = await discoverTopology(t.roots, { worker });
      expect(topo.groups.get(0)?.functions[0]).toMatchObject({ vendor: '1014', classCode: '010803', subsystemDevice: 'a801' });
    }
  });

  it('setAttribute on an identity attribute drops the uevent, so the planted value is read', async () => {
    const t = await tree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    await setAttribute(t.roots, '0030:01:00.0', 'numa_node', '0\n');
    await expect(readFile(at(t, 'uevent'), 'utf8')).resolves.toContain('PCI_ID=144D:A808');
    await setAttribute(t.roots, '0030:01:00.0', 'device', '0xa809\n');
    await expect(readFile(at(t, 'uevent'), 'utf8')).rejects.toMatchObject({ code: 'ENOENT' });
    const { group } = await discoverGroup(t.roots, 0);
    expect(group?.functions[0]?.device).toBe('a809');
  });
});

describe('the uevent file the tree builder writes', () => {
  it('is what the kernel prints: DRIVER while bound, the PCI keys, the modalias', async () => {
    const t = await tree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    const path = join(devicesDir(t), 'pci0030:01', '0030:01:00.0', 'uevent');
    expect(await readFile(path, 'utf8')).toBe(
      [
        'DRIVER=vfio-pci',
        'PCI_CLASS=10802',
        'PCI_ID=144D:A808',
        'PCI_SUBSYS_ID=144D:A801',
        'PCI_SLOT_NAME=0030:01:00.0',
        'MODALIAS=pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02',
        '',
      ].join('\n'),
    );
    await bindDriver(t.roots, '0030:01:00.0', null);
    expect(await readFile(path, 'utf8')).not.toContain('DRIVER=');
    await bindDriver(t.roots, '0030:01:00.0', 'nvme');
    expect((await readFile(path, 'utf8')).split('\n')[0]).toBe('DRIVER=nvme');
    expect(parsePciUevent(await readFile(path, 'utf8'), '0030:01:00.0')).toEqual({
      vendor: '144d',
      device: 'a808',
      classCode: '010802',
      subsystemVendor: '144d',
      subsystemDevice: 'a801',
    });
  });
});

describe('parsePciUevent', () => {
  const kernel = 'DRIVER=vfio-pci\nOF_NAME=pci\nOF_FULLNAME=/pciex@600c3c0300000/pci@0\nOF_COMPATIBLE_N=0\nPCI_CLASS=60400\nPCI_ID=1014:04C1\nPCI_SUBSYS_ID=0000:0000\nPCI_SLOT_NAME=0030:00:00.0\nMODALIAS=pci:v00001014d000004C1sv00000000sd00000000bc06sc04i00\n';

  it('reads the ids among the other keys, lower case, the class to six digits', () => {
    expect(parsePciUevent(kernel, '0030:00:00.0')).toEqual({ vendor: '1014', device: '04c1', classCode: '060400', subsystemVendor: '0000', subsystemDevice: '0000' });
    // %04X of a class with a zero base class: four digits.
    expect(parsePciUevent(kernel.replace('PCI_CLASS=60400', 'PCI_CLASS=0100'), '0030:00:00.0')?.classCode).toBe('000100');
    expect(parsePciUevent(kernel, '0030:00:00.0'.toUpperCase())).not.toBeNull();
    expect(parsePciUevent(kernel.trimEnd(), '0030:00:00.0')).not.toBeNull();
  });

  it.each([
    ['another slot', kernel.replace('PCI_SLOT_NAME=0030:00:00.0', 'PCI_SLOT_NAME=0030:00:00.1')],
    ['no PCI_ID', kernel.replace(/PCI_ID=.*\n/, '')],
    ['no PCI_CLASS', kernel.replace(/PCI_CLASS=.*\n/, '')],
    ['a short id', kernel.replace('PCI_ID=1014:04C1', 'PCI_ID=1014:4C1')],
    ['a wide class', kernel.replace('PCI_CLASS=60400', 'PCI_CLASS=1060400')],
    ['a short class', kernel.replace('PCI_CLASS=60400', 'PCI_CLASS=400')],
    ['a key twice', `${kernel}PCI_CLASS=60400\n`],
    ['a value with a trailing blank', kernel.replace('PCI_ID=1014:04C1', 'PCI_ID=1014:04C1 ')],
  ])('is null for %s', (_what, text) => {
    expect(parsePciUevent(text, '0030:00:00.0')).toBeNull();
  });
});

describe('the reader thread answers as the pool does', () => {
  it('files, links, directories, missing entries, a FIFO, a directory read as a file', async () => {
    const t = await tree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    const fn = join(t.dir, 'sys/bus/pci/devices/0030:01:00.0');
    execFileSync('mkfifo', [join(t.dir, 'fifo')]);
    const requests: SysfsRequest[] = [
      { kind: 'read', dir: fn, name: 'vendor' },
      { kind: 'read', dir: fn, name: 'absent' },
      { kind: 'read', dir: fn, name: 'absent', oftenAbsent: true },
      { kind: 'read', dir: fn, name: 'numa_node', oftenAbsent: true },
      { kind: 'read', dir: t.dir, name: 'sys' },
      { kind: 'read', dir: t.dir, name: 'fifo' },
      { kind: 'link', dir: fn, name: 'driver' },
      { kind: 'link', dir: fn, name: 'driver', oftenAbsent: true },
      { kind: 'link', dir: fn, name: 'physfn', oftenAbsent: true },
      { kind: 'link', dir: fn, name: 'vendor' },
      { kind: 'link', dir: fn, name: '' },
      { kind: 'stat', dir: fn, name: '' },
      { kind: 'stat', dir: fn, name: 'absent' },
      { kind: 'list', dir: join(t.dir, 'sys/kernel/iommu_groups/0'), name: 'devices' },
      { kind: 'list', dir: fn, name: 'vendor' },
    ];
    const viaPool = await poolReader.gather(requests);
    const reader = new WorkerReader();
    try {
      const viaThread = await reader.gather(requests);
      expect(viaThread).toEqual(viaPool);
      expect(reader.stats()).toMatchObject({ batches: 1, requests: requests.length });
    } finally {
      reader.close();
    }
    expect(viaPool[0]).toEqual({ ok: true, text: '0x144d\n' });
    expect(viaPool[2]).toEqual({ ok: false, code: 'ENOENT' });
    expect(viaPool[4]).toEqual({ ok: false, code: 'EISDIR' });
    expect(viaPool[5]).toEqual({ ok: false, code: 'ESPIPE' });
    expect(listedNames((viaPool[13] as { text: string }).text)).toEqual(['0030:01:00.0']);
  });

  it('closing with a reason rejects what is unanswered; closing without one hands it to the pool', async () => {
    const t = await tree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    const request: SysfsRequest = { kind: 'read', dir: join(t.dir, 'sys/bus/pci/devices/0030:01:00.0'), name: 'numa_node' };
    const aborted = new WorkerReader();
    const pending = aborted.gather([request]);
    aborted.close(new Error('stopping'));
    await expect(pending).rejects.toThrow('stopping');
    await expect(aborted.gather([request])).rejects.toThrow('stopping');
    const handedOver = new WorkerReader();
    const waiting = handedOver.gather([request]);
    handedOver.close();
    await expect(waiting).resolves.toEqual([{ ok: true, text: '0\n' }]);
    await expect(handedOver.gather([request])).resolves.toEqual([{ ok: true, text: '0\n' }]);
  });

  it('an aborted full scan rejects with the signal\'s reason', async () => {
    const t = await tree({ groups: Array.from({ length: 8 }, (_, i) => pnvGroup(i, i + 1, [nvme(`0032:${(i + 1).toString(16).padStart(2, '0')}:00.0`)])) });
    const controller = new AbortController();
    const scan = discoverTopology(t.roots, { worker: true, signal: controller.signal });
    controller.abort(new Error('shutting down'));
    await expect(scan).rejects.toThrow('shutting down');
  });
});
