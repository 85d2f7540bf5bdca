// Writes a POWER-like sysfs and /dev tree into a directory: real directories,
// relative symlinks laid out as the kernel lays them out, so discovery runs on
// it unchanged. Mutators replay what the kernel does on hot-plug, unplug,
// driver rebinding and EEH freezes, for tests, the demo and --simulate.
import { mkdir, readFile, readdir, readlink, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { isVfioDriver, pciDomain } from '../topology/discover.js';
import type { DiscoveryRoots } from '../topology/types.js';

/** One PCI function. Ids are hex without `0x` (`1014`, `010802`), as in `PciFunction`. */
export interface FunctionSpec {
  /** `DDDD:BB:DD.F`, lower case. */
  address: string;
  vendor: string;
  device: string;
  classCode: string;
  subsystemVendor?: string;
  subsystemDevice?: string;
  /** Bound driver; null or absent = unbound. */
  driver?: string | null;
  /**
   * The host driver the function's ID matches (what probing binds when no
   * override says otherwise); default: `driver` when that is not a VFIO driver.
   */
  hostDriver?: string;
  /** `driver_override`; null or absent writes `(null)`. */
  driverOverride?: string | null;
  /** Default -1. */
  numaNode?: number;
  /** Writes `aer_dev_fatal` with this TOTAL_ERR_FATAL; absent = no AER statistics. */
  aerFatal?: number;
  /** Address of the SR-IOV physical function for a VF. */
  physfn?: string;
  /**
   * Address of the upstream bridge or root port; the function's directory
   * nests under it. A parent that is no function of the spec is created as a
   * root port without an IOMMU group, bound to pcieport, as on bare metal.
   */
  parent?: string;
}

export interface EehSpec {
  /** Raw `eeh_pe_state` content, e.g. `0x00000078 0x00000800`. */
  peState: string;
  /** `eeh_pe_config_addr`: a number is written as `0x%x`, a string as is. Default: the PE number. */
  configAddr?: number | string;
  /** `eeh_mode`; default 1. A number is written as `0x%x`, a string as is. */
  mode?: number | string;
}

export interface GroupSpec {
  id: number;
  /** Content of `name`; null writes no file; absent derives `domain<PHB>-pe<id hex>`. */
  name?: string | null;
  functions: FunctionSpec[];
  /** Whether `/dev/vfio/N` exists; default: some function is bound to a vfio driver. */
  devNode?: boolean;
  /** EEH attributes written on every function; absent = no EEH (pseries under TCG). */
  eeh?: EehSpec;
}

export interface NodeSpec {
  groups: GroupSpec[];
  /** Whether `/dev/vfio/vfio` exists; default true. */
  containerNode?: boolean;
}

// ---- layout ------------------------------------------------------------------

const sysPath = (root: string, ...parts: string[]): string => join(root, 'sys', ...parts);
const busLinkPath = (root: string, address: string): string => sysPath(root, 'bus', 'pci', 'devices', address);
const groupDirPath = (root: string, id: number): string => sysPath(root, 'kernel', 'iommu_groups', String(id));
const driverDirPath = (root: string, driver: string): string => sysPath(root, 'bus', 'pci', 'drivers', driver);
const devNodePath = (root: string, id: number): string => join(root, 'dev', 'vfio', String(id));

/** Root bus directory name of an address: `pci0030:01` for `0030:01:00.0`. */
function rootBusName(address: string): string {
  return `pci${address.slice(0, address.lastIndexOf(':'))}`;
}

const hex = (v: string): string => `0x${v}\n`;

interface UeventIds {
  address: string;
  vendor: string;
  device: string;
  classCode: string;
  subsystemVendor: string;
  subsystemDevice: string;
}

/**
 * A PCI function's `uevent` file as the kernel prints it: dev_uevent's DRIVER
 * line when bound, then pci_uevent's keys (class `%04X`, ids `%04X:%04X`,
 * the slot, and the modalias with the programming interface in lower case).
 */
function ueventText(ids: UeventIds, driver: string | null): string {
  const up = (v: string, width: number): string => Number.parseInt(v, 16).toString(16).toUpperCase().padStart(width, '0');
  const cls = Number.parseInt(ids.classCode, 16);
  const byte = (shift: number): number => (cls >> shift) & 0xff;
  const lines = [
    ...(driver !== null ? [`DRIVER=${driver}`] : []),
    `PCI_CLASS=${up(ids.classCode, 4)}`,
    `PCI_ID=${up(ids.vendor, 4)}:${up(ids.device, 4)}`,
    `PCI_SUBSYS_ID=${up(ids.subsystemVendor, 4)}:${up(ids.subsystemDevice, 4)}`,
    `PCI_SLOT_NAME=${ids.address}`,
    `MODALIAS=pci:v${up(ids.vendor, 8)}d${up(ids.device, 8)}sv${up(ids.subsystemVendor, 8)}sd${up(ids.subsystemDevice, 8)}` +
      `bc${byte(16).toString(16).toUpperCase().padStart(2, '0')}sc${byte(8).toString(16).toUpperCase().padStart(2, '0')}i${byte(0).toString(16).padStart(2, '0')}`,
  ];
  return `${lines.join('\n')}\n`;
}

/** The kernel prints uevent on every read: after a rebinding its DRIVER line follows the link. */
async function syncUeventDriver(dir: string, driver: string | null): Promise<void> {
  const path = join(dir, 'uevent');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    // No uevent file in this tree.
    return;
  }
  const rest = text.split('\n').filter((l) => l !== '' && !l.startsWith('DRIVER='));
  await writeFile(path, `${[...(driver !== null ? [`DRIVER=${driver}`] : []), ...rest].join('\n')}\n`);
}

