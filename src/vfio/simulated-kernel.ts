// A simulated Linux kernel for VFIO on POWER: the behaviour of vfio,
// vfio_iommu_spapr_tce and the pseries/powernv platform code as described in
// docs/spapr-vfio-facts.md section 3, written from those facts. It implements
// VfioBinding per simulated process, so the same sequence and the same
// contract suite run on it and on the real kernel. Where the two disagree, the
// real kernel is right and this file is fixed.
//
// Model: a kernel holds groups, open file descriptions and processes. Each
// process has an fd table and an mm (its mappings, its locked_vm, its
// registered memory regions). A container's mm is set by the first ENABLE,
// REGISTER_MEMORY, TCE_CREATE or TCE_REMOVE; IOMMU calls from another mm then
// fail with EPERM, as they do after fork() or an SCM_RIGHTS handoff.
import {
  containerPath,
  kernelMaxPageOrder,
  groupPath,
  type ArgszOption,
  type DmaMapRequest,
  type DmaUnmapRequest,
  type EehPeOpRequest,
  type GroupStatus,
  type MemfdOptions,
  type MemlockLimit,
  type MemoryRegionRequest,
  type MmapOptions,
  type Platform,
  type ReceivedMessage,
  type RegionInfo,
  type SpaprTceInfo,
  type TceCreateRequest,
  type TceRemoveRequest,
  type VfioBinding,
  type VfioConstants,
} from './binding.js';
import { KernelOopsError, UNEXPECTED_RETURN, VfioError } from './errors.js';
import {
  CONFIG_SIZE_PCI,
  CONFIG_SIZE_PCIE,
  IORESOURCE_MEM,
  PCI_REGION_BAR5,
  PCI_REGION_CONFIG,
  PCI_REGION_ROM,
  REGION_FLAG_READ,
  barRegionFlags,
  formatPciResource,
  resourceSize,
  type PciResource,
} from './pci-device.js';
import {
  checkBytes,
  checkFd,
  checkGroupNumber,
  checkLength,
  checkString,
  checkU32,
  checkU64,
} from './validate.js';

/** The ABI of <linux/vfio.h>, as the simulated kernel speaks it (no ioctl numbers: it has methods). */
export const SIMULATED_CONSTANTS: VfioConstants = Object.freeze({
  apiVersion: 0,
  type1Iommu: 1,
  spaprTceIommu: 2,
  spaprTceV2Iommu: 7,
  eehExtension: 5,
  groupFlagsViable: 1,
  groupFlagsContainerSet: 2,
  dmaMapFlagRead: 1,
  dmaMapFlagWrite: 2,
  spaprInfoDdw: 1,
  eehPeOp: {
    disable: 0,
    enable: 1,
    unfreezeIo: 2,
    unfreezeDma: 3,
    getState: 4,
    resetDeactivate: 5,
    resetHot: 6,
    resetFundamental: 7,
    configure: 8,
    injectError: 9,
  },
  eehPeState: { normal: 0, reset: 1, stopped: 2, stoppedDma: 4, unavailable: 5 },
  pciRegion: { bar0: 0, config: 7 },
});

const C = SIMULATED_CONSTANTS;
const GiB = 1n << 30n;
const IOMMU_PAGE_SHIFT_4K = 12;
const DDW_START = 1n << 59n;
/** pseries get_table_size for more than one level: 0xfffff pages charged, then EINVAL [seen]. */
const PSERIES_MULTILEVEL_CHARGE = 0xfffff000n;
/** pseries allocates a window's whole table at once; past PAGE_SIZE << 18 it cannot. */
const PSERIES_MAX_TABLE_ORDER = 18;
const POWERNV_MAX_LEVELS = 5;
const VFIO_PCI_NUM_REGIONS = 9;
const VFIO_PCI_VGA_REGION = 8;

/** edu's resources: BAR0, 1 MiB of memory, at an address per group. */
function defaultResources(group: number, index: number): PciResource[] {
  const start = 0x200000000000n + (BigInt(group) << 31n) + (BigInt(index) << 24n);
  return [{ start, end: start + (1n << 20n) - 1n, flags: 0x40200n }];
}

/** What a platform's PE (iommu_table_group) offers, per facts section 3. */
export interface PlatformProfile {
  family: 'pseries' | 'powernv';
  dma32Start: bigint;
  dma32Size: bigint;
  pgsizes: bigint;
  maxDynamicWindows: number;
  maxLevels: number;
  /** CHECK_EXTENSION(VFIO_EEH) and a PE behind each group. */
  eeh: boolean;
}

export const PLATFORM_PROFILES: Readonly<Record<Platform, PlatformProfile>> = Object.freeze({
  pseries: {
    family: 'pseries',
    dma32Start: 0n,
    dma32Size: 1n * GiB,
    pgsizes: 0x1211000n,
    maxDynamicWindows: 2,
    maxLevels: 1,
    eeh: false,
  },
  powernv9: {
    family: 'powernv',
    dma32Start: 0n,
    dma32Size: 2n * GiB,
    pgsizes: 0x40211000n,
    maxDynamicWindows: 2,
    maxLevels: POWERNV_MAX_LEVELS,
    eeh: true,
  },
  powernv10: {
    family: 'powernv',
    dma32Start: 0n,
    dma32Size: 2n * GiB,
    pgsizes: 0x40211000n,
    maxDynamicWindows: 2,
    maxLevels: POWERNV_MAX_LEVELS,
    eeh: true,
  },
});

export interface SimulatedGroupSpec {
  group: number;
  /** Device names (PCI addresses) in the group. */
  devices: string[];
  /** False models a PE without dynamic windows (SET_IOMMU v2 fails with EINVAL). Default true. */
  dynamicWindows?: boolean;
  /** PCI vendor/device ids the config region reports (default QEMU edu 1234:11e8). */
  vendorId?: number;
  deviceId?: number;
  /** PCI Express (4096-byte config space) or conventional PCI (256). Default false, like edu. */
  pcie?: boolean;
  /** The devices' sysfs `resource` lines (BARs 0-5, ROM, ...). Default edu's: BAR0 1 MiB of memory. */
  resources?: PciResource[];
  /** The BAR holding the MSI-X table (its region carries a capability chain). */
  msixBar?: number;
}

export interface SimulatedKernelOptions {
  platform: Platform;
  groups: SimulatedGroupSpec[];
  /** Kernel PAGE_SIZE: 4096 (Debian's 6.12 ppc64el flavour) or 65536. Default 4096. */
  pageSize?: number;
  /** RLIMIT_MEMLOCK of the first process, bytes; null = unlimited. Default 8 MiB (Linux's default). */
  memlockLimit?: bigint | null;
  /** The first process has CAP_IPC_LOCK (the limit is not enforced, the charge still counted). */
  capIpcLock?: boolean;
  /** Free hugetlb pages per page shift, e.g. { 21: 512 }. Default none reserved. */
  hugePages?: Record<number, number>;
  /**
   * Huge page sizes the kernel has (an hstate each, as listed in /sys/kernel/mm/hugepages; radix:
   * 21 and 30). memfd_create(MFD_HUGETLB) of any other size is ENODEV [seen]. Default [21, 30].
   */
  hugePageShifts?: number[];
}

/** One recorded call, for tests that check the order and number of ioctls. */
export interface SimulatedCall {
  pid: number;
  op: string;
  fd?: number;
  /** 'ok' or the error code. */
  result: string;
  detail?: Record<string, string | number>;
}

// ----------------------------------------------------------------------------
// Kernel objects

interface Memfd {
  id: number;
  name: string;
  size: bigint;
  hugePageShift: number | null;
  chunks: Map<bigint, Buffer>;
}

interface Mapping {
  addr: bigint;
  size: bigint;
  memfd: Memfd;
  offset: bigint;
  pageShift: number;
  hugePages: number;
}

/** A piece of user memory resolved to the file behind it (pinned pages). */
interface Piece {
  vaddr: bigint;
  size: bigint;
  memfd: Memfd;
  offset: bigint;
  pageShift: number;
}

interface Region {
  vaddr: bigint;
  size: bigint;
  pageShift: number;
  pieces: Piece[];
  users: number;
  chargedPages: number;
  leaked: boolean;
}

class Mm {
  lockedPages = 0;
  /** Locked memory the process holds for other reasons (mlock, other drivers): fault injection. */
  externalLockedBytes = 0n;
  regions: Region[] = [];
  mappings: Mapping[] = [];
  nextAddr = 0x7e0000000000n;
  constructor(readonly id: number) {}
}

interface Extent {
  /** First entry (iova >> pageShift, absolute). */
  first: bigint;
  count: bigint;
  vaddr: bigint;
  pieces: Piece[];
  write: boolean;
  read: boolean;
}

interface Table {
  start: bigint;
  pageShift: number;
  entries: bigint;
  levels: number;
  chargedPages: number;
  isDefault: boolean;
  /** The window sits where the 32-bit default window lives (slot 0, dma32 start). */
  isDefaultSlot: boolean;
  extents: Extent[];
}

interface TceDriver {
  v2: boolean;
  mm: Mm | null;
  enabled: boolean;
  enableLockedPages: number;
  tables: (Table | null)[];
  defWindowPending: boolean;
  prereg: Region[];
  groups: SimGroup[];
}

interface Container {
  id: number;
  groups: SimGroup[];
  driver: TceDriver | null;
}

interface PeState {
  ioStopped: boolean;
  dmaStopped: boolean;
  reset: boolean;
}

interface SimDevice {
  hostDriver: string | null;
  vendorId: number;
  deviceId: number;
  configSize: number;
  resources: PciResource[];
  msixBar: number | null;
}

