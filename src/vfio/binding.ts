// The kernel as the plugin sees it: one typed interface over /dev/vfio, the
// sPAPR TCE ioctls, DMA memory and fd passing. Two implementations: the native
// addon (native-binding.ts) and the simulated kernel (simulated-kernel.ts).
// Every method that enters the kernel returns a Promise: the native side runs
// it on a worker thread. Failures reject with VfioError (errors.ts); a positive
// ioctl return is a failure too, except EEH GET_STATE whose state is the return.
//
// Addresses, sizes and IOVAs are bigint (u64 in the kernel's structs); fds,
// flags, shifts and levels are numbers.

/** IBM POWER platforms the layer knows. powernv10 behaves like powernv9. */
export type Platform = 'pseries' | 'powernv9' | 'powernv10';

/**
 * ABI values the sequence needs, taken from <linux/vfio.h> at compile time by
 * the addon (the simulator declares the same ABI). Ioctl request numbers are
 * deliberately absent: only the native side knows them.
 */
export interface VfioConstants {
  apiVersion: number;
  type1Iommu: number;
  spaprTceIommu: number;
  spaprTceV2Iommu: number;
  eehExtension: number;
  groupFlagsViable: number;
  groupFlagsContainerSet: number;
  dmaMapFlagRead: number;
  dmaMapFlagWrite: number;
  spaprInfoDdw: number;
  eehPeOp: {
    disable: number;
    enable: number;
    unfreezeIo: number;
    unfreezeDma: number;
    getState: number;
    resetDeactivate: number;
    resetHot: number;
    resetFundamental: number;
    configure: number;
    injectError: number;
  };
  eehPeState: { normal: number; reset: number; stopped: number; stoppedDma: number; unavailable: number };
  pciRegion: { bar0: number; config: number };
}

export interface GroupStatus {
  flags: number;
  viable: boolean;
  containerSet: boolean;
}

export interface DdwInfo {
  /** Bitmap of supported IOMMU page sizes: bit n set = 2^n bytes. */
  pgsizes: bigint;
  maxDynamicWindowsSupported: number;
  levels: number;
}

export interface SpaprTceInfo {
  flags: number;
  dma32WindowStart: number;
  dma32WindowSize: number;
  /** All zero unless `flags` has the DDW bit (v2 on a platform with dynamic windows). */
  ddw: DdwInfo;
}

/** Per-call overrides, for hostile-input tests: the argsz the struct claims. */
export interface ArgszOption {
  argsz?: number;
}

export interface DmaMapRequest extends ArgszOption {
  vaddr: bigint;
  iova: bigint;
  size: bigint;
  /** READ=1, WRITE=2 (VfioConstants.dmaMapFlagRead / dmaMapFlagWrite). */
  flags: number;
}

export interface DmaUnmapRequest extends ArgszOption {
  iova: bigint;
  size: bigint;
  flags?: number;
}

export interface MemoryRegionRequest extends ArgszOption {
  vaddr: bigint;
  size: bigint;
  flags?: number;
}

export interface TceCreateRequest extends ArgszOption {
  pageShift: number;
  windowSize: bigint;
  levels: number;
  flags?: number;
}

export interface TceRemoveRequest extends ArgszOption {
  startAddr: bigint;
  flags?: number;
}

export interface EehPeOpRequest extends ArgszOption {
  op: number;
  flags?: number;
}

export interface RegionInfo {
  index: number;
  flags: number;
  size: bigint;
  offset: bigint;
}

export interface MemfdOptions {
  /** Back with hugetlb pages of 2^hugePageShift bytes (21 = 2 MiB, 24 = 16 MiB, 30 = 1 GiB). */
  hugePageShift?: number;
}

export interface MmapOptions {
  offset?: bigint;
  /** Fault the pages in now (MAP_POPULATE). */
  populate?: boolean;
}

export interface MemlockLimit {
  /** Bytes; null = unlimited. */
  soft: bigint | null;
  hard: bigint | null;
}

export interface ReceivedMessage {
  data: Buffer;
  fds: number[];
}

export interface VfioBinding {
  /** 'native' (the addon) or 'simulated'. */
  readonly kind: 'native' | 'simulated';
  readonly constants: VfioConstants;
  /** The kernel's base page size (PAGE_SIZE): alignment for REGISTER_MEMORY and the memlock unit. */
  readonly pageSize: number;

  // --- /dev/vfio nodes. devRoot is the directory holding dev/vfio ('/' on a node).
  /** open(devRoot/dev/vfio/vfio). */
  openContainer(devRoot: string): Promise<number>;
  /** open(devRoot/dev/vfio/<group>); EBUSY when the group is already open anywhere. */
  openGroup(devRoot: string, group: number): Promise<number>;
  close(fd: number): Promise<void>;