/** Attributes the uevent file repeats. */
const UEVENT_IDENTITY_ATTRS: ReadonlySet<string> = new Set(['vendor', 'device', 'class', 'subsystem_vendor', 'subsystem_device']);

/** Replace whatever is at `path` with a relative symlink to `target`. */
async function relLink(target: string, path: string): Promise<void> {
  const rel = relative(dirname(path), target);
  try {
    await symlink(rel, path);
  } catch (err) {
    // Rewriting an existing tree: replace the old entry.
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    await rm(path, { recursive: true, force: true });
    await symlink(rel, path);
  }
}

async function deviceDirOf(root: string, address: string): Promise<string> {
  return realpath(busLinkPath(root, address));
}

// Groups are written concurrently and may share a root port: create each once.
const rootPortsInFlight = new Map<string, Promise<string>>();

/** A root port as bare metal shows it: a bridge with no IOMMU group, bound to pcieport. */
function ensureRootPort(root: string, address: string): Promise<string> {
  const key = `${root}|${address}`;
  let p = rootPortsInFlight.get(key);
  if (p === undefined) {
    p = createRootPort(root, address).finally(() => rootPortsInFlight.delete(key));
    rootPortsInFlight.set(key, p);
  }
  return p;
}

async function createRootPort(root: string, address: string): Promise<string> {
  try {
    return await deviceDirOf(root, address);
  } catch {
    const dir = sysPath(root, 'devices', rootBusName(address), address);
    await mkdir(dir, { recursive: true });
    await Promise.all([
      writeFile(join(dir, 'vendor'), hex('1014')),
      writeFile(join(dir, 'device'), hex('04c1')),
      writeFile(join(dir, 'class'), hex('060400')),
      writeFile(join(dir, 'numa_node'), '-1\n'),
      writeFile(
        join(dir, 'uevent'),
        ueventText({ address, vendor: '1014', device: '04c1', classCode: '060400', subsystemVendor: '0000', subsystemDevice: '0000' }, 'pcieport'),
      ),
      relLink(dir, busLinkPath(root, address)),
    ]);
    await bindLinks(root, dir, address, 'pcieport');
    return dir;
  }
}

async function bindLinks(root: string, dir: string, address: string, driver: string | null): Promise<void> {
  const link = join(dir, 'driver');
  try {
    const old = basename(await readlink(link));
    await rm(join(driverDirPath(root, old), address), { force: true });
  } catch {
    // Not bound before.
  }
  await rm(link, { force: true });
  if (driver === null) return;
  const ddir = driverDirPath(root, driver);
  await mkdir(ddir, { recursive: true });
  await Promise.all([relLink(ddir, link), relLink(dir, join(ddir, address))]);
}

function formatNumber(v: number | string): string {
  return typeof v === 'number' ? `0x${v.toString(16)}\n` : `${v}\n`;
}