interface SimGroup {
  number: number;
  devices: Map<string, SimDevice>;
  dynamicWindows: boolean;
  file: GroupFile | null;
  container: Container | null;
  deviceUsers: number;
  removed: boolean;
  busyElsewhere: boolean;
  pe: PeState | null;
  /**
   * pseries: a second TCE_CREATE while a dynamic window sat in slot 0 failed with ENODEV and left
   * the PE without DMA windows: every later window creation fails with ENODEV (seen on 6.12).
   */
  ddwBroken: boolean;
}

interface FileBase {
  refs: number;
  path: string | undefined;
}
interface ContainerFile extends FileBase {
  kind: 'container';
  container: Container;
}
interface GroupFile extends FileBase {
  kind: 'group';
  group: SimGroup;
}
interface DeviceFile extends FileBase {
  kind: 'device';
  group: SimGroup;
  groupFile: GroupFile;
  name: string;
}
interface MemfdFile extends FileBase {
  kind: 'memfd';
  memfd: Memfd;
}
interface SocketMessage {
  data: Buffer;
  files: OpenFile[];
}
interface SocketFile extends FileBase {
  kind: 'socket';
  peer: SocketFile | null;
  queue: SocketMessage[];
}
type OpenFile = ContainerFile | GroupFile | DeviceFile | MemfdFile | SocketFile;

const CHUNK = 4096n;

function isPow2(v: bigint): boolean {
  return v > 0n && (v & (v - 1n)) === 0n;
}

function ilog2(v: bigint): number {
  let n = 0;
  while (v > 1n) {
    v >>= 1n;
    n++;
  }
  return n;
}

function ctz(v: bigint): number {
  if (v === 0n) return 64;
  let n = 0;
  while ((v & 1n) === 0n) {
    v >>= 1n;
    n++;
  }
  return n;
}

function tableEnd(t: Table): bigint {
  return t.start + (t.entries << BigInt(t.pageShift));
}

// ----------------------------------------------------------------------------

/**
 * The simulated kernel. `process()` gives the first process's binding;
 * `spawnProcess()` and `SimulatedProcess.fork()` give others (the mm rule).
 */
export class SimulatedKernel {
  readonly platform: Platform;
  readonly profile: PlatformProfile;
  readonly pageSize: number;
  readonly pageShift: number;
  readonly calls: SimulatedCall[] = [];
  private readonly groups = new Map<number, SimGroup>();
  private readonly processes = new Map<number, SimulatedProcess>();
  private readonly drivers = new Set<TceDriver>();
  private readonly hugePool = new Map<number, number>();
  private readonly hugePageShifts: Set<number>;
  private oops: KernelOopsError | null = null;
  private nextPid = 1000;
  private nextId = 1;
  private readonly first: SimulatedProcess;

  constructor(options: SimulatedKernelOptions) {
    this.platform = options.platform;
    const profile = PLATFORM_PROFILES[options.platform];
    if (!profile) throw new RangeError(`unknown platform ${String(options.platform)}`);
    this.profile = profile;
    this.pageSize = options.pageSize ?? 4096;
    if (this.pageSize !== 4096 && this.pageSize !== 65536) throw new RangeError('pageSize must be 4096 or 65536');
    this.pageShift = ilog2(BigInt(this.pageSize));
    this.hugePageShifts = new Set(options.hugePageShifts ?? [21, 30]);
    for (const [shift, count] of Object.entries(options.hugePages ?? {})) this.hugePool.set(Number(shift), count);
    for (const spec of options.groups) this.addGroup(spec);
    this.first = this.newProcess(options.memlockLimit === undefined ? 8n << 20n : options.memlockLimit, options.capIpcLock ?? false);
  }

  /** Hot-plug: a group the kernel did not know appears (a device bound to vfio-pci). */
  addGroup(spec: SimulatedGroupSpec): void {
    checkGroupNumber(spec.group);
    if (this.groups.has(spec.group)) throw new RangeError(`group ${spec.group} given twice`);
    this.groups.set(spec.group, {
      number: spec.group,
      devices: new Map(
        spec.devices.map((d, i): [string, SimDevice] => [
          d,
          {
            hostDriver: null,
            vendorId: spec.vendorId ?? 0x1234,
            deviceId: spec.deviceId ?? 0x11e8,
            configSize: spec.pcie ? CONFIG_SIZE_PCIE : CONFIG_SIZE_PCI,
            resources: spec.resources ?? defaultResources(spec.group, i),
            msixBar: spec.msixBar ?? null,
          },
        ]),
      ),
      dynamicWindows: spec.dynamicWindows ?? true,
      file: null,
      container: null,
      deviceUsers: 0,
      removed: spec.devices.length === 0,
      busyElsewhere: false,
      ddwBroken: false,
      pe: this.profile.eeh ? { ioStopped: false, dmaStopped: false, reset: false } : null,
    });
  }

  /** What sysfs shows for a device: its `resource` file and the size of its `config` file. */
  pciDevice(name: string): { resource: string; configSize: number } | null {
    for (const g of this.groups.values()) {
      const dev = g.devices.get(name);
      if (dev) return { resource: formatPciResource(dev.resources), configSize: dev.configSize };
    }
    return null;
  }

  /** Huge page sizes (shifts) the kernel has an hstate for. */
  hugePageSizes(): number[] {
    return [...this.hugePageShifts].sort((a, b) => a - b);
  }

  /** Whether the kernel knows the group. */
  hasGroup(group: number): boolean {
    return this.groups.has(group);
  }

  /** The first process (the plugin). */
  process(): SimulatedProcess {
    return this.first;
  }

  /** A new, unrelated process with its own fds and mm. */
  spawnProcess(options: { memlockLimit?: bigint | null; capIpcLock?: boolean } = {}): SimulatedProcess {
    return this.newProcess(options.memlockLimit === undefined ? 8n << 20n : options.memlockLimit, options.capIpcLock ?? false);
  }

  /** True after a simulated Oops: every call then fails with KernelOopsError. */
  get dead(): boolean {
    return this.oops !== null;
  }

  get oopsError(): KernelOopsError | null {
    return this.oops;
  }

  // --- fault injection -------------------------------------------------------

  /** EEH freezes the group's PE (IO and DMA stopped, or DMA only). No effect without EEH. */
  freezePe(group: number, options: { dmaOnly?: boolean } = {}): void {
    const g = this.mustGroup(group);
    if (!g.pe) return;
    g.pe.dmaStopped = true;
    g.pe.ioStopped = !options.dmaOnly;
  }

  /** The state EEH_PE_OP GET_STATE would return, or null where the group has no PE. */
  peState(group: number): number | null {
    const g = this.mustGroup(group);
    return g.pe ? this.peStateOf(g) : null;
  }

  /** Hot-unplugs a device; when the last one goes the group is gone (open: ENOENT; fds: ENODEV). */
  removeDevice(group: number, name?: string): void {
    const g = this.mustGroup(group);
    if (name === undefined) g.devices.clear();
    else g.devices.delete(name);
    if (g.devices.size === 0 && !g.removed) {
      if (g.container) this.detachGroup(g);
      g.removed = true;
    }
  }

  /** Another user (outside the simulated processes) holds the group open: open() is EBUSY. */
  setGroupBusy(group: number, busy: boolean): void {
    this.mustGroup(group).busyElsewhere = busy;
  }

  /** Binds a DMA-capable host driver to a device (null unbinds): the group stops being viable. */
  bindHostDriver(group: number, name: string, driver: string | null): void {
    const dev = this.mustGroup(group).devices.get(name);
    if (!dev) throw new RangeError(`no device ${name} in group ${group}`);
    dev.hostDriver = driver;
  }

  /** Device-side DMA read through the group's IOMMU. An unmapped iova is blocked and freezes the PE. */
  dmaRead(group: number, iova: bigint, length: number): Buffer {
    const out = Buffer.alloc(length);
    this.dmaWalk(this.mustGroup(group), iova, BigInt(length), false, (memfd, offset, pos, len) => {
      readMemfd(memfd, offset, len).copy(out, pos);
    });
    return out;
  }

  /** Device-side DMA write through the group's IOMMU. */
  dmaWrite(group: number, iova: bigint, data: Uint8Array): void {
    this.dmaWalk(this.mustGroup(group), iova, BigInt(data.length), true, (memfd, offset, pos, len) => {
      writeMemfd(memfd, offset, Buffer.from(data.buffer, data.byteOffset + pos, len));
    });
  }

  /** Number of TCE entries currently mapped in the group's container (0 when none). */
  mappedEntries(group: number): bigint {
    const driver = this.mustGroup(group).container?.driver;
    if (!driver) return 0n;
    let n = 0n;
    for (const t of driver.tables) for (const e of t?.extents ?? []) n += e.count;
    return n;
  }

  /** Free hugetlb pages of a size. */
  freeHugePages(shift: number): number {
    return this.hugePool.get(shift) ?? 0;
  }

  // --- internals shared with SimulatedProcess -------------------------------

  /** @internal */
  assertAlive(): void {
    if (this.oops) throw new KernelOopsError(`the kernel died earlier (${this.oops.message})`);
  }

  /** @internal */
  record(call: SimulatedCall): void {
    this.calls.push(call);
  }

  /** @internal */
  newId(): number {
    return this.nextId++;
  }

  private newProcess(memlock: bigint | null, capIpcLock: boolean): SimulatedProcess {
    const pid = this.nextPid++;
    const p = new SimulatedProcess(this, pid, new Mm(pid), { soft: memlock, hard: memlock }, capIpcLock);
    this.processes.set(pid, p);
    return p;
  }

