import { describe, it, expect, afterEach } from 'vitest';
import { readlink, rm, writeFile, mkdir, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { discoverGroup, discoverTopology, diffTopologies } from '../../src/topology/discover.js';
import { builtinPowerNode } from '../../src/simulate/power-node.js';
import { addGroup, bindDriver, removeGroup, setAttribute, setEehState } from '../../src/simulate/sysfs-tree.js';
import type { IommuGroup, Topology } from '../../src/topology/types.js';
import {
  buildTree,
  eehNode,
  hostDriverNode,
  makeTmpDir,
  malformedTree,
  multiFunctionNode,
  nvme,
  pnvGroup,
  pseriesNode,
  sharedPhbNode,
  sriovNode,
  type TmpDir,
} from '../helpers/fixtures.js';

const trees: TmpDir[] = [];
afterEach(async () => {
  await Promise.all(trees.splice(0).map((t) => t.cleanup()));
});

async function scan(spec: Parameters<typeof buildTree>[0]): Promise<{ topo: Topology; roots: { sysfsRoot: string; devRoot: string } }> {
  const tree = await buildTree(spec);
  trees.push(tree);
  return { topo: await discoverTopology(tree.roots), roots: tree.roots };
}

function group(topo: Topology, id: number): IommuGroup {
  const g = topo.groups.get(id);
  if (g === undefined) throw new Error(`Group ${id} missing`);
  return g;
}

describe('builtin POWER9 node', () => {
  it('reports every group with names, PHBs, PEs, NUMA and EEH', async () => {
    const { topo } = await scan(builtinPowerNode());
    expect([...topo.groups.keys()]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(topo.containerNode).toBe(true);
    expect(topo.issues).toEqual([]);
    const gpu0 = group(topo, 2);
    const gpu1 = group(topo, 5);
    expect(gpu0.functions[0]).toMatchObject({ vendor: '10de', device: '1db1', classCode: '030200', driver: 'vfio-pci', isBridge: false });
    expect(gpu0.numaNodes).toEqual([0]);
    expect(gpu1.numaNodes).toEqual([8]);
    const cx5 = group(topo, 3);
    expect(cx5.name).toBe('domain48-pe1fd');
    expect(cx5.phb).toBe(48);
    expect(cx5.pe).toBe(0x1fd);
    expect(cx5.functions.map((f) => f.address)).toEqual(['0030:01:00.0', '0030:01:00.1']);
    expect(cx5.eeh).toEqual({ hardwareState: 0x78, softwareState: 0x800, configAddr: 0x1fd, mode: 1, frozen: false, source: '0030:01:00.0' });
    expect(group(topo, 7).functions[0]?.physfn).toBe('0030:01:00.0');
    expect(group(topo, 6).functions[0]).toMatchObject({ vendor: '10ee', classCode: '120000' });
    const host = group(topo, 0);
    expect(host.usable).toBe(false);
    expect(host.vfioCandidate).toBe(false);
    expect(host.problems).toContain('Function 0000:01:00.0 is bound to host driver nvme; bind it to vfio-pci');
    expect([...topo.groups.values()].filter((g) => g.usable).map((g) => g.id)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('lays links out as the kernel does: relative, pointing back and forth', async () => {
    const tree = await buildTree(builtinPowerNode());
    trees.push(tree);
    const sys = join(tree.dir, 'sys');
    expect(await readlink(join(sys, 'bus/pci/devices/0030:01:00.0'))).toBe('../../../devices/pci0030:00/0030:00:00.0/0030:01:00.0');
    expect(await readlink(join(sys, 'kernel/iommu_groups/3/devices/0030:01:00.0'))).toBe(
      '../../../../devices/pci0030:00/0030:00:00.0/0030:01:00.0',
    );
    const dev = await realpath(join(sys, 'bus/pci/devices/0030:01:00.0'));
    expect(await readlink(join(dev, 'iommu_group'))).toBe('../../../../kernel/iommu_groups/3');
    expect(await readlink(join(dev, 'driver'))).toBe('../../../../bus/pci/drivers/vfio-pci');
    expect(await realpath(join(sys, 'bus/pci/drivers/vfio-pci/0030:01:00.0'))).toBe(dev);
    expect(await readlink(join(sys, 'bus/pci/devices/0030:01:00.2/physfn'))).toBe('../0030:01:00.0');
    // Root ports have no IOMMU group on bare metal.
    const topo = await discoverTopology(tree.roots);
    expect([...topo.groups.values()].flatMap((g) => g.functions.map((f) => f.address))).not.toContain('0030:00:00.0');
  });
});

describe('usability rules', () => {
  it('groups on one PHB share it; the PHB comes from the decimal name', async () => {
    const { topo } = await scan(sharedPhbNode());
    expect([0, 1, 2].map((id) => group(topo, id).phb)).toEqual([53, 53, 53]);
    expect(group(topo, 3).phb).toBe(48);
    expect([...topo.groups.values()].every((g) => g.usable)).toBe(true);
  });

  it('multi-function groups list every function; bridges may stay on pcieport', async () => {
    const { topo } = await scan(multiFunctionNode());
    expect(group(topo, 0).functions).toHaveLength(2);
    expect(group(topo, 0).usable).toBe(true);
    const withBridge = group(topo, 1);
    expect(withBridge.functions.map((f) => [f.address, f.isBridge, f.driver])).toEqual([
      ['0030:02:00.0', true, 'pcieport'],
      ['0030:03:00.0', false, 'vfio-pci'],
    ]);
    expect(withBridge.usable).toBe(true);
    // A function behind a bridge nests under the bridge's directory.
    const tree = trees[trees.length - 1] as TmpDir;
    expect(await readlink(join(tree.dir, 'sys/bus/pci/devices/0030:03:00.0'))).toBe(
      '../../../devices/pci0030:02/0030:02:00.0/0030:03:00.0',
    );
    const badBridge = group(topo, 2);
    expect(badBridge.usable).toBe(false);
    expect(badBridge.problems).toEqual([expect.stringContaining('Bridge 0030:04:00.0 is bound to driver shpchp')]);
    const stub = group(topo, 3);
    expect(stub.usable).toBe(true);
    expect(stub.vfioCandidate).toBe(true);
  });

  it('a node in /dev/vfio does not make a group with a host-bound member usable', async () => {
    const { topo } = await scan(hostDriverNode());
    const mixed = group(topo, 0);
    expect(mixed.devNode).toBe(true);
    expect(mixed.vfioCandidate).toBe(true);
    expect(mixed.usable).toBe(false);
    expect(mixed.problems).toEqual(['Function 0033:01:00.1 is bound to host driver nvme; bind it to vfio-pci']);
    const host = group(topo, 1);
    expect(host.devNode).toBe(false);
    expect(host.vfioCandidate).toBe(false);
    expect(host.problems).toHaveLength(2);
    expect(host.problems[1]).toMatch(/Device node .*\/dev\/vfio\/1 does not exist/);
    expect(group(topo, 2).usable).toBe(true);
  });

  it('reports SR-IOV VFs with their physfn and accepts vfio variant drivers', async () => {
    const { topo } = await scan(sriovNode());
    expect(group(topo, 0).usable).toBe(false);
    expect(group(topo, 0).functions[0]?.physfn).toBeNull();
    const vf = group(topo, 10).functions[0];
    expect(vf).toMatchObject({ physfn: '0030:01:00.0', device: '1018', driverOverride: 'vfio-pci' });
    expect(group(topo, 10).usable).toBe(true);
    expect(group(topo, 11).functions[0]?.driver).toBe('mlx5_vfio_pci');
    expect(group(topo, 11).usable).toBe(true);
  });

  it('pseries: names without a PE, no EEH, NUMA -1, an empty PHB group, no name file', async () => {
    const { topo } = await scan(pseriesNode());
    const g0 = group(topo, 0);
    expect(g0).toMatchObject({ name: 'domain0-pe0', phb: 0, pe: 0, eeh: null, numaNodes: [], usable: true });
    expect(g0.functions[0]?.numaNode).toBe(-1);
    const empty = group(topo, 2);
    expect(empty.functions).toEqual([]);
    expect(empty.usable).toBe(false);
    expect(empty.problems[0]).toBe('Group 2 has no PCI functions');
    // Without a name the PHB comes from the address, which is hex.
    const noName = group(topo, 3);
    expect(noName).toMatchObject({ name: null, phb: 0x206, pe: null });
    expect(topo.issues).toEqual([]);
  });
});

describe('EEH', () => {
  it('decodes every spelling and never crashes on garbage', async () => {
    const { topo } = await scan(eehNode());
    const eeh = (id: number) => group(topo, id).eeh;
    expect(eeh(0)).toMatchObject({ hardwareState: 0x78, softwareState: 0x800, configAddr: 0x1fd, mode: 1, frozen: false });
    expect(eeh(1)).toMatchObject({ hardwareState: 0x18, softwareState: 0xa00, configAddr: 0xa00000, frozen: false });
    expect(eeh(2)).toMatchObject({ hardwareState: 0x78, softwareState: 0x800, frozen: false });
    expect(eeh(3)?.frozen).toBe(true);
    expect(eeh(4)?.frozen).toBe(true);
    expect(eeh(5)).toMatchObject({ hardwareState: null, softwareState: null, frozen: false });
    expect(topo.issues.filter((i) => i.group === 5)).toEqual([
      expect.objectContaining({ path: expect.stringContaining('eeh_pe_state'), message: expect.stringContaining('banana') }),
    ]);
    expect(eeh(6)).toMatchObject({ hardwareState: 0x78, softwareState: null, frozen: false });
    // EEH is for health to judge, not for usability.
    expect(group(topo, 3).usable).toBe(true);
  });

  it('keeps what it can read when some EEH files are missing', async () => {
    const tree = await buildTree({ groups: [pnvGroup(0, 0x7, [nvme('0030:01:00.0')])] });
    trees.push(tree);
    const dev = await realpath(join(tree.dir, 'sys/bus/pci/devices/0030:01:00.0'));
    await rm(join(dev, 'eeh_pe_state'));
    await rm(join(dev, 'eeh_mode'));
    const { group: g, issues } = await discoverGroup(tree.roots, 0);
    expect(g?.eeh).toEqual({ hardwareState: null, softwareState: null, configAddr: 7, mode: null, frozen: false, source: '0030:01:00.0' });
    expect(issues).toEqual([]);
  });

  it('sees a frozen PE after setEehState', async () => {
    const tree = await buildTree(builtinPowerNode());
    trees.push(tree);
    await setEehState(tree.roots, '0030:01:00.1', '0x00000000 0x00000801');
    const { group: g } = await discoverGroup(tree.roots, 3);
    expect(g?.eeh).toMatchObject({ frozen: true, softwareState: 0x801, source: '0030:01:00.0' });
  });
});

describe('malformed trees', () => {
  it('keeps the good groups and records every odd entry', async () => {
    const tree = await malformedTree();
    trees.push(tree);
    const topo = await discoverTopology(tree.roots);
    for (const id of tree.goodGroups) expect(group(topo, id).usable, `group ${id}`).toBe(true);

    const paths = topo.issues.map((i) => i.path);
    // Non-numeric group dir.
    expect(paths).toContain(join(tree.dir, 'sys/kernel/iommu_groups/abc'));
    // Broken links of 0030:03:00.1: the group cannot be checked, so it is not usable.
    expect(group(topo, 2).usable).toBe(false);
    expect(group(topo, 2).functions.map((f) => f.address)).toEqual(['0030:03:00.0']);
    expect(group(topo, 2).problems).toEqual([expect.stringContaining('Function 0030:03:00.1 could not be read')]);
    expect(topo.issues.some((i) => i.group === 2 && i.message.includes('0030:03:00.1'))).toBe(true);
    // Garbage vendor.
    expect(group(topo, 3).usable).toBe(false);
    expect(topo.issues).toContainEqual(expect.objectContaining({ group: 3, path: expect.stringMatching(/0030:04:00\.0\/vendor$/) }));
    // Garbage numa_node and subsystem_vendor: defaults, an issue each, still usable.
    const f4 = group(topo, 4).functions[0];
    expect(f4).toMatchObject({ numaNode: -1, subsystemVendor: null, subsystemDevice: 'a801' });
    expect(topo.issues.filter((i) => i.group === 4).map((i) => i.path.split('/').pop()).sort()).toEqual(['numa_node', 'subsystem_vendor']);
    // Empty devices/ and no devices/ at all: reported, not usable.
    expect(group(topo, 5)).toMatchObject({ functions: [], usable: false });
    expect(group(topo, 6)).toMatchObject({ functions: [], usable: false });
    expect(topo.issues).toContainEqual(expect.objectContaining({ group: 6, message: expect.stringContaining('Cannot list the devices') }));
    // vfio-pci bound but no node: not usable.
    expect(group(topo, 7)).toMatchObject({ devNode: false, vfioCandidate: true, usable: false });
    // Junk entry in devices/.
    expect(topo.issues).toContainEqual(expect.objectContaining({ group: 8, path: expect.stringMatching(/not-a-bdf$/) }));
    // A name in another format: no PE, PHB from the address.
    expect(group(topo, 9)).toMatchObject({ name: 'something else', pe: null, phb: 48 });
    // /dev/vfio/42 without a sysfs group.
    expect(topo.groups.has(42)).toBe(false);
    expect(topo.issues).toContainEqual(expect.objectContaining({ group: 42, path: join(tree.dir, 'dev/vfio/42') }));

    const single = await discoverGroup(tree.roots, 42);
    expect(single.group).toBeNull();
    expect(single.issues).toEqual([expect.objectContaining({ group: 42 })]);
  });

  it('an empty root yields an empty topology with an issue, not an exception', async () => {
    const tmp = await makeTmpDir();
    trees.push(tmp);
    const topo = await discoverTopology({ sysfsRoot: tmp.dir, devRoot: tmp.dir });
    expect(topo.groups.size).toBe(0);
    expect(topo.containerNode).toBe(false);
    expect(topo.issues).toEqual([expect.objectContaining({ message: expect.stringContaining('Cannot list IOMMU groups') })]);
    expect((await discoverGroup({ sysfsRoot: tmp.dir, devRoot: tmp.dir }, 0)).group).toBeNull();
  });

  it('a driver attribute that is not a link makes the function unreadable, not the scan', async () => {
    const tree = await buildTree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')]), pnvGroup(1, 2, [nvme('0030:02:00.0')])] });
    trees.push(tree);
    const dev = await realpath(join(tree.dir, 'sys/bus/pci/devices/0030:01:00.0'));
    await rm(join(dev, 'driver'));
    await mkdir(join(dev, 'driver'));
    const topo = await discoverTopology(tree.roots);
    expect(group(topo, 0).usable).toBe(false);
    expect(group(topo, 1).usable).toBe(true);
    expect(topo.issues).toContainEqual(expect.objectContaining({ group: 0, message: expect.stringContaining('driver link') }));
  });

  it('reads a function through the group link when its bus link is gone', async () => {
    const tree = await buildTree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    trees.push(tree);
    await rm(join(tree.dir, 'sys/bus/pci/devices/0030:01:00.0'));
    const { group: g, issues } = await discoverGroup(tree.roots, 0);
    expect(g?.functions[0]?.vendor).toBe('144d');
    expect(issues).toEqual([expect.objectContaining({ message: expect.stringContaining('bus link') })]);
  });

  it('tolerates attributes spelled without 0x and with odd case', async () => {
    const tree = await buildTree({ groups: [pnvGroup(0, 1, [nvme('0030:01:00.0')])] });
    trees.push(tree);
    await setAttribute(tree.roots, '0030:01:00.0', 'vendor', '144D\n');
    await setAttribute(tree.roots, '0030:01:00.0', 'class', '0x10802\n');
    await setAttribute(tree.roots, '0030:01:00.0', 'driver_override', 'vfio-pci\n');
    const { group: g } = await discoverGroup(tree.roots, 0);
    expect(g?.functions[0]).toMatchObject({ vendor: '144d', classCode: '010802', driverOverride: 'vfio-pci' });
  });
});

describe('mutators and diff', () => {
  it('tracks hot-plug, unplug and rebinding, /dev/vfio/N following the kernel', async () => {
    const tree = await buildTree(builtinPowerNode());
    trees.push(tree);
    const before = await discoverTopology(tree.roots);

    await bindDriver(tree.roots, '0000:01:00.0', 'vfio-pci');
    await removeGroup(tree.roots, 8);
    await addGroup(tree.roots, pnvGroup(9, 0x4, [nvme('0030:01:00.4', { physfn: '0030:01:00.0', device: '1018', vendor: '15b3' })]));
    const after = await discoverTopology(tree.roots);
    const change = diffTopologies(before, after);
    expect(change).toMatchObject({ added: [9], removed: [8], changed: [0] });
    expect(change.containerNodeChanged).toBeUndefined();
    expect(group(after, 0)).toMatchObject({ devNode: true, usable: true });
    expect(group(after, 9).functions[0]?.physfn).toBe('0030:01:00.0');
    expect(after.issues).toEqual([]);

    // Unplug left nothing behind.
    await expect(realpath(join(tree.dir, 'sys/bus/pci/devices/0030:01:00.3'))).rejects.toThrow();
    await expect(realpath(join(tree.dir, 'dev/vfio/8'))).rejects.toThrow();

    // Unbinding the only vfio member removes the node again.
    await bindDriver(tree.roots, '0000:01:00.0', null);
    const unbound = await discoverGroup(tree.roots, 0);
    expect(unbound.group).toMatchObject({ devNode: false, vfioCandidate: false, usable: false });
    expect(unbound.group?.functions[0]?.driver).toBeNull();
  });

  it('diff is empty for equal scans and deep for nested fields', async () => {
    const tree = await buildTree(builtinPowerNode());
    trees.push(tree);
    const a = await discoverTopology(tree.roots);
    const b = await discoverTopology(tree.roots);
    expect(diffTopologies(a, b)).toMatchObject({ added: [], removed: [], changed: [] });
    await setAttribute(tree.roots, '0030:01:00.1', 'numa_node', '0\n');
    await writeFile(join(tree.dir, 'dev/vfio/vfio'), '');
    await rm(join(tree.dir, 'dev/vfio/vfio'));
    const c = await discoverTopology(tree.roots);
    const d = diffTopologies(a, c);
    expect(d).toMatchObject({ added: [], removed: [], changed: [3], containerNodeChanged: true });
  });
});