async function writeFunction(root: string, group: GroupSpec, fn: FunctionSpec): Promise<void> {
  const address = fn.address.toLowerCase();
  const parentDir = fn.parent === undefined ? sysPath(root, 'devices', rootBusName(address)) : await ensureRootPort(root, fn.parent);
  const dir = join(parentDir, address);
  await mkdir(dir, { recursive: true });
  const writes: Promise<void>[] = [
    writeFile(join(dir, 'vendor'), hex(fn.vendor)),
    writeFile(join(dir, 'device'), hex(fn.device)),
    writeFile(join(dir, 'class'), hex(fn.classCode)),
    writeFile(join(dir, 'subsystem_vendor'), hex(fn.subsystemVendor ?? '0000')),
    writeFile(join(dir, 'subsystem_device'), hex(fn.subsystemDevice ?? '0000')),
    writeFile(join(dir, 'driver_override'), `${fn.driverOverride ?? '(null)'}\n`),
    writeFile(join(dir, 'numa_node'), `${fn.numaNode ?? -1}\n`),
    writeFile(
      join(dir, 'uevent'),
      ueventText(
        {
          address,
          vendor: fn.vendor,
          device: fn.device,
          classCode: fn.classCode,
          subsystemVendor: fn.subsystemVendor ?? '0000',
          subsystemDevice: fn.subsystemDevice ?? '0000',
        },
        fn.driver ?? null,
      ),
    ),
    ...(fn.aerFatal !== undefined ? [writeFile(join(dir, 'aer_dev_fatal'), aerFatalText(fn.aerFatal))] : []),
    // vfio-pci leaves idle devices disabled; host drivers enable them.
    writeFile(join(dir, 'enable'), fn.driver !== undefined && fn.driver !== null && !isVfioDriver(fn.driver) ? '1\n' : '0\n'),
    relLink(groupDirPath(root, group.id), join(dir, 'iommu_group')),
    relLink(dir, busLinkPath(root, address)),
    relLink(dir, join(groupDirPath(root, group.id), 'devices', address)),
  ];
  if (group.eeh !== undefined) {
    writes.push(
      writeFile(join(dir, 'eeh_pe_state'), `${group.eeh.peState}\n`),
      writeFile(join(dir, 'eeh_pe_config_addr'), formatNumber(group.eeh.configAddr ?? group.id)),
      writeFile(join(dir, 'eeh_mode'), formatNumber(group.eeh.mode ?? 0x1)),
    );
  }
  await Promise.all(writes);
  await bindLinks(root, dir, address, fn.driver ?? null);
}

/** `physfn` on the VF, `virtfnK` on the PF; needs both directories to exist. */
async function linkVf(root: string, vf: FunctionSpec): Promise<void> {
  if (vf.physfn === undefined) return;
  const [vfDir, pfDir] = await Promise.all([deviceDirOf(root, vf.address), deviceDirOf(root, vf.physfn)]);
  await relLink(pfDir, join(vfDir, 'physfn'));
  const taken = (await readdir(pfDir)).filter((n) => n.startsWith('virtfn')).length;
  await relLink(vfDir, join(pfDir, `virtfn${taken}`));
}

function defaultName(group: GroupSpec): string | null {
  const first = group.functions[0];
  if (first === undefined) return null;
  const pe = typeof group.eeh?.configAddr === 'number' ? group.eeh.configAddr : group.id;
  // The kernel prints the PHB in decimal and the PE in hex.
  return `domain${pciDomain(first.address) ?? 0}-pe${pe.toString(16)}`;
}

async function writeGroupSkeleton(root: string, group: GroupSpec): Promise<void> {
  const dir = groupDirPath(root, group.id);
  await mkdir(join(dir, 'devices'), { recursive: true });
  const name = group.name === undefined ? defaultName(group) : group.name;
  await Promise.all([
    name === null ? Promise.resolve() : writeFile(join(dir, 'name'), `${name}\n`),
    writeFile(join(dir, 'type'), 'unknown\n'),
    writeFile(join(dir, 'reserved_regions'), ''),
  ]);
}

async function writeGroup(roots: DiscoveryRoots, group: GroupSpec, linkVfs: boolean): Promise<void> {
  const root = roots.sysfsRoot;
  await writeGroupSkeleton(root, group);
  // Bridges first, so functions nesting under them find their directory.
  const ordered = [...group.functions].sort((a, b) => Number(b.classCode.startsWith('06')) - Number(a.classCode.startsWith('06')));
  for (const fn of ordered) await writeFunction(root, group, fn);
  if (linkVfs) for (const fn of group.functions) await linkVf(root, fn);
  const devNode = group.devNode ?? group.functions.some((f) => f.driver != null && isVfioDriver(f.driver));
  if (devNode) {
    await mkdir(join(roots.devRoot, 'dev', 'vfio'), { recursive: true });
    await writeFile(devNodePath(roots.devRoot, group.id), '');
  }
}