  /** @internal */
  forkProcess(parent: SimulatedProcess): SimulatedProcess {
    const child = this.newProcess(parent.memlock.soft, parent.capIpcLock);
    child.memlock = { ...parent.memlock };
    for (const [fd, file] of parent.fdTable()) {
      file.refs++;
      child.fdTable().set(fd, file);
    }
    // The child gets a copy of the address space: same mappings, its own mm.
    for (const m of parent.mm.mappings) child.mm.mappings.push({ ...m, hugePages: 0 });
    child.mm.nextAddr = parent.mm.nextAddr;
    return child;
  }

  /** @internal */
  exitProcess(p: SimulatedProcess): void {
    for (const fd of [...p.fdTable().keys()]) {
      const file = p.fdTable().get(fd)!;
      p.fdTable().delete(fd);
      this.putFile(file);
    }
    for (const m of p.mm.mappings) this.releaseHuge(m);
    p.mm.mappings = [];
    // Regions leaked by UNREGISTER-while-mapped stay charged until exit.
    for (const r of p.mm.regions) if (r.users === 0) this.unaccount(p.mm, r.chargedPages);
    p.mm.regions = [];
    this.processes.delete(p.pid);
  }

  private mustGroup(group: number): SimGroup {
    const g = this.groups.get(group);
    if (!g) throw new RangeError(`the simulated kernel has no group ${group}`);
    return g;
  }

  /** @internal */
  lookupGroup(group: number): SimGroup | undefined {
    return this.groups.get(group);
  }

  /** @internal */
  peStateOf(g: SimGroup): number {
    if (g.removed) return C.eehPeState.unavailable;
    const pe = g.pe!;
    if (pe.reset) return C.eehPeState.reset;
    if (pe.ioStopped && pe.dmaStopped) return C.eehPeState.stopped;
    if (pe.dmaStopped) return C.eehPeState.stoppedDma;
    return C.eehPeState.normal;
  }

  /** @internal: account_locked_vm(mm, pages, true). */
  account(proc: SimulatedProcess, mm: Mm, pages: number): boolean {
    const limit = proc.memlock.soft;
    if (!proc.capIpcLock && limit !== null) {
      const externalPages = Number((mm.externalLockedBytes + BigInt(this.pageSize) - 1n) / BigInt(this.pageSize));
      if (mm.lockedPages + externalPages + pages > Number(limit >> BigInt(this.pageShift))) return false;
    }
    mm.lockedPages += pages;
    return true;
  }

  /** @internal */
  unaccount(mm: Mm, pages: number): void {
    mm.lockedPages -= pages;
    if (mm.lockedPages < 0) throw new Error('simulator bug: locked_vm went negative');
  }

  /** @internal: reserve hugetlb pages at mmap time. */
  reserveHuge(shift: number, pages: number): boolean {
    const free = this.hugePool.get(shift) ?? 0;
    if (free < pages) return false;
    this.hugePool.set(shift, free - pages);
    return true;
  }

  /** @internal */
  releaseHuge(m: Mapping): void {
    if (m.hugePages > 0 && m.memfd.hugePageShift !== null) {
      this.hugePool.set(m.memfd.hugePageShift, (this.hugePool.get(m.memfd.hugePageShift) ?? 0) + m.hugePages);
      m.hugePages = 0;
    }
  }

  /** @internal */
  supportsHugeShift(shift: number): boolean {
    return this.hugePageShifts.has(shift);
  }

  /** @internal: drop one reference to an open file description; release at zero. */
  putFile(file: OpenFile): void {
    file.refs--;
    if (file.refs > 0) return;
    switch (file.kind) {
      case 'group':
        this.releaseGroupFile(file);
        break;
      case 'device':
        file.group.deviceUsers--;
        this.putFile(file.groupFile);
        break;
      case 'container':
        // Attached groups keep the container alive; it is torn down when they leave.
        break;
      case 'socket':
        if (file.peer) file.peer.peer = null;
        for (const msg of file.queue) for (const f of msg.files) this.putFile(f);
        file.queue = [];
        break;
      case 'memfd':
        break;
    }
  }

  private releaseGroupFile(file: GroupFile): void {
    const g = file.group;
    if (g.container) this.detachGroup(g);
    if (g.file === file) g.file = null;
  }

  // --- vfio core + tce driver -------------------------------------------------

  /** @internal: tce_iommu_attach_group. Throws an errno code. */
  attachGroup(driver: TceDriver, g: SimGroup): void {
    if (driver.v2 && (!g.dynamicWindows || this.profile.maxDynamicWindows === 0)) throw 'EINVAL';
    if (!driver.v2 && driver.groups.length > 0) throw 'EBUSY';
    if (driver.v2 && this.profile.family === 'pseries' && driver.groups.length > 0 && driver.tables.some((t) => t !== null)) {
      throw 'EPERM';
    }
    // v1 and v2 alike (6.12): the first group leaves the default window pending; the first
    // MAP_DMA/UNMAP_DMA (v1: after ENABLE) or TCE_CREATE creates it and charges its table [seen].
    // powernv programs existing windows into a later group's PE; nothing to model beyond membership.
    if (driver.groups.length === 0 && !driver.tables[0]) driver.defWindowPending = true;
    driver.groups.push(g);
  }

  /** @internal: vfio_group_detach_container (+ driver release when the last group leaves). */
  detachGroup(g: SimGroup): void {
    const container = g.container;
    if (!container) return;
    const driver = container.driver;
    if (driver) {
      driver.groups = driver.groups.filter((x) => x !== g);
      // The windows are unset from the leaving PE; the tables (and their charge) go with the driver.
    }
    container.groups = container.groups.filter((x) => x !== g);
    g.container = null;
    if (container.groups.length === 0 && driver) {
      this.releaseDriver(driver);
      container.driver = null;
    }
  }

  /** tce_iommu_release: clear and free tables, free preregistered memory, disable, drop the mm. */
  private releaseDriver(driver: TceDriver): void {
    for (let i = 0; i < driver.tables.length; i++) {
      const t = driver.tables[i];
      if (!t) continue;
      t.extents = [];
      if (driver.mm && t.chargedPages) this.unaccount(driver.mm, t.chargedPages);
      driver.tables[i] = null;
    }
    for (const r of [...driver.prereg]) this.preregFree(driver, r);
    if (driver.enabled) {
      driver.enabled = false;
      if (driver.mm) this.unaccount(driver.mm, driver.enableLockedPages);
      driver.enableLockedPages = 0;
    }
    driver.mm = null;
    driver.defWindowPending = false;
    this.drivers.delete(driver);
  }

  /** @internal */
  newDriver(v2: boolean): TceDriver {
    const d: TceDriver = {
      v2,
      mm: null,
      enabled: false,
      enableLockedPages: 0,
      tables: [null, null],
      defWindowPending: false,
      prereg: [],
      groups: [],
    };
    this.drivers.add(d);
    return d;
  }

  /** @internal: SET_IOMMU failed part-way; forget the driver (attach charges nothing). */
  abandonDriver(driver: TceDriver): void {
    driver.groups = [];
    driver.tables = [null, null];
    driver.defWindowPending = false;
    this.drivers.delete(driver);
  }

  /** @internal: is any TCE of any container of this mm pointing into the region? */
  regionMapped(mm: Mm, r: Region): boolean {
    for (const d of this.drivers) {
      if (d.mm !== mm) continue;
      for (const t of d.tables) {
        for (const e of t?.extents ?? []) {
          const len = e.count << BigInt(t!.pageShift);
          if (e.vaddr < r.vaddr + r.size && r.vaddr < e.vaddr + len) return true;
        }
      }
    }
    return false;
  }

  /** @internal: tce_iommu_prereg_free + mm_iommu_put. UNREGISTER while mapped returns 0 but leaks. */
  preregFree(driver: TceDriver, r: Region): void {
    driver.prereg = driver.prereg.filter((x) => x !== r);
    r.users--;
    if (r.users > 0 || !driver.mm) return;
    // Once leaked, a region stays pinned and charged for the life of the process, even if it is
    // registered again and everything is closed [seen: 64 KiB kept after a partial unmap].
    if (r.leaked || this.regionMapped(driver.mm, r)) {
      r.leaked = true;
      return;
    }
    driver.mm.regions = driver.mm.regions.filter((x) => x !== r);
    this.unaccount(driver.mm, r.chargedPages);
  }

  /** @internal: the platform's get_table_size; 0 means the parameters are refused (EINVAL). */
  tableSize(pageShift: number, windowSize: bigint, levels: number): bigint {
    if (this.profile.family === 'pseries') {
      // entries * 8, no minimum, power of two or not: levels > 1 and a size that is not a power of
      // two are refused only after the charge (createWindow) [seen: 3 MiB leaked one page].
      return (windowSize >> BigInt(pageShift)) * 8n;
    }
    if (!isPow2(windowSize)) return 0n;
    // A window smaller than one IOMMU page still gets a minimal table (created at 0x0, 8 KiB
    // charged on a 4K-page kernel, seen for 8K..32K windows of 64K pages).
    const entriesShift = Math.max(0, ilog2(windowSize) - pageShift);
    if (levels < 1 || levels > this.profile.maxLevels) return 0n;
    let tceTableSize = 1n << BigInt(entriesShift + 3);
    if (tceTableSize < 0x1000n) tceTableSize = 0x1000n;
    const levelEntriesShift = Math.ceil(entriesShift / levels);
    const directShift = Math.max(levelEntriesShift + 3, this.pageShift);
    const direct = 1n << BigInt(directShift);
    let bytes = 0n;
    for (let l = levels; l > 0; l--) {
      bytes += ((tceTableSize + direct - 1n) / direct) * direct;
      tceTableSize = (tceTableSize / direct) << 3n;
      if (tceTableSize < direct) tceTableSize = direct;
    }
    return bytes * 2n; // the hardware table and its userspace view
  }

