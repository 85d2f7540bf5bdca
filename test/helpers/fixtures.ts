// Scenario builders for tests: real temp trees written by the sysfs builder,
// in short /tmp paths (unix socket paths are limited to 108 bytes).
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  setAttribute,
  writeSysfsTree,
  type FunctionSpec,
  type GroupSpec,
  type NodeSpec,
} from '../../src/simulate/sysfs-tree.js';
import type { DiscoveryRoots } from '../../src/topology/types.js';

export const EEH_HEALTHY = '0x00000078 0x00000800';
export const EEH_HEALTHY_LPAR = '0x00000018 0x00000a00';

export interface TmpDir {
  dir: string;
  cleanup(): Promise<void>;
}

export interface TestTree extends TmpDir {
  roots: DiscoveryRoots;
}

/** A fresh directory `/tmp/pvdp-XXXXXX`. */
export async function makeTmpDir(): Promise<TmpDir> {
  const dir = await mkdtemp('/tmp/pvdp-');
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Write `spec` into a fresh temp dir. */
export async function buildTree(spec: NodeSpec): Promise<TestTree> {
  const tmp = await makeTmpDir();
  const roots = await writeSysfsTree(tmp.dir, spec);
  return { ...tmp, roots };
}

/** Poll `probe` until it returns a truthy value or the deadline passes; no fixed sleeps. */
export async function waitFor<T>(
  probe: () => T | Promise<T>,
  { timeoutMs = 5000, intervalMs = 10, what = 'condition' }: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

// ---- function builders ------------------------------------------------------------

export function nvme(address: string, o: Partial<FunctionSpec> = {}): FunctionSpec {
  return { address, vendor: '144d', device: 'a808', classCode: '010802', subsystemVendor: '144d', subsystemDevice: 'a801', driver: 'vfio-pci', numaNode: 0, ...o };
}

export function gpu(address: string, o: Partial<FunctionSpec> = {}): FunctionSpec {
  return { address, vendor: '10de', device: '1db1', classCode: '030200', subsystemVendor: '10de', subsystemDevice: '1212', driver: 'vfio-pci', numaNode: 0, ...o };
}

export function nic(address: string, o: Partial<FunctionSpec> = {}): FunctionSpec {
  return { address, vendor: '15b3', device: '1017', classCode: '020000', subsystemVendor: '15b3', subsystemDevice: '0007', driver: 'vfio-pci', numaNode: 8, ...o };
}

export function bridge(address: string, o: Partial<FunctionSpec> = {}): FunctionSpec {
  return { address, vendor: '10b5', device: '8725', classCode: '060400', driver: 'pcieport', numaNode: 0, ...o };
}

/** A powernv-style group: `domain<dec>-pe<hex>` name and healthy EEH. */
export function pnvGroup(id: number, pe: number, functions: FunctionSpec[], o: Partial<GroupSpec> = {}): GroupSpec {
  const domain = Number.parseInt((functions[0]?.address ?? '0000').slice(0, 4), 16);
  return { id, name: `domain${domain}-pe${pe.toString(16)}`, functions, eeh: { peState: EEH_HEALTHY, configAddr: pe }, ...o };
}

// ---- scenarios ---------------------------------------------------------------------

/** Three groups on PHB 0x0035 (domain53), one on 0x0030 (domain48). */
export function sharedPhbNode(): NodeSpec {
  return {
    groups: [
      pnvGroup(0, 0x1fd, [gpu('0035:01:00.0', { numaNode: 8 })]),
      pnvGroup(1, 0x1fc, [nvme('0035:02:00.0', { numaNode: 8 })]),
      pnvGroup(2, 0x1fb, [nvme('0035:03:00.0', { numaNode: 8 })]),
      pnvGroup(3, 0x1fd, [gpu('0030:01:00.0', { numaNode: 0 })]),
    ],
  };
}

/** Multi-function adapters: two NIC ports in one PE; a bridge with its endpoint. */
export function multiFunctionNode(): NodeSpec {
  return {
    groups: [
      pnvGroup(0, 0x10, [nic('0030:01:00.0'), nic('0030:01:00.1')]),
      pnvGroup(1, 0x11, [bridge('0030:02:00.0'), gpu('0030:03:00.0', { parent: '0030:02:00.0' })], { devNode: true }),
      // A bridge held by a driver other than pcieport breaks viability.
      pnvGroup(2, 0x12, [bridge('0030:04:00.0', { driver: 'shpchp' }), gpu('0030:05:00.0', { parent: '0030:04:00.0' })]),
      // pci-stub and no driver at all are both harmless.
      pnvGroup(3, 0x13, [nic('0030:06:00.0', { driver: 'pci-stub' }), nic('0030:06:00.1', { driver: null })], { devNode: true }),
    ],
  };
}

/** One function on vfio-pci, its sibling still on the host nvme driver: node exists, not usable. */
export function hostDriverNode(): NodeSpec {
  return {
    groups: [
      pnvGroup(0, 0x1, [nvme('0033:01:00.0'), nvme('0033:01:00.1', { driver: 'nvme' })]),
      pnvGroup(1, 0x2, [nvme('0033:02:00.0', { driver: 'nvme' })]),
      pnvGroup(2, 0x3, [nvme('0033:03:00.0', { driver: 'vfio-pci' })]),
    ],
  };
}

/** PF on the host driver in one group; two VFs (vfio-pci, variant driver) in their own groups. */
export function sriovNode(): NodeSpec {
  const vf = (address: string, driver: string): FunctionSpec =>
    nic(address, { device: '1018', driver, driverOverride: driver, physfn: '0030:01:00.0' });
  return {
    groups: [
      pnvGroup(0, 0x1, [nic('0030:01:00.0', { driver: 'mlx5_core' })]),
      pnvGroup(10, 0x2, [vf('0030:01:00.2', 'vfio-pci')]),
      pnvGroup(11, 0x3, [vf('0030:01:00.3', 'mlx5_vfio_pci')]),
    ],
  };
}

/** EEH spellings: bare metal, LPAR, old kernels, frozen variants, garbage, partial files. */
export function eehNode(): NodeSpec {
  const g = (id: number, eeh: GroupSpec['eeh']): GroupSpec => pnvGroup(id, id + 1, [nvme(`0030:${(id + 1).toString(16).padStart(2, '0')}:00.0`)], { eeh });
  return {
    groups: [
      g(0, { peState: EEH_HEALTHY, configAddr: 0x1fd, mode: 0x1 }),
      g(1, { peState: EEH_HEALTHY_LPAR, configAddr: 0xa00000 }),
      g(2, { peState: '00000078 00000800' }),
      g(3, { peState: '0x00000078 0x00000801' }), // ISOLATED
      g(4, { peState: '0x00000008 0x00000800' }), // DMA stopped
      g(5, { peState: 'banana' }),
      g(6, { peState: '0x78' }), // a lone hardware word
    ],
  };
}

/** A pseries guest: `domainN-pe0` names, no EEH, NUMA -1, root bus not 00, an empty PHB group. */
export function pseriesNode(): NodeSpec {
  return {
    groups: [
      { id: 0, name: 'domain0-pe0', functions: [nvme('0000:00:01.0', { numaNode: -1 })] },
      { id: 1, name: 'domain1-pe0', functions: [gpu('0001:00:01.0', { numaNode: -1 })] },
      { id: 2, name: 'domain2-pe0', functions: [] },
      // PowerVM-style slot with a root bus that is not 00 and no name file.
      { id: 3, name: null, functions: [nvme('0206:a0:00.0', { numaNode: -1 })] },
    ],
  };
}

export interface MalformedTree extends TestTree {
  /** Groups that must still come out usable. */
  goodGroups: number[];
}

/**
 * Good groups next to every kind of damage: broken links, garbage attributes,
 * a group with an empty devices dir and one with none, /dev/vfio/N without a
 * group and a group without its node, a non-numeric group dir, a junk entry.
 */
export async function malformedTree(): Promise<MalformedTree> {
  const tree = await buildTree({
    groups: [
      pnvGroup(0, 0x1, [nvme('0030:01:00.0')]),
      pnvGroup(1, 0x2, [gpu('0030:02:00.0')]),
      pnvGroup(2, 0x3, [nvme('0030:03:00.0'), nvme('0030:03:00.1')]), // .1's device dir will vanish
      pnvGroup(3, 0x4, [nvme('0030:04:00.0')]), // garbage vendor
      pnvGroup(4, 0x5, [nvme('0030:05:00.0')]), // garbage numa_node, subsystem ids: still usable
      { id: 5, name: 'domain48-pe6', functions: [] }, // empty devices/
      pnvGroup(7, 0x8, [nvme('0030:07:00.0')], { devNode: false }), // node missing
      pnvGroup(8, 0x9, [nvme('0030:08:00.0')]), // junk entry in devices/
      pnvGroup(9, 0xa, [nvme('0030:09:00.0')]), // name file with garbage
    ],
  });
  const sys = join(tree.dir, 'sys');
  const dev = (a: string): string => join(sys, 'devices', `pci${a.slice(0, 7)}`, a);
  // Broken: the device directory of 0030:03:00.1 is gone, both links dangle.
  await rm(dev('0030:03:00.1'), { recursive: true });
  // Planted identity garbage: setAttribute drops the uevent file, so the attribute is what discovery reads.
  await setAttribute(tree.roots, '0030:04:00.0', 'vendor', 'not hex\n');
  await setAttribute(tree.roots, '0030:05:00.0', 'numa_node', 'lots\n');
  await setAttribute(tree.roots, '0030:05:00.0', 'subsystem_vendor', '\u0000\u0001\n');
  // A group directory with no devices/ at all.
  await mkdir(join(sys, 'kernel', 'iommu_groups', '6'), { recursive: true });
  await writeFile(join(sys, 'kernel', 'iommu_groups', '6', 'type'), 'unknown\n');
  await mkdir(join(sys, 'kernel', 'iommu_groups', 'abc', 'devices'), { recursive: true });
  await symlink('../../../../devices/nowhere', join(sys, 'kernel', 'iommu_groups', '8', 'devices', 'not-a-bdf'));
  await writeFile(join(sys, 'kernel', 'iommu_groups', '9', 'name'), 'something else\n');
  await writeFile(join(tree.dir, 'dev', 'vfio', '42'), '');
  return { ...tree, goodGroups: [0, 1, 4, 8, 9] };
}

/** A synthetic node for benchmarks: `groups` groups of `functionsPerGroup` vfio-pci functions. */
export function largeNode(groups: number, functionsPerGroup = 4): NodeSpec {
  const specs: GroupSpec[] = [];
  for (let i = 0; i < groups; i++) {
    const domain = (0x30 + (i >> 8)).toString(16).padStart(4, '0');
    const bus = (i & 0xff).toString(16).padStart(2, '0');
    const functions: FunctionSpec[] = [];
    for (let f = 0; f < functionsPerGroup; f++) {
      // Up to 8 functions per device, then the next device number.
      const devNo = Math.floor(f / 8).toString(16).padStart(2, '0');
      functions.push(nic(`${domain}:${bus}:${devNo}.${f % 8}`, { numaNode: i % 2 === 0 ? 0 : 8 }));
    }
    specs.push(pnvGroup(i, i & 0x1ff, functions));
  }
  return { groups: specs };
}