async function inPool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Write the whole node under `rootDir`; both roots point at it. */
export async function writeSysfsTree(rootDir: string, spec: NodeSpec): Promise<DiscoveryRoots> {
  await mkdir(sysPath(rootDir, 'bus', 'pci', 'devices'), { recursive: true });
  await mkdir(sysPath(rootDir, 'bus', 'pci', 'drivers'), { recursive: true });
  await mkdir(sysPath(rootDir, 'kernel', 'iommu_groups'), { recursive: true });
  await mkdir(sysPath(rootDir, 'devices'), { recursive: true });
  if (spec.containerNode ?? true) {
    await mkdir(join(rootDir, 'dev', 'vfio'), { recursive: true });
    await writeFile(join(rootDir, 'dev', 'vfio', 'vfio'), '');
  }
  // Groups with bridges go first: other groups' functions may nest under them.
  const hasBridge = (g: GroupSpec): boolean => g.functions.some((f) => f.classCode.startsWith('06'));
  const ordered = [...spec.groups.filter(hasBridge), ...spec.groups.filter((g) => !hasBridge(g))];
  const roots = { sysfsRoot: rootDir, devRoot: rootDir };
  await inPool(ordered, 16, (g) => writeGroup(roots, g, false));
  // VF links last: a PF may sit in a group written later.
  const vfs = spec.groups.flatMap((g) => g.functions.filter((f) => f.physfn !== undefined));
  for (const vf of vfs) await linkVf(rootDir, vf);
  return roots;
}

// ---- mutators (what the kernel does at run time) -------------------------------

async function groupOf(roots: DiscoveryRoots, address: string): Promise<number> {
  const dir = await deviceDirOf(roots.sysfsRoot, address);
  return Number(basename(await readlink(join(dir, 'iommu_group'))));
}

async function membersOf(roots: DiscoveryRoots, id: number): Promise<string[]> {
  try {
    return await readdir(join(groupDirPath(roots.sysfsRoot, id), 'devices'));
  } catch {
    return [];
  }
}