  /** @internal: tce_iommu_create_window. Returns the table or throws an errno code. */
  createWindow(proc: SimulatedProcess, driver: TceDriver, pageShift: number, windowSize: bigint, levels: number, isDefault: boolean): Table {
    const num = driver.tables.findIndex((t) => t === null);
    if (num < 0 || num >= this.profile.maxDynamicWindows) throw 'ENOSPC';
    if (pageShift > 63 || ((this.profile.pgsizes >> BigInt(pageShift)) & 1n) === 0n) throw 'EINVAL';
    const pseries = this.profile.family === 'pseries';
    // pseries programs a table only into the PE it was built for: with two groups attached every
    // window creation (the pending default one at the first MAP/UNMAP too) is EPERM, before any
    // charge [seen]. So several groups in one pseries v2 container can never get a window.
    if (pseries && driver.groups.length > 1) throw 'EPERM';
    if (pseries && levels === 0) levels = 1; // [seen] levels 0 is one level on pseries
    const size = pseries && levels > 1 ? PSERIES_MULTILEVEL_CHARGE : this.tableSize(pageShift, windowSize, levels);
    // pseries re-creates the 32-bit default window for a 4K-page request in slot 0 even when it is
    // smaller than one page: an empty window at the dma32 start, uncharged, that TCE_REMOVE cannot
    // find (EINVAL) and close removes [seen with 2 KiB]. Sub-page dynamic windows are EINVAL.
    const emptyDefault = pseries && size === 0n && pageShift === IOMMU_PAGE_SHIFT_4K && driver.tables[0] === null && !driver.tables[1];
    if (size === 0n && !emptyDefault) throw 'EINVAL';
    // tce_iommu_create_table: account_locked_vm(table_size >> PAGE_SHIFT), then create_table.
    const pages = Number(size >> BigInt(this.pageShift));
    if (!this.account(proc, driver.mm!, pages)) throw 'ENOMEM';
    // From here a failure does NOT return the charge: the kernel never un-accounts when
    // create_table fails, so it stays in locked_vm until the process exits [seen].
    const pe = driver.groups[0];
    let start: bigint;
    if (this.profile.family === 'powernv') {
      const entriesShift = Math.max(0, ilog2(windowSize) - pageShift);
      const levelShift = Math.max(Math.ceil(entriesShift / levels) + 3, this.pageShift);
      if ((levelShift - 3) * levels + pageShift >= 55) throw 'EINVAL';
      // Each level is one page allocation of at most PAGE_SIZE << MAX_PAGE_ORDER (16 MiB with 4K
      // or 64K pages): one level holds up to 2M entries [seen: 4K x 8 GiB, 64K x 128 GiB accepted].
      if (levelShift > this.pageShift + kernelMaxPageOrder(this.pageSize)) throw 'ENOMEM';
      start = num === 0 ? this.profile.dma32Start : DDW_START;
    } else {
      if (levels > 1 || !isPow2(windowSize)) throw 'EINVAL';
      if (pe?.ddwBroken) throw 'ENODEV';
      // pseries allocates the whole table at once; a very large one cannot be allocated.
      if (size > BigInt(this.pageSize) << BigInt(PSERIES_MAX_TABLE_ORDER)) throw 'ENOMEM';
      const other = driver.tables[num === 0 ? 1 : 0] ?? null;
      const defaultRequest = pageShift === IOMMU_PAGE_SHIFT_4K && windowSize <= this.profile.dma32Size;
      if (num === 0 && (isDefault || defaultRequest)) {
        // The 32-bit default window is re-created in slot 0, at the dma32 start; not while
        // a dynamic window exists [seen: EPERM, charge kept].
        if (other) throw 'EPERM';
        start = this.profile.dma32Start;
      } else if (other && !other.isDefaultSlot) {
        // A second window while a dynamic window holds slot 0: ENODEV, and the PE loses its
        // windows until reboot [seen].
        if (pe) pe.ddwBroken = true;
        throw 'ENODEV';
      } else {
        start = DDW_START; // ibm,create-pe-dma-window: QEMU answers 1 << 59 [seen]
      }
    }
    const table: Table = {
      start,
      pageShift,
      // powernv rounds a sub-page window up to one entry (TCE_REMOVE finds it [seen]); pseries' stays empty.
      entries: windowSize >> BigInt(pageShift) || (pseries ? 0n : 1n),
      levels,
      chargedPages: pages,
      isDefault,
      isDefaultSlot: start === this.profile.dma32Start && num === 0,
      extents: [],
    };
    driver.tables[num] = table;
    return table;
  }

  /** @internal: tce_iommu_create_default_window. */
  createDefaultWindow(proc: SimulatedProcess, driver: TceDriver): void {
    if (!driver.defWindowPending) return;
    if (driver.groups.length === 0) throw 'ENODEV';
    this.createWindow(proc, driver, IOMMU_PAGE_SHIFT_4K, this.profile.dma32Size, 1, true);
    driver.defWindowPending = false;
  }

  /** @internal: the Oops. */
  die(message: string): never {
    this.oops = new KernelOopsError(message);
    throw this.oops;
  }

  private dmaWalk(
    g: SimGroup,
    iova: bigint,
    length: bigint,
    write: boolean,
    fn: (memfd: Memfd, offset: bigint, pos: number, len: number) => void,
  ): void {
    this.assertAlive();
    const blocked = (why: string): never => {
      if (g.pe) {
        g.pe.dmaStopped = true;
        g.pe.ioStopped = true;
      }
      throw new Error(`DMA ${write ? 'write' : 'read'} at iova 0x${iova.toString(16)} blocked: ${why}`);
    };
    if (g.removed) blocked('the group is gone');
    if (g.pe && (g.pe.dmaStopped || g.pe.reset)) blocked('the PE is frozen');
    const driver = g.container?.driver;
    if (!driver) blocked('no IOMMU container');
    let pos = 0n;
    while (pos < length) {
      const cur = iova + pos;
      const t = driver!.tables.find((x) => x !== null && x.start <= cur && cur < tableEnd(x));
      if (!t) blocked('no window');
      const idx = cur >> BigInt(t!.pageShift);
      const e = t!.extents.find((x) => x.first <= idx && idx < x.first + x.count);
      if (!e) blocked('no TCE');
      if (write ? !e!.write : !e!.read) blocked('TCE permission');
      const pageSize = 1n << BigInt(t!.pageShift);
      const inPage = cur & (pageSize - 1n);
      let len = pageSize - inPage;
      if (len > length - pos) len = length - pos;
      const vaddr = e!.vaddr + ((idx - e!.first) << BigInt(t!.pageShift)) + inPage;
      let done = 0n;
      while (done < len) {
        const va = vaddr + done;
        const piece = e!.pieces.find((p) => p.vaddr <= va && va < p.vaddr + p.size);
        if (!piece) blocked('simulator bug: unpinned page');
        let n = piece!.vaddr + piece!.size - va;
        if (n > len - done) n = len - done;
        fn(piece!.memfd, piece!.offset + (va - piece!.vaddr), Number(pos + done), Number(n));
        done += n;
      }
      pos += len;
    }
  }
}

function readMemfd(m: Memfd, offset: bigint, len: number): Buffer {
  const out = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const abs = offset + BigInt(done);
    const idx = abs / CHUNK;
    const within = Number(abs % CHUNK);
    const n = Math.min(len - done, Number(CHUNK) - within);
    const chunk = m.chunks.get(idx);
    if (chunk) chunk.copy(out, done, within, within + n);
    done += n;
  }
  return out;
}

function writeMemfd(m: Memfd, offset: bigint, data: Buffer): void {
  let done = 0;
  while (done < data.length) {
    const abs = offset + BigInt(done);
    const idx = abs / CHUNK;
    const within = Number(abs % CHUNK);
    const n = Math.min(data.length - done, Number(CHUNK) - within);
    let chunk = m.chunks.get(idx);
    if (!chunk) {
      chunk = Buffer.alloc(Number(CHUNK));
      m.chunks.set(idx, chunk);
    }
    data.copy(chunk, within, done, done + n);
    done += n;
  }
}

// ----------------------------------------------------------------------------

const IOCTL = {
  getApiVersion: 'VFIO_GET_API_VERSION',
  checkExtension: 'VFIO_CHECK_EXTENSION',
  setIommu: 'VFIO_SET_IOMMU',
  groupGetStatus: 'VFIO_GROUP_GET_STATUS',
  groupSetContainer: 'VFIO_GROUP_SET_CONTAINER',
  groupUnsetContainer: 'VFIO_GROUP_UNSET_CONTAINER',
  groupGetDeviceFd: 'VFIO_GROUP_GET_DEVICE_FD',
  deviceGetRegionInfo: 'VFIO_DEVICE_GET_REGION_INFO',
  getInfo: 'VFIO_IOMMU_SPAPR_TCE_GET_INFO',
  mapDma: 'VFIO_IOMMU_MAP_DMA',
  unmapDma: 'VFIO_IOMMU_UNMAP_DMA',
  enable: 'VFIO_IOMMU_ENABLE',
  disable: 'VFIO_IOMMU_DISABLE',
  registerMemory: 'VFIO_IOMMU_SPAPR_REGISTER_MEMORY',
  unregisterMemory: 'VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY',
  tceCreate: 'VFIO_IOMMU_SPAPR_TCE_CREATE',
  tceRemove: 'VFIO_IOMMU_SPAPR_TCE_REMOVE',
  eehPeOp: 'VFIO_EEH_PE_OP',
} as const;

type IoctlName = (typeof IOCTL)[keyof typeof IOCTL];