  // --- container ioctls
  getApiVersion(containerFd: number): Promise<number>;
  checkExtension(containerFd: number, extension: number): Promise<number>;
  setIommu(containerFd: number, type: number): Promise<void>;
  spaprTceGetInfo(containerFd: number, options?: ArgszOption): Promise<SpaprTceInfo>;
  enable(containerFd: number): Promise<void>;
  disable(containerFd: number): Promise<void>;
  registerMemory(containerFd: number, request: MemoryRegionRequest): Promise<void>;
  unregisterMemory(containerFd: number, request: MemoryRegionRequest): Promise<void>;
  /** Returns the window's start address (bus address) chosen by the platform. */
  tceCreate(containerFd: number, request: TceCreateRequest): Promise<bigint>;
  tceRemove(containerFd: number, request: TceRemoveRequest): Promise<void>;
  mapDma(containerFd: number, request: DmaMapRequest): Promise<void>;
  unmapDma(containerFd: number, request: DmaUnmapRequest): Promise<void>;
  /** Returns the ioctl's non-negative result (the PE state for GET_STATE). */
  eehPeOp(containerFd: number, request: EehPeOpRequest): Promise<number>;

  // --- group ioctls
  groupGetStatus(groupFd: number, options?: ArgszOption): Promise<GroupStatus>;
  groupSetContainer(groupFd: number, containerFd: number): Promise<void>;
  groupUnsetContainer(groupFd: number): Promise<void>;
  /** `name` is the device's name in the group: its PCI address (`0001:00:01.0`). */
  groupGetDeviceFd(groupFd: number, name: string): Promise<number>;

  // --- device fds (region access, for DMA checks with a real device)
  deviceGetRegionInfo(deviceFd: number, index: number): Promise<RegionInfo>;
  pread(fd: number, length: number, offset: bigint): Promise<Buffer>;
  pwrite(fd: number, data: Uint8Array, offset: bigint): Promise<number>;

  // --- DMA memory
  memfdCreate(name: string, options?: MemfdOptions): Promise<number>;
  ftruncate(fd: number, size: bigint): Promise<void>;
  /** Shared read-write mapping of `size` bytes of `fd`; returns the address. */
  mmap(fd: number, size: bigint, options?: MmapOptions): Promise<bigint>;
  /** Unmaps a whole mapping made by mmap() of this binding (address and size as returned). */
  munmap(address: bigint, size: bigint): Promise<void>;
  /** Copies bytes out of a mapping made by this binding; RangeError outside one. */
  readMemory(address: bigint, length: number): Buffer;
  writeMemory(address: bigint, data: Uint8Array): void;

  // --- accounting
  getMemlockLimit(): MemlockLimit;
  /** The process's locked memory (VmLck), in bytes: what RLIMIT_MEMLOCK is checked against. */
  lockedMemoryBytes(): Promise<bigint>;

  // --- fd passing over unix sockets
  /** A connected AF_UNIX SOCK_STREAM pair. */
  socketPair(): Promise<[number, number]>;
  /** sendmsg with SCM_RIGHTS; `data` must not be empty. Returns bytes sent. */
  sendFds(socketFd: number, data: Uint8Array, fds: number[]): Promise<number>;
  /** recvmsg accepting up to `maxFds` fds (received with O_CLOEXEC). */
  recvFds(socketFd: number, maxData: number, maxFds: number): Promise<ReceivedMessage>;
}

/** Path of the container node under a devRoot. */
export function containerPath(devRoot: string): string {
  return joinDev(devRoot, 'vfio');
}

/** Path of a group node under a devRoot. */
export function groupPath(devRoot: string, group: number): string {
  return joinDev(devRoot, String(group));
}

function joinDev(devRoot: string, leaf: string): string {
  const root = devRoot.endsWith('/') ? devRoot.slice(0, -1) : devRoot;
  return `${root}/dev/vfio/${leaf}`;
}

/** Largest IOMMU page size in `pgsizes` not above `limit` bytes, as a shift; null when none. */
export function largestPageShift(pgsizes: bigint, limit: bigint): number | null {
  for (let shift = 63; shift >= 0; shift--) {
    if ((pgsizes >> BigInt(shift)) & 1n && 1n << BigInt(shift) <= limit) return shift;
  }
  return null;
}

/**
 * MAX_PAGE_ORDER of ppc64 kernels: 12 with 4K pages (Debian's powerpc64le flavour), 8 with 64K
 * pages (most distribution kernels). The largest physically contiguous allocation, and so the
 * largest single TCE table level, is PAGE_SIZE << order: 16 MiB either way [seen on 6.12, 4K].
 */
export function kernelMaxPageOrder(kernelPageSize: number): number {
  return kernelPageSize <= 4096 ? 12 : 8;
}