/** The kernel keeps /dev/vfio/N while some member is bound to a vfio driver. */
async function syncDevNode(roots: DiscoveryRoots, id: number): Promise<void> {
  const members = await membersOf(roots, id);
  const drivers = await Promise.all(
    members.map(async (m) => {
      try {
        return basename(await readlink(join(groupDirPath(roots.sysfsRoot, id), 'devices', m, 'driver')));
      } catch {
        return null;
      }
    }),
  );
  const node = devNodePath(roots.devRoot, id);
  if (drivers.some((d) => d !== null && isVfioDriver(d))) {
    await mkdir(dirname(node), { recursive: true });
    // The kernel leaves an existing node alone (no inotify event for it).
    await writeFile(node, '', { flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  } else {
    await rm(node, { force: true });
  }
}

/** Hot-plug a group (an adapter, or a VF when sriov_numvfs is written). */
export async function addGroup(roots: DiscoveryRoots, group: GroupSpec): Promise<void> {
  await writeGroup(roots, group, true);
}

/** Hot-unplug a group: its device node, its functions' directories and links, then the group. */
export async function removeGroup(roots: DiscoveryRoots, id: number): Promise<void> {
  await rm(devNodePath(roots.devRoot, id), { force: true });
  for (const address of await membersOf(roots, id)) {
    let dir: string;
    try {
      dir = await deviceDirOf(roots.sysfsRoot, address);
    } catch {
      await rm(busLinkPath(roots.sysfsRoot, address), { force: true });
      continue;
    }
    await bindLinks(roots.sysfsRoot, dir, address, null);
    try {
      const pfDir = await realpath(join(dir, 'physfn'));
      for (const n of await readdir(pfDir)) {
        if (n.startsWith('virtfn') && basename(await readlink(join(pfDir, n))) === address) await rm(join(pfDir, n), { force: true });
      }
    } catch {
      // Not a VF.
    }
    await rm(busLinkPath(roots.sysfsRoot, address), { force: true });
    await rm(dir, { recursive: true, force: true });
  }
  await rm(groupDirPath(roots.sysfsRoot, id), { recursive: true, force: true });
}

/** Unbind (null) or rebind a function; /dev/vfio/N follows as the kernel does it. */
export async function bindDriver(roots: DiscoveryRoots, address: string, driver: string | null): Promise<void> {
  const dir = await deviceDirOf(roots.sysfsRoot, address);
  await bindLinks(roots.sysfsRoot, dir, address, driver);
  await syncUeventDriver(dir, driver);
  await writeFile(join(dir, 'enable'), driver !== null && !isVfioDriver(driver) ? '1\n' : '0\n');
  await syncDevNode(roots, await groupOf(roots, address));
}

/** `aer_dev_fatal` as the kernel prints it: one line per error type, then the total. */
function aerFatalText(total: number): string {
  const kinds = ['Undefined', 'DLP', 'SDES', 'TLP', 'FCP', 'CmpltTO', 'CmpltAbrt', 'UnxCmplt', 'RxOF', 'MalfTLP', 'ECRC', 'UnsupReq', 'ACSViol'];
  // Attribute the errors to one type (a completion timeout), as a real fault would.
  return `${kinds.map((k) => `${k} ${k === 'CmpltTO' ? total : 0}`).join('\n')}\nTOTAL_ERR_FATAL ${total}\n`;
}

/** A PCIe fatal error was logged: the function's AER fatal count becomes `total`. */
export async function setAerFatal(roots: DiscoveryRoots, address: string, total: number): Promise<void> {
  await writeFile(join(await deviceDirOf(roots.sysfsRoot, address), 'aer_dev_fatal'), aerFatalText(total));
}

/** Set `eeh_pe_state` of the PE: every function of the function's group reads the same. */
export async function setEehState(roots: DiscoveryRoots, address: string, peState: string): Promise<void> {
  const id = await groupOf(roots, address);
  const members = await membersOf(roots, id);
  await Promise.all(
    members.map(async (m) => writeFile(join(await deviceDirOf(roots.sysfsRoot, m), 'eeh_pe_state'), `${peState}\n`)),
  );
}

/**
 * Write one attribute file of a function verbatim (tests use it to plant
 * garbage). A planted identity attribute (vendor, device, class, subsystem
 * ids) is one the kernel's uevent would not repeat, so the function's uevent
 * file goes: the tree then reads like one without uevent files, and discovery
 * reads the attribute planted.
 */
export async function setAttribute(roots: DiscoveryRoots, address: string, attr: string, value: string): Promise<void> {
  const dir = await deviceDirOf(roots.sysfsRoot, address);
  await writeFile(join(dir, attr), value);
  if (UEVENT_IDENTITY_ATTRS.has(attr)) await rm(join(dir, 'uevent'), { force: true });
}

/** What a host driver made under a function: a network interface, or block or character device nodes. */
export type HostDeviceSpec =
  | { kind: 'net'; name: string; up: boolean }
  | { kind: 'block'; name: string; dev: string; holders?: string[]; parent?: string }
  | { kind: 'char'; name: string; dev: string; parent?: string };

/**
 * Adds what a host driver creates under a function, laid out as the kernel
 * lays it out (`net/<if>/flags`, `<parent>/<disk>/{dev,holders/}`, `<parent>/<node>/dev`).
 */
export async function addHostDevice(roots: DiscoveryRoots, address: string, spec: HostDeviceSpec): Promise<void> {
  const dir = await deviceDirOf(roots.sysfsRoot, address);
  if (spec.kind === 'net') {
    const ifDir = join(dir, 'net', spec.name);
    await mkdir(ifDir, { recursive: true });
    // IFF_UP | IFF_BROADCAST | IFF_MULTICAST, or only the latter two.
    await writeFile(join(ifDir, 'flags'), spec.up ? '0x1003\n' : '0x1002\n');
    await writeFile(join(ifDir, 'operstate'), spec.up ? 'up\n' : 'down\n');
    return;
  }
  const nodeDir = join(dir, ...(spec.parent ? [spec.parent] : []), spec.name);
  await mkdir(nodeDir, { recursive: true });
  await writeFile(join(nodeDir, 'dev'), `${spec.dev}\n`);
  if (spec.kind === 'block') {
    await mkdir(join(nodeDir, 'holders'), { recursive: true });
    for (const h of spec.holders ?? []) await writeFile(join(nodeDir, 'holders', h), '');
  }
}

/** Removes what addHostDevice made (the driver let go of the function). */
export async function removeHostDevices(roots: DiscoveryRoots, address: string, parts: string[]): Promise<void> {
  const dir = await deviceDirOf(roots.sysfsRoot, address);
  for (const p of parts) await rm(join(dir, p), { recursive: true, force: true });
}