/** One simulated process: a VfioBinding with its own fd table, mm and limits. */
export class SimulatedProcess implements VfioBinding {
  readonly kind = 'simulated' as const;
  readonly constants = SIMULATED_CONSTANTS;
  readonly pageSize: number;
  private readonly fds = new Map<number, OpenFile>();
  private exited = false;

  /** @internal */
  constructor(
    readonly kernel: SimulatedKernel,
    readonly pid: number,
    /** @internal */ readonly mm: Mm,
    public memlock: MemlockLimit,
    public capIpcLock: boolean,
  ) {
    this.pageSize = kernel.pageSize;
  }

  /** @internal */
  fdTable(): Map<number, OpenFile> {
    return this.fds;
  }

  /** fork(): a child sharing every open file, with its own mm (EPERM on a container whose mm is ours). */
  fork(): SimulatedProcess {
    this.alive();
    return this.kernel.forkProcess(this);
  }

  /** The process exits: every fd closes, every mapping goes, leaked registrations are finally un-charged. */
  exit(): void {
    if (this.exited) return;
    this.kernel.exitProcess(this);
    this.exited = true;
  }

  setMemlockLimit(bytes: bigint | null): void {
    this.memlock = { soft: bytes, hard: bytes };
  }

  setCapIpcLock(on: boolean): void {
    this.capIpcLock = on;
  }

  /** Locks memory for reasons outside VFIO (fault injection: memlock exhausted). */
  lockExternal(bytes: bigint): void {
    this.mm.externalLockedBytes = bytes;
  }

  /** Uses up the whole RLIMIT_MEMLOCK with memory locked elsewhere. */
  exhaustMemlock(): void {
    const limit = this.memlock.soft;
    if (limit === null) throw new RangeError('the memlock limit is unlimited; set one first');
    this.mm.externalLockedBytes = limit;
  }

  /** Open fd numbers, for leak checks. */
  openFds(): number[] {
    return [...this.fds.keys()].sort((a, b) => a - b);
  }

  /** Live mappings of this process (address, size), for leak checks. */
  mappings(): Array<{ address: bigint; size: bigint }> {
    return this.mm.mappings.map((m) => ({ address: m.addr, size: m.size }));
  }

  // --- helpers ----------------------------------------------------------------

  private alive(): void {
    this.kernel.assertAlive();
    if (this.exited) throw new Error(`simulated process ${this.pid} has exited`);
  }

  private err(code: string, syscall: string, fd?: number, ioctl?: IoctlName, path?: string): VfioError {
    const file = fd === undefined ? undefined : this.fds.get(fd);
    return new VfioError(code, { syscall, ioctl, fd, path: path ?? file?.path });
  }

  /** Runs one ioctl with the kernel's bookkeeping: liveness, the call log, errno codes thrown as strings. */
  private ioctl<T>(name: IoctlName, fd: number, body: () => T, detail?: Record<string, string | number>): T {
    this.alive();
    try {
      const result = body();
      this.kernel.record({ pid: this.pid, op: name, fd, result: 'ok', ...(detail ? { detail } : {}) });
      return result;
    } catch (e) {
      if (typeof e === 'string') {
        this.kernel.record({ pid: this.pid, op: name, fd, result: e, ...(detail ? { detail } : {}) });
        throw this.err(e, 'ioctl', fd, name);
      }
      if (e instanceof PositiveReturn) {
        this.kernel.record({ pid: this.pid, op: name, fd, result: `+${e.value}`, ...(detail ? { detail } : {}) });
        throw new VfioError(UNEXPECTED_RETURN, { syscall: 'ioctl', ioctl: name, fd, path: this.fds.get(fd)?.path }, e.value);
      }
      if (e instanceof KernelOopsError) this.kernel.record({ pid: this.pid, op: name, fd, result: 'OOPS' });
      throw e;
    }
  }

  private file(fd: number): OpenFile {
    const f = this.fds.get(fd);
    if (!f) throw 'EBADF';
    return f;
  }

  private containerOf(fd: number): Container {
    const f = this.file(fd);
    if (f.kind !== 'container') throw 'ENOTTY';
    return f.container;
  }

  /** Container ioctls the vfio core passes to the IOMMU driver: EINVAL before SET_IOMMU, EPERM from a foreign mm. */
  private driverOf(fd: number): TceDriver {
    const c = this.containerOf(fd);
    if (!c.driver) throw 'EINVAL';
    if (c.driver.mm && c.driver.mm !== this.mm) throw 'EPERM';
    return c.driver;
  }

  /** tce_iommu_mm_set. */
  private mmSet(d: TceDriver): void {
    if (d.mm) {
      if (d.mm !== this.mm) throw 'EPERM';
      return;
    }
    d.mm = this.mm;
  }

  private groupFileOf(fd: number): GroupFile {
    const f = this.file(fd);
    // On a container fd, unknown ioctls are EINVAL before SET_IOMMU (the container has no
    // driver to pass them to) and ENOTTY after (the driver does not know them) [seen].
    if (f.kind === 'container') throw f.container.driver ? 'ENOTTY' : 'EINVAL';
    if (f.kind !== 'group') throw 'ENOTTY';
    return f;
  }

  private installFd(file: OpenFile): number {
    let fd = 3;
    while (this.fds.has(fd)) fd++;
    this.fds.set(fd, file);
    return fd;
  }

  /** Resolves [vaddr, vaddr+size) through this process's mappings; null when a hole is found. */
  private resolve(vaddr: bigint, size: bigint): Piece[] | null {
    const pieces: Piece[] = [];
    let cur = vaddr;
    const end = vaddr + size;
    while (cur < end) {
      const m = this.mm.mappings.find((x) => x.addr <= cur && cur < x.addr + x.size);
      if (!m) return null;
      const pieceEnd = m.addr + m.size < end ? m.addr + m.size : end;
      pieces.push({ vaddr: cur, size: pieceEnd - cur, memfd: m.memfd, offset: m.offset + (cur - m.addr), pageShift: m.pageShift });
      cur = pieceEnd;
    }
    return pieces;
  }

  // --- /dev/vfio ----------------------------------------------------------------

  async openContainer(devRoot: string): Promise<number> {
    checkString('devRoot', devRoot);
    this.alive();
    const path = containerPath(devRoot);
    const container: Container = { id: this.kernel.newId(), groups: [], driver: null };
    const fd = this.installFd({ kind: 'container', refs: 1, path, container });
    this.kernel.record({ pid: this.pid, op: 'open', fd, result: 'ok', detail: { path } });
    return fd;
  }

  async openGroup(devRoot: string, group: number): Promise<number> {
    checkString('devRoot', devRoot);
    checkGroupNumber(group);
    this.alive();
    const path = groupPath(devRoot, group);
    const g = this.kernel.lookupGroup(group);
    const fail = (code: string): never => {
      this.kernel.record({ pid: this.pid, op: 'open', result: code, detail: { path } });
      throw this.err(code, 'open', undefined, undefined, path);
    };
    if (!g || g.removed) fail('ENOENT');
    if (g!.file || g!.busyElsewhere) fail('EBUSY');
    const file: GroupFile = { kind: 'group', refs: 1, path, group: g! };
    g!.file = file;
    const fd = this.installFd(file);
    this.kernel.record({ pid: this.pid, op: 'open', fd, result: 'ok', detail: { path } });
    return fd;
  }

  async close(fd: number): Promise<void> {
    checkFd('fd', fd);
    this.alive();
    const file = this.fds.get(fd);
    if (!file) {
      this.kernel.record({ pid: this.pid, op: 'close', fd, result: 'EBADF' });
      throw this.err('EBADF', 'close', fd);
    }
    this.fds.delete(fd);
    this.kernel.putFile(file);
    this.kernel.record({ pid: this.pid, op: 'close', fd, result: 'ok' });
  }

  // --- container ioctls -------------------------------------------------------------

  async getApiVersion(containerFd: number): Promise<number> {
    checkFd('containerFd', containerFd);
    return this.ioctl(IOCTL.getApiVersion, containerFd, () => {
      this.containerOf(containerFd);
      return C.apiVersion;
    });
  }

  async checkExtension(containerFd: number, extension: number): Promise<number> {
    checkFd('containerFd', containerFd);
    checkU32('extension', extension);
    return this.ioctl(IOCTL.checkExtension, containerFd, () => {
      this.containerOf(containerFd);
      if (extension === C.spaprTceIommu || extension === C.spaprTceV2Iommu) return 1;
      if (extension === C.eehExtension) return this.kernel.profile.eeh ? 1 : 0;
      return 0;
    }, { extension });
  }

  async setIommu(containerFd: number, type: number): Promise<void> {
    checkFd('containerFd', containerFd);
    checkU32('type', type);
    this.ioctl(IOCTL.setIommu, containerFd, () => {
      const c = this.containerOf(containerFd);
      if (c.groups.length === 0 || c.driver) throw 'EINVAL';
      if (type !== C.spaprTceIommu && type !== C.spaprTceV2Iommu) throw 'ENODEV';
      const driver = this.kernel.newDriver(type === C.spaprTceV2Iommu);
      try {
        for (const g of c.groups) this.kernel.attachGroup(driver, g);
      } catch (code) {
        // Nothing is charged at attach time: dropping the half-attached driver is the whole undo.
        this.kernel.abandonDriver(driver);
        throw code;
      }
      c.driver = driver;
    }, { type });
  }

