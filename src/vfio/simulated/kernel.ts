// The simulated kernel as a whole: its groups (with fault injection: EEH freezes, hot-unplug,
// host drivers), its processes, the hugetlb pool and the call log. What each syscall does lives
// beside it, one file per part of the kernel.
import type { Platform } from '../binding.js';
import { KernelOopsError } from '../errors.js';
import { CONFIG_SIZE_PCI, CONFIG_SIZE_PCIE, formatPciResource, type PciResource } from '../pci-device.js';
import { checkGroupNumber } from '../validate.js';
import { detachGroup } from './container.js';
import { dmaWalk } from './dma-map.js';
import { putFile } from './files.js';
import { ilog2, Mm, readMemfd, writeMemfd, type SimDevice, type SimGroup, type TceDriver } from './objects.js';
import { PLATFORM_PROFILES, SIMULATED_CONSTANTS, type PlatformProfile } from './platform.js';
import { SimulatedProcess } from './process.js';
import { unaccount } from './registered-memory.js';
import { releaseHuge } from './user-memory.js';

const C = SIMULATED_CONSTANTS;

/** edu's resources: BAR0, 1 MiB of memory, at an address per group. */
function defaultResources(group: number, index: number): PciResource[] {
  const start = 0x200000000000n + (BigInt(group) << 31n) + (BigInt(index) << 24n);
  return [{ start, end: start + (1n << 20n) - 1n, flags: 0x40200n }];
}

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
  /** @internal */ readonly groups = new Map<number, SimGroup>();
  /** @internal */ readonly processes = new Map<number, SimulatedProcess>();
  /** @internal */ readonly drivers = new Set<TceDriver>();
  /** @internal */ readonly hugePool = new Map<number, number>();
  /** @internal */ readonly hugePageShifts: Set<number>;
  /** @internal */ oops: KernelOopsError | null = null;
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
      if (g.container) detachGroup(this, g);
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
    dmaWalk(this, this.mustGroup(group), iova, BigInt(length), false, (memfd, offset, pos, len) => {
      readMemfd(memfd, offset, len).copy(out, pos);
    });
    return out;
  }

  /** Device-side DMA write through the group's IOMMU. */
  dmaWrite(group: number, iova: bigint, data: Uint8Array): void {
    dmaWalk(this, this.mustGroup(group), iova, BigInt(data.length), true, (memfd, offset, pos, len) => {
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
      putFile(this, file);
    }
    for (const m of p.mm.mappings) releaseHuge(this, m);
    p.mm.mappings = [];
    // Regions leaked by UNREGISTER-while-mapped stay charged until exit.
    for (const r of p.mm.regions) if (r.users === 0) unaccount(this, p.mm, r.chargedPages);
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


  /** @internal */
  supportsHugeShift(shift: number): boolean {
    return this.hugePageShifts.has(shift);
  }

  /** @internal: the Oops. */
  die(message: string): never {
    this.oops = new KernelOopsError(message);
    throw this.oops;
  }
}