  async spaprTceGetInfo(containerFd: number, options: ArgszOption = {}): Promise<SpaprTceInfo> {
    checkFd('containerFd', containerFd);
    const argsz = checkU32('argsz', options.argsz ?? 32);
    return this.ioctl(IOCTL.getInfo, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (d.groups.length === 0) throw 'ENXIO';
      if (argsz < 16) throw 'EINVAL';
      const p = this.kernel.profile;
      const ddwCapable = d.v2 && d.groups[0]!.dynamicWindows && p.maxDynamicWindows > 0;
      const info: SpaprTceInfo = {
        flags: ddwCapable ? C.spaprInfoDdw : 0,
        dma32WindowStart: Number(p.dma32Start),
        dma32WindowSize: Number(p.dma32Size),
        ddw: { pgsizes: 0n, maxDynamicWindowsSupported: 0, levels: 0 },
      };
      // 16..31 bytes of argsz: the kernel copies only the first 16 bytes back.
      if (ddwCapable && argsz >= 32) {
        info.ddw = { pgsizes: p.pgsizes, maxDynamicWindowsSupported: p.maxDynamicWindows, levels: p.maxLevels };
      }
      return info;
    });
  }

  async enable(containerFd: number): Promise<void> {
    checkFd('containerFd', containerFd);
    this.ioctl(IOCTL.enable, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (d.v2) throw 'ENOTTY';
      if (d.enabled) throw 'EBUSY';
      if (d.groups.length === 0) throw 'ENODEV';
      this.mmSet(d);
      const pages = Number(this.kernel.profile.dma32Size >> BigInt(this.kernel.pageShift));
      if (!this.kernel.account(this, d.mm!, pages)) throw 'ENOMEM';
      d.enableLockedPages = pages;
      d.enabled = true;
    });
  }

  async disable(containerFd: number): Promise<void> {
    checkFd('containerFd', containerFd);
    this.ioctl(IOCTL.disable, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (d.v2) throw 'ENOTTY';
      if (!d.enabled) return;
      d.enabled = false;
      this.kernel.unaccount(d.mm!, d.enableLockedPages);
      d.enableLockedPages = 0;
    });
  }

  async registerMemory(containerFd: number, request: MemoryRegionRequest): Promise<void> {
    checkFd('containerFd', containerFd);
    const vaddr = checkU64('vaddr', request.vaddr);
    const size = checkU64('size', request.size);
    const flags = checkU32('flags', request.flags ?? 0);
    const argsz = checkU32('argsz', request.argsz ?? 24);
    this.ioctl(IOCTL.registerMemory, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (!d.v2) throw 'ENOTTY';
      this.mmSet(d);
      if (argsz < 24) throw 'EINVAL';
      if (flags) throw 'EINVAL';
      const mask = BigInt(this.pageSize) - 1n;
      if (vaddr & mask || size & mask || vaddr + size > (1n << 64n) - 1n) throw 'EINVAL';
      const existing = this.mm.regions.find((r) => r.vaddr === vaddr && r.size === size);
      if (existing) {
        if (d.prereg.includes(existing)) throw 'EBUSY';
        existing.users++;
        d.prereg.push(existing);
        d.enabled = true;
        return;
      }
      // mm_iommu_do_alloc: vzalloc(0) of the page array fails before the overlap check [seen].
      if (size === 0n) throw 'ENOMEM';
      if (this.mm.regions.some((r) => r.vaddr < vaddr + size && vaddr < r.vaddr + r.size)) throw 'EINVAL';
      const pieces = this.resolve(vaddr, size);
      if (!pieces) throw 'EFAULT';
      const pages = Number(size >> BigInt(this.kernel.pageShift));
      if (!this.kernel.account(this, this.mm, pages)) throw 'ENOMEM';
      let pageShift = Math.min(ctz(vaddr | size), 63);
      for (const p of pieces) pageShift = Math.min(pageShift, p.pageShift);
      const region: Region = { vaddr, size, pageShift, pieces, users: 1, chargedPages: pages, leaked: false };
      this.mm.regions.push(region);
      d.prereg.push(region);
      d.enabled = true;
    }, { vaddr: `0x${vaddr.toString(16)}`, size: `0x${size.toString(16)}` });
  }

  async unregisterMemory(containerFd: number, request: MemoryRegionRequest): Promise<void> {
    checkFd('containerFd', containerFd);
    const vaddr = checkU64('vaddr', request.vaddr);
    const size = checkU64('size', request.size);
    const flags = checkU32('flags', request.flags ?? 0);
    const argsz = checkU32('argsz', request.argsz ?? 24);
    this.ioctl(IOCTL.unregisterMemory, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (!d.v2) throw 'ENOTTY';
      // Checked before the arguments [seen: EPERM with bad flags or alignment too].
      if (!d.mm) throw 'EPERM';
      if (argsz < 24) throw 'EINVAL';
      if (flags) throw 'EINVAL';
      const mask = BigInt(this.pageSize) - 1n;
      if (vaddr & mask || size & mask) throw 'EINVAL';
      const region = d.mm.regions.find((r) => r.vaddr === vaddr && r.size === size);
      if (!region || !d.prereg.includes(region)) throw 'ENOENT';
      this.kernel.preregFree(d, region);
    }, { vaddr: `0x${vaddr.toString(16)}`, size: `0x${size.toString(16)}` });
  }

  async tceCreate(containerFd: number, request: TceCreateRequest): Promise<bigint> {
    checkFd('containerFd', containerFd);
    const pageShift = checkU32('pageShift', request.pageShift);
    const windowSize = checkU64('windowSize', request.windowSize);
    const levels = checkU32('levels', request.levels);
    const flags = checkU32('flags', request.flags ?? 0);
    const argsz = checkU32('argsz', request.argsz ?? 40);
    return this.ioctl(IOCTL.tceCreate, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (!d.v2) throw 'ENOTTY';
      this.mmSet(d);
      if (d.groups.length === 0) throw 'ENXIO';
      if (argsz < 40) throw 'EINVAL';
      if (flags) throw 'EINVAL';
      this.kernel.createDefaultWindow(this, d);
      return this.kernel.createWindow(this, d, pageShift, windowSize, levels, false).start;
    }, { pageShift, windowSize: `0x${windowSize.toString(16)}`, levels });
  }

  async tceRemove(containerFd: number, request: TceRemoveRequest): Promise<void> {
    checkFd('containerFd', containerFd);
    const startAddr = checkU64('startAddr', request.startAddr);
    const flags = checkU32('flags', request.flags ?? 0);
    const argsz = checkU32('argsz', request.argsz ?? 16);
    this.ioctl(IOCTL.tceRemove, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (!d.v2) throw 'ENOTTY';
      this.mmSet(d);
      if (d.groups.length === 0) throw 'ENXIO';
      if (argsz < 16) throw 'EINVAL';
      if (flags) throw 'EINVAL';
      if (d.defWindowPending && startAddr === 0n) {
        d.defWindowPending = false;
        return;
      }
      const num = d.tables.findIndex((t) => t !== null && t.start <= startAddr && startAddr < tableEnd(t));
      if (num < 0) throw 'EINVAL';
      const t = d.tables[num]!;
      t.extents = [];
      this.kernel.unaccount(d.mm!, t.chargedPages);
      d.tables[num] = null;
    }, { startAddr: `0x${startAddr.toString(16)}` });
  }

  async mapDma(containerFd: number, request: DmaMapRequest): Promise<void> {
    checkFd('containerFd', containerFd);
    const vaddr = checkU64('vaddr', request.vaddr);
    const iova = checkU64('iova', request.iova);
    const size = checkU64('size', request.size);
    const flags = checkU32('flags', request.flags);
    const argsz = checkU32('argsz', request.argsz ?? 32);
    this.ioctl(IOCTL.mapDma, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (!d.enabled) throw 'EPERM';
      if (argsz < 32) throw 'EINVAL';
      if (flags & ~(C.dmaMapFlagRead | C.dmaMapFlagWrite)) throw 'EINVAL';
      this.kernel.createDefaultWindow(this, d);
      const t = d.tables.find((x) => x !== null && x.start <= iova && iova < tableEnd(x));
      if (!t) throw 'ENXIO';
      const pageMask = (1n << BigInt(t.pageShift)) - 1n;
      if (size & pageMask || vaddr & pageMask) throw 'EINVAL';
      if (!(flags & (C.dmaMapFlagRead | C.dmaMapFlagWrite))) throw 'EINVAL';
      // iommu_tce_put_param_check is an `a || b` expression: a failed check returns 1, not -EINVAL.
      if (iova & pageMask) throw new PositiveReturn(1);
      // Only the first page is range-checked by the kernel; writing TCEs past the table is the Oops.
      if (iova + size > tableEnd(t)) {
        this.kernel.die(
          `MAP_DMA wrote TCEs past the end of the window 0x${t.start.toString(16)}..0x${tableEnd(t).toString(16)} (iova 0x${iova.toString(16)} size 0x${size.toString(16)})`,
        );
      }
      if (size === 0n) return;
      let pieces: Piece[] | null;
      if (d.v2) {
        pieces = [];
        let cur = vaddr;
        const end = vaddr + size;
        while (cur < end) {
          const r = this.mm.regions.find((x) => x.vaddr <= cur && cur < x.vaddr + x.size);
          if (!r || r.pageShift < t.pageShift) throw 'EINVAL';
          const pieceEnd = r.vaddr + r.size < end ? r.vaddr + r.size : end;
          for (const p of r.pieces) {
            const a = p.vaddr > cur ? p.vaddr : cur;
            const b = p.vaddr + p.size < pieceEnd ? p.vaddr + p.size : pieceEnd;
            if (a < b) pieces.push({ ...p, vaddr: a, size: b - a, offset: p.offset + (a - p.vaddr) });
          }
          cur = pieceEnd;
        }
      } else {
        pieces = this.resolve(vaddr, size);
        if (!pieces) throw 'EFAULT';
      }
      const first = iova >> BigInt(t.pageShift);
      const count = size >> BigInt(t.pageShift);
      clearExtents(t, first, count);
      t.extents.push({
        first,
        count,
        vaddr,
        pieces,
        read: (flags & C.dmaMapFlagRead) !== 0,
        write: (flags & C.dmaMapFlagWrite) !== 0,
      });
    }, { vaddr: `0x${vaddr.toString(16)}`, iova: `0x${iova.toString(16)}`, size: `0x${size.toString(16)}`, flags });
  }

  async unmapDma(containerFd: number, request: DmaUnmapRequest): Promise<void> {
    checkFd('containerFd', containerFd);
    const iova = checkU64('iova', request.iova);
    const size = checkU64('size', request.size);
    const flags = checkU32('flags', request.flags ?? 0);
    const argsz = checkU32('argsz', request.argsz ?? 24);
    this.ioctl(IOCTL.unmapDma, containerFd, () => {
      const d = this.driverOf(containerFd);
      if (!d.enabled) throw 'EPERM';
      if (argsz < 24) throw 'EINVAL';
      if (flags) throw 'EINVAL';
      this.kernel.createDefaultWindow(this, d);
      const t = d.tables.find((x) => x !== null && x.start <= iova && iova < tableEnd(x));
      if (!t) throw 'ENXIO';
      const pageMask = (1n << BigInt(t.pageShift)) - 1n;
      if (size & pageMask) throw 'EINVAL';
      if (iova & pageMask) throw new PositiveReturn(1);
      // Only the first page is range-checked, like MAP. pseries [seen]: the entries past the end go
      // to H_PUT_TCE, which the hypervisor refuses; the kernel skips them and returns 0.
      if (iova + size > tableEnd(t)) {
        if (this.kernel.profile.family !== 'pseries') {
          this.kernel.die(`UNMAP_DMA cleared TCEs past the end of the window (iova 0x${iova.toString(16)} size 0x${size.toString(16)})`);
        }
        clearExtents(t, iova >> BigInt(t.pageShift), (tableEnd(t) - iova) >> BigInt(t.pageShift));
        return;
      }
      clearExtents(t, iova >> BigInt(t.pageShift), size >> BigInt(t.pageShift));
    }, { iova: `0x${iova.toString(16)}`, size: `0x${size.toString(16)}` });
  }

  async eehPeOp(containerFd: number, request: EehPeOpRequest): Promise<number> {
    checkFd('containerFd', containerFd);
    const op = checkU32('op', request.op);
    const flags = checkU32('flags', request.flags ?? 0);
    const argsz = checkU32('argsz', request.argsz ?? 40);
    return this.ioctl(IOCTL.eehPeOp, containerFd, () => {
      const d = this.driverOf(containerFd);
      const g = d.groups[0];
      if (!g || !g.pe) throw 'ENODEV';
      if (argsz < 12 || flags) throw 'EINVAL';
      const pe = g.pe;
      const o = C.eehPeOp;
      switch (op) {
        case o.disable:
        case o.enable:
        case o.configure:
          return 0;
        case o.unfreezeIo:
          pe.ioStopped = false;
          return 0;
        case o.unfreezeDma:
          pe.dmaStopped = false;
          return 0;
        case o.getState:
          return this.kernel.peStateOf(g);
        case o.resetHot:
        case o.resetFundamental:
          pe.reset = true;
          return 0;
        case o.resetDeactivate:
          pe.reset = false;
          pe.ioStopped = false;
          pe.dmaStopped = false;
          return 0;
        case o.injectError:
          // The struct's err fields are ignored here: any injection freezes the PE.
          pe.ioStopped = true;
          pe.dmaStopped = true;
          return 0;
        default:
          throw 'EINVAL';
      }
    }, { op });
  }

  // --- group ioctls -------------------------------------------------------------------

  async groupGetStatus(groupFd: number, options: ArgszOption = {}): Promise<GroupStatus> {
    checkFd('groupFd', groupFd);
    const argsz = checkU32('argsz', options.argsz ?? 8);
    return this.ioctl(IOCTL.groupGetStatus, groupFd, () => {
      const g = this.groupFileOf(groupFd).group;
      if (argsz < 8) throw 'EINVAL';
      if (g.removed) throw 'ENODEV';
      let flags = 0;
      if (g.container) flags |= C.groupFlagsContainerSet | C.groupFlagsViable;
      else if ([...g.devices.values()].every((dev) => dev.hostDriver === null)) flags |= C.groupFlagsViable;
      return { flags, viable: (flags & C.groupFlagsViable) !== 0, containerSet: (flags & C.groupFlagsContainerSet) !== 0 };
    });
  }

  async groupSetContainer(groupFd: number, containerFd: number): Promise<void> {
    checkFd('groupFd', groupFd);
    checkFd('containerFd', containerFd);
    this.ioctl(IOCTL.groupSetContainer, groupFd, () => {
      const g = this.groupFileOf(groupFd).group;
      const target = this.file(containerFd);
      if (g.container) throw 'EINVAL';
      if (g.removed) throw 'ENODEV';
      if (target.kind !== 'container') throw 'EBADFD';
      // iommu_group_claim_dma_owner: a DMA-capable host driver owns the group.
      if ([...g.devices.values()].some((dev) => dev.hostDriver !== null)) throw 'EPERM';
      const c = target.container;
      if (c.driver) this.kernel.attachGroup(c.driver, g);
      c.groups.push(g);
      g.container = c;
    });
  }

  async groupUnsetContainer(groupFd: number): Promise<void> {
    checkFd('groupFd', groupFd);
    this.ioctl(IOCTL.groupUnsetContainer, groupFd, () => {
      const g = this.groupFileOf(groupFd).group;
      if (!g.container) throw 'EINVAL';
      if (g.deviceUsers > 0) throw 'EBUSY';
      this.kernel.detachGroup(g);
    });
  }

  async groupGetDeviceFd(groupFd: number, name: string): Promise<number> {
    checkFd('groupFd', groupFd);
    checkString('name', name);
    return this.ioctl(IOCTL.groupGetDeviceFd, groupFd, () => {
      const gf = this.groupFileOf(groupFd);
      const g = gf.group;
      if (g.removed || !g.devices.has(name)) throw 'ENODEV';
      if (!g.container || !g.container.driver) throw 'EINVAL';
      g.deviceUsers++;
      gf.refs++;
      return this.installFd({ kind: 'device', refs: 1, path: gf.path, group: g, groupFile: gf, name });
    }, { name });
  }

  // --- device fds -----------------------------------------------------------------------

  async deviceGetRegionInfo(deviceFd: number, index: number): Promise<RegionInfo> {
    checkFd('deviceFd', deviceFd);
    checkU32('index', index);
    return this.ioctl(IOCTL.deviceGetRegionInfo, deviceFd, () => {
      const f = this.file(deviceFd);
      if (f.kind !== 'device') throw 'ENOTTY';
      if (f.group.removed) throw 'ENODEV';
      // No VGA region unless the device is a VGA device (none is simulated) [seen: EINVAL].
      if (index >= VFIO_PCI_NUM_REGIONS || index === VFIO_PCI_VGA_REGION) throw 'EINVAL';
      const offset = BigInt(index) << 40n;
      const dev = f.group.devices.get(f.name);
      if (!dev) throw 'ENODEV';
      if (index === PCI_REGION_CONFIG) return { index, flags: 0x3, size: BigInt(dev.configSize), offset };
      const r = dev.resources[index];
      if (index === PCI_REGION_ROM) {
        const size = r && r.flags & IORESOURCE_MEM ? resourceSize(r) : 0n;
        return { index, flags: size ? REGION_FLAG_READ : 0, size, offset };
      }
      if (index <= PCI_REGION_BAR5) return { index, flags: barRegionFlags(r, dev.msixBar === index), size: resourceSize(r), offset };
      return { index, flags: 0, size: 0n, offset };
    });
  }

  async pread(fd: number, length: number, offset: bigint): Promise<Buffer> {
    checkFd('fd', fd);
    checkLength('length', length, 1 << 24);
    checkU64('offset', offset);
    this.alive();
    const f = this.fds.get(fd);
    if (!f) throw this.err('EBADF', 'pread', fd);
    if (f.kind === 'memfd') {
      const avail = f.memfd.size > offset ? f.memfd.size - offset : 0n;
      return readMemfd(f.memfd, offset, Number(avail < BigInt(length) ? avail : BigInt(length)));
    }
    if (f.kind === 'device') {
      if (f.group.removed) throw this.err('ENODEV', 'pread', fd);
      const out = Buffer.alloc(length);
      if (offset >> 40n === BigInt(C.pciRegion.config)) {
        const dev = f.group.devices.get(f.name);
        const size = dev?.configSize ?? CONFIG_SIZE_PCI;
        const cfg = Buffer.alloc(size);
        cfg.writeUInt16LE(dev?.vendorId ?? 0xffff, 0);
        cfg.writeUInt16LE(dev?.deviceId ?? 0xffff, 2);
        const start = Number(offset & 0xfffn);
        // Reads past the end of the config space return nothing.
        if (start < size) return cfg.subarray(start, Math.min(size, start + length));
        return Buffer.alloc(0);
      }
      return out;
    }
    throw this.err(f.kind === 'socket' ? 'ESPIPE' : 'EINVAL', 'pread', fd);
  }

  async pwrite(fd: number, data: Uint8Array, offset: bigint): Promise<number> {
    checkFd('fd', fd);
    checkBytes('data', data);
    checkU64('offset', offset);
    this.alive();
    const f = this.fds.get(fd);
    if (!f) throw this.err('EBADF', 'pwrite', fd);
    if (f.kind === 'memfd') {
      writeMemfd(f.memfd, offset, Buffer.from(data.buffer, data.byteOffset, data.length));
      if (offset + BigInt(data.length) > f.memfd.size) f.memfd.size = offset + BigInt(data.length);
      return data.length;
    }
    if (f.kind === 'device') {
      if (f.group.removed) throw this.err('ENODEV', 'pwrite', fd);
      return data.length;
    }
    throw this.err(f.kind === 'socket' ? 'ESPIPE' : 'EINVAL', 'pwrite', fd);
  }

  // --- DMA memory ---------------------------------------------------------------------

  async memfdCreate(name: string, options: MemfdOptions = {}): Promise<number> {
    checkString('name', name, 249);
    this.alive();
    // 0 means normal pages, as in the addon.
    const huge = options.hugePageShift ? options.hugePageShift : null;
    if (huge !== null) {
      checkU32('hugePageShift', huge);
      // The same argument check as the addon's.
      if (huge < 16 || huge > 40) throw new RangeError('hugePageShift out of range');
      // No hstate of that size: hugetlb_file_setup refuses with ENODEV [seen on 6.12].
      if (!this.kernel.supportsHugeShift(huge)) throw this.err('ENODEV', 'memfd_create');
    }
    const memfd: Memfd = { id: this.kernel.newId(), name, size: 0n, hugePageShift: huge, chunks: new Map() };
    return this.installFd({ kind: 'memfd', refs: 1, path: `/memfd:${name}`, memfd });
  }

  async ftruncate(fd: number, size: bigint): Promise<void> {
    checkFd('fd', fd);
    checkU64('size', size);
    this.alive();
    const f = this.fds.get(fd);
    if (!f) throw this.err('EBADF', 'ftruncate', fd);
    if (f.kind !== 'memfd') throw this.err('EINVAL', 'ftruncate', fd);
    if (size > 1n << 50n) throw this.err('EFBIG', 'ftruncate', fd);
    const huge = f.memfd.hugePageShift;
    if (huge !== null && size & ((1n << BigInt(huge)) - 1n)) throw this.err('EINVAL', 'ftruncate', fd);
    f.memfd.size = size;
    for (const idx of [...f.memfd.chunks.keys()]) if (idx * CHUNK >= size) f.memfd.chunks.delete(idx);
  }

  async mmap(fd: number, size: bigint, options: MmapOptions = {}): Promise<bigint> {
    checkFd('fd', fd);
    checkU64('size', size);
    const offset = checkU64('offset', options.offset ?? 0n);
    this.alive();
    const f = this.fds.get(fd);
    if (!f) throw this.err('EBADF', 'mmap', fd);
    if (f.kind !== 'memfd') throw this.err('ENODEV', 'mmap', fd);
    const huge = f.memfd.hugePageShift;
    const pageShift = huge ?? this.kernel.pageShift;
    const align = 1n << BigInt(pageShift);
    if (size === 0n || offset & (align - 1n)) throw this.err('EINVAL', 'mmap', fd);
    const len = (size + align - 1n) & ~(align - 1n);
    if (len > 1n << 46n) throw this.err('ENOMEM', 'mmap', fd);
    let hugePages = 0;
    if (huge !== null) {
      hugePages = Number(len >> BigInt(huge));
      if (!this.kernel.reserveHuge(huge, hugePages)) throw this.err('ENOMEM', 'mmap', fd);
    }
    const addr = (this.mm.nextAddr + align - 1n) & ~(align - 1n);
    this.mm.nextAddr = addr + len + (1n << 20n); // a guard gap, so ranges are never accidentally contiguous
    this.mm.mappings.push({ addr, size: len, memfd: f.memfd, offset, pageShift, hugePages });
    return addr;
  }

  async munmap(address: bigint, size: bigint): Promise<void> {
    checkU64('address', address);
    checkU64('size', size);
    this.alive();
    const i = this.mm.mappings.findIndex(
      (m) => m.addr === address && (m.size === size || m.size === ((size + BigInt(this.pageSize) - 1n) & ~(BigInt(this.pageSize) - 1n))),
    );
    if (i < 0) throw this.err('EINVAL', 'munmap');
    const [m] = this.mm.mappings.splice(i, 1);
    this.kernel.releaseHuge(m!);
  }

  private mappingFor(address: bigint, length: number): Mapping {
    checkU64('address', address);
    const m = this.mm.mappings.find((x) => x.addr <= address && address + BigInt(length) <= x.addr + x.size);
    if (!m) throw new RangeError(`0x${address.toString(16)}+${length} is not inside a mapping made by this binding`);
    return m;
  }

  readMemory(address: bigint, length: number): Buffer {
    checkLength('length', length, 1 << 30);
    this.alive();
    const m = this.mappingFor(address, length);
    return readMemfd(m.memfd, m.offset + (address - m.addr), length);
  }

  writeMemory(address: bigint, data: Uint8Array): void {
    checkBytes('data', data);
    this.alive();
    const m = this.mappingFor(address, data.length);
    writeMemfd(m.memfd, m.offset + (address - m.addr), Buffer.from(data.buffer, data.byteOffset, data.length));
  }

  // --- accounting -----------------------------------------------------------------------

  getMemlockLimit(): MemlockLimit {
    return { ...this.memlock };
  }

  async lockedMemoryBytes(): Promise<bigint> {
    this.alive();
    return BigInt(this.mm.lockedPages) * BigInt(this.pageSize) + this.mm.externalLockedBytes;
  }

  // --- fd passing ---------------------------------------------------------------------------

  async socketPair(): Promise<[number, number]> {
    this.alive();
    const a: SocketFile = { kind: 'socket', refs: 1, path: undefined, peer: null, queue: [] };
    const b: SocketFile = { kind: 'socket', refs: 1, path: undefined, peer: a, queue: [] };
    a.peer = b;
    return [this.installFd(a), this.installFd(b)];
  }

  async sendFds(socketFd: number, data: Uint8Array, fds: number[]): Promise<number> {
    checkFd('socketFd', socketFd);
    checkBytes('data', data);
    if (!Array.isArray(fds) || fds.length > 253) throw new RangeError('fds must be an array of at most 253 fds');
    fds.forEach((fd, i) => checkFd(`fds[${i}]`, fd));
    if (data.length === 0) throw new RangeError('data must not be empty (SCM_RIGHTS needs at least one byte)');
    this.alive();
    const s = this.fds.get(socketFd);
    if (!s) throw this.err('EBADF', 'sendmsg', socketFd);
    if (s.kind !== 'socket') throw this.err('ENOTSOCK', 'sendmsg', socketFd);
    const files = fds.map((fd) => {
      const f = this.fds.get(fd);
      if (!f) throw this.err('EBADF', 'sendmsg', socketFd);
      return f;
    });
    if (!s.peer) throw this.err('EPIPE', 'sendmsg', socketFd);
    for (const f of files) f.refs++;
    s.peer.queue.push({ data: Buffer.from(data), files });
    return data.length;
  }

  async recvFds(socketFd: number, maxData: number, maxFds: number): Promise<ReceivedMessage> {
    checkFd('socketFd', socketFd);
    checkLength('maxData', maxData, 1 << 24);
    checkLength('maxFds', maxFds, 253);
    this.alive();
    const s = this.fds.get(socketFd);
    if (!s) throw this.err('EBADF', 'recvmsg', socketFd);
    if (s.kind !== 'socket') throw this.err('ENOTSOCK', 'recvmsg', socketFd);
    const msg = s.queue[0];
    if (!msg) {
      if (!s.peer) return { data: Buffer.alloc(0), fds: [] };
      // The simulator cannot block: an empty queue is reported as EAGAIN.
      throw this.err('EAGAIN', 'recvmsg', socketFd);
    }
    const data = msg.data.subarray(0, maxData);
    const files = msg.files;
    msg.files = [];
    if (msg.data.length > maxData) msg.data = msg.data.subarray(maxData);
    else s.queue.shift();
    if (files.length > maxFds) {
      // MSG_CTRUNC: the kernel drops what did not fit; like the native binding,
      // a partial set is useless, so none is kept and the call fails.
      for (const f of files) this.kernel.putFile(f);
      this.kernel.record({ pid: this.pid, op: 'recvmsg', fd: socketFd, result: 'MSG_CTRUNC' });
      throw Object.assign(
        new Error(`recvmsg: the passed fds were cut off (MSG_CTRUNC): more than maxFds (${maxFds}) were sent; the fds that arrived were closed`),
        { code: 'MSG_CTRUNC', syscall: 'recvmsg' },
      );
    }
    const fds = files.map((f) => this.installFd(f));
    return { data: Buffer.from(data), fds };
  }
}

class PositiveReturn {
  constructor(readonly value: number) {}
}

/** Removes entries [first, first+count) from a table, splitting extents (empty entries are fine). */
function clearExtents(t: Table, first: bigint, count: bigint): void {
  const end = first + count;
  const out: Extent[] = [];
  const shift = BigInt(t.pageShift);
  for (const e of t.extents) {
    const eEnd = e.first + e.count;
    if (eEnd <= first || e.first >= end) {
      out.push(e);
      continue;
    }
    if (e.first < first) out.push({ ...e, count: first - e.first });
    if (eEnd > end) out.push({ ...e, first: end, count: eEnd - end, vaddr: e.vaddr + ((end - e.first) << shift) });
  }
  t.extents = out;
}

/** A simulated kernel and its first process, for the common case. */
export function createSimulatedKernel(options: SimulatedKernelOptions): { kernel: SimulatedKernel; binding: SimulatedProcess } {
  const kernel = new SimulatedKernel(options);
  return { kernel, binding: kernel.process() };
}
