// The VfioBinding over the native addon (native/vfio.cc). The addon packs the
// structs and knows the ioctl numbers; this wrapper checks arguments, remembers
// which path each fd was opened from, and turns the addon's rejections into
// VfioError (negative errno, code, syscall, path, ioctl) like Node's own.
import { createRequire } from 'node:module';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  containerPath,
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
  type ReceivedMessage,
  type RegionInfo,
  type SpaprTceInfo,
  type TceCreateRequest,
  type TceRemoveRequest,
  type VfioBinding,
  type VfioConstants,
} from './binding.js';
import { UNEXPECTED_RETURN, VfioError, codeOfErrno, errnoOf, registerErrnoNames } from './errors.js';
import {
  checkBytes,
  checkFd,
  checkGroupNumber,
  checkLength,
  checkString,
  checkU32,
  checkU64,
  dmaMapArgs,
  dmaUnmapArgs,
  memoryRegionArgs,
  tceCreateArgs,
  tceRemoveArgs,
} from './validate.js';

/** The addon's raw surface (see native/vfio.cc). */
export interface NativeAddon {
  constants: Record<string, number>;
  ioctlNumbers: Record<string, number>;
  /** [errno, name, message] for every errno the C library names (strerrorname_np); absent in old builds. */
  errnoTable?: Array<[number, string, string]>;
  open(path: string): Promise<number>;
  close(fd: number): Promise<void>;
  ioctlValue(fd: number, name: string, arg: number): Promise<number>;
  groupGetStatus(fd: number, argsz: number): Promise<number>;
  groupSetContainer(fd: number, containerFd: number): Promise<void>;
  groupGetDeviceFd(fd: number, name: string): Promise<number>;
  deviceGetRegionInfo(fd: number, index: number): Promise<{ flags: number; size: bigint; offset: bigint }>;
  spaprTceGetInfo(fd: number, argsz: number): Promise<{
    flags: number;
    dma32WindowStart: number;
    dma32WindowSize: number;
    pgsizes: bigint;
    maxDynamicWindowsSupported: number;
    levels: number;
  }>;
  mapDma(fd: number, argsz: number, flags: number, vaddr: bigint, iova: bigint, size: bigint): Promise<void>;
  unmapDma(fd: number, argsz: number, flags: number, iova: bigint, size: bigint): Promise<void>;
  registerMemory(fd: number, unregister: boolean, argsz: number, flags: number, vaddr: bigint, size: bigint): Promise<void>;
  tceCreate(fd: number, argsz: number, flags: number, pageShift: number, windowSize: bigint, levels: number): Promise<bigint>;
  tceRemove(fd: number, argsz: number, flags: number, startAddr: bigint): Promise<void>;
  eehPeOp(fd: number, argsz: number, flags: number, op: number): Promise<number>;
  pread(fd: number, length: number, offset: bigint): Promise<Buffer>;
  pwrite(fd: number, data: Buffer, offset: bigint): Promise<number>;
  memfdCreate(name: string, hugePageShift: number): Promise<number>;
  ftruncate(fd: number, size: bigint): Promise<void>;
  mmap(fd: number, size: bigint, offset: bigint, populate: boolean): Promise<bigint>;
  munmap(address: bigint, size: bigint): Promise<void>;
  readMemory(address: bigint, length: number): Buffer;
  writeMemory(address: bigint, data: Buffer): void;
  getMemlock(): { soft: bigint | null; hard: bigint | null };
  socketPair(): Promise<[number, number]>;
  sendFds(fd: number, data: Buffer, fds: number[]): Promise<number>;
  recvFds(fd: number, maxData: number, maxFds: number): Promise<{ data: Buffer; fds: number[] }>;
}

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Loads the addon: `addonPath` or $PVDP_VFIO_ADDON when given (a cross-built
 * .node in a guest), else node-gyp-build from the package root (prebuilds/ or
 * build/Release).
 */
export function loadNativeAddon(addonPath: string | undefined = process.env['PVDP_VFIO_ADDON']): NativeAddon {
  const require = createRequire(import.meta.url);
  if (addonPath) return require(addonPath) as NativeAddon;
  // By exact name: build/Release holds more than one addon (the uevent monitor
  // too), and a loader that takes the first *.node found could pick the wrong one.
  const candidates = ['Release', 'Debug'].map((dir) => join(repoRoot, 'build', dir, 'vfio_native.node'));
  const found = candidates.find((file) => existsSync(file));
  if (!found) {
    throw new Error(`the VFIO addon is not built (looked for ${candidates.join(', ')}): run npm ci or npm run build:native`);
  }
  return require(found) as NativeAddon;
}

interface RawError {
  errno?: unknown;
  code?: unknown;
  syscall?: unknown;
  ioctl?: unknown;
  returnValue?: unknown;
}

function constantsFrom(c: Record<string, number>): VfioConstants {
  const get = (name: string): number => {
    const v = c[name];
    if (typeof v !== 'number') throw new Error(`the VFIO addon does not export ${name}`);
    return v;
  };
  return {
    apiVersion: get('VFIO_API_VERSION'),
    type1Iommu: get('VFIO_TYPE1_IOMMU'),
    spaprTceIommu: get('VFIO_SPAPR_TCE_IOMMU'),
    spaprTceV2Iommu: get('VFIO_SPAPR_TCE_v2_IOMMU'),
    eehExtension: get('VFIO_EEH'),
    groupFlagsViable: get('VFIO_GROUP_FLAGS_VIABLE'),
    groupFlagsContainerSet: get('VFIO_GROUP_FLAGS_CONTAINER_SET'),
    dmaMapFlagRead: get('VFIO_DMA_MAP_FLAG_READ'),
    dmaMapFlagWrite: get('VFIO_DMA_MAP_FLAG_WRITE'),
    spaprInfoDdw: get('VFIO_IOMMU_SPAPR_INFO_DDW'),
    eehPeOp: {
      disable: get('VFIO_EEH_PE_DISABLE'),
      enable: get('VFIO_EEH_PE_ENABLE'),
      unfreezeIo: get('VFIO_EEH_PE_UNFREEZE_IO'),
      unfreezeDma: get('VFIO_EEH_PE_UNFREEZE_DMA'),
      getState: get('VFIO_EEH_PE_GET_STATE'),
      resetDeactivate: get('VFIO_EEH_PE_RESET_DEACTIVATE'),
      resetHot: get('VFIO_EEH_PE_RESET_HOT'),
      resetFundamental: get('VFIO_EEH_PE_RESET_FUNDAMENTAL'),
      configure: get('VFIO_EEH_PE_CONFIGURE'),
      injectError: get('VFIO_EEH_PE_INJECT_ERR'),
    },
    eehPeState: {
      normal: get('VFIO_EEH_PE_STATE_NORMAL'),
      reset: get('VFIO_EEH_PE_STATE_RESET'),
      stopped: get('VFIO_EEH_PE_STATE_STOPPED'),
      stoppedDma: get('VFIO_EEH_PE_STATE_STOPPED_DMA'),
      unavailable: get('VFIO_EEH_PE_STATE_UNAVAIL'),
    },
    pciRegion: { bar0: get('VFIO_PCI_BAR0_REGION_INDEX'), config: get('VFIO_PCI_CONFIG_REGION_INDEX') },
  };
}

/** VfioBinding over the real kernel. */
export class NativeBinding implements VfioBinding {
  readonly kind = 'native' as const;
  readonly constants: VfioConstants;
  readonly pageSize: number;
  /** The ioctl request numbers the addon was compiled with (for checks; nothing here uses them). */
  readonly ioctlNumbers: Readonly<Record<string, number>>;
  private readonly paths = new Map<number, string>();

  constructor(private readonly addon: NativeAddon = loadNativeAddon()) {
    this.constants = constantsFrom(addon.constants);
    this.pageSize = addon.constants['PAGE_SIZE'] ?? 4096;
    this.ioctlNumbers = Object.freeze({ ...addon.ioctlNumbers });
    if (Array.isArray(addon.errnoTable)) registerErrnoNames(addon.errnoTable);
  }

  /** Runs an addon call, mapping its rejection to VfioError. */
  private async call<T>(syscall: string, fd: number | undefined, run: () => Promise<T>, path?: string): Promise<T> {
    try {
      return await run();
    } catch (err) {
      throw this.translate(err, syscall, fd, path);
    }
  }

  private translate(err: unknown, syscall: string, fd: number | undefined, path?: string): unknown {
    if (err instanceof TypeError || err instanceof RangeError || !(err instanceof Error)) return err;
    const raw = err as Error & RawError;
    const details = {
      syscall: typeof raw.syscall === 'string' ? raw.syscall : syscall,
      ioctl: typeof raw.ioctl === 'string' ? raw.ioctl : undefined,
      fd,
      path: path ?? (fd === undefined ? undefined : this.paths.get(fd)),
    };
    if (typeof raw.returnValue === 'number') return new VfioError(UNEXPECTED_RETURN, details, raw.returnValue);
    if (typeof raw.errno === 'number') {
      // Prefer the C library's name for the errno (the addon sets `code`); libuv's table lacks some (EBADFD).
      let code = codeOfErrno(raw.errno);
      if (/^E\d+$/.test(code) && typeof raw.code === 'string' && /^E[A-Z0-9]+$/.test(raw.code)) {
        registerErrnoNames([[raw.errno, raw.code, '']]);
        code = raw.code;
      }
      // The code must map back to the same errno (VfioError derives errno from it).
      if (errnoOf(code) !== raw.errno) code = `E${raw.errno}`;
      return new VfioError(code, details);
    }
    return err;
  }

  /** An ioctl whose result must be 0 (a positive value is a failure). */
  private async zeroIoctl(fd: number, name: string, arg: number): Promise<void> {
    const ret = await this.call('ioctl', fd, () => this.addon.ioctlValue(fd, name, arg));
    if (ret !== 0) throw new VfioError(UNEXPECTED_RETURN, { syscall: 'ioctl', ioctl: name, fd, path: this.paths.get(fd) }, ret);
  }

  async openContainer(devRoot: string): Promise<number> {
    const path = containerPath(checkString('devRoot', devRoot));
    const fd = await this.call('open', undefined, () => this.addon.open(path), path);
    this.paths.set(fd, path);
    return fd;
  }

  async openGroup(devRoot: string, group: number): Promise<number> {
    const path = groupPath(checkString('devRoot', devRoot), checkGroupNumber(group));
    const fd = await this.call('open', undefined, () => this.addon.open(path), path);
    this.paths.set(fd, path);
    return fd;
  }

  async close(fd: number): Promise<void> {
    checkFd('fd', fd);
    await this.call('close', fd, () => this.addon.close(fd));
    this.paths.delete(fd);
  }

  async getApiVersion(containerFd: number): Promise<number> {
    checkFd('containerFd', containerFd);
    return this.call('ioctl', containerFd, () => this.addon.ioctlValue(containerFd, 'VFIO_GET_API_VERSION', 0));
  }

  async checkExtension(containerFd: number, extension: number): Promise<number> {
    checkFd('containerFd', containerFd);
    checkU32('extension', extension);
    return this.call('ioctl', containerFd, () => this.addon.ioctlValue(containerFd, 'VFIO_CHECK_EXTENSION', extension));
  }

  async setIommu(containerFd: number, type: number): Promise<void> {
    checkFd('containerFd', containerFd);
    await this.zeroIoctl(containerFd, 'VFIO_SET_IOMMU', checkU32('type', type));
  }

  async spaprTceGetInfo(containerFd: number, options: ArgszOption = {}): Promise<SpaprTceInfo> {
    checkFd('containerFd', containerFd);
    const argsz = checkU32('argsz', options.argsz ?? 32);
    const r = await this.call('ioctl', containerFd, () => this.addon.spaprTceGetInfo(containerFd, argsz));
    return {
      flags: r.flags,
      dma32WindowStart: r.dma32WindowStart,
      dma32WindowSize: r.dma32WindowSize,
      ddw: { pgsizes: r.pgsizes, maxDynamicWindowsSupported: r.maxDynamicWindowsSupported, levels: r.levels },
    };
  }

  async enable(containerFd: number): Promise<void> {
    checkFd('containerFd', containerFd);
    await this.zeroIoctl(containerFd, 'VFIO_IOMMU_ENABLE', 0);
  }

  async disable(containerFd: number): Promise<void> {
    checkFd('containerFd', containerFd);
    await this.zeroIoctl(containerFd, 'VFIO_IOMMU_DISABLE', 0);
  }

  private async memoryIoctl(containerFd: number, unregister: boolean, request: MemoryRegionRequest): Promise<void> {
    const { argsz, flags, vaddr, size } = memoryRegionArgs(containerFd, request);
    await this.call('ioctl', containerFd, () => this.addon.registerMemory(containerFd, unregister, argsz, flags, vaddr, size));
  }

  registerMemory(containerFd: number, request: MemoryRegionRequest): Promise<void> {
    return this.memoryIoctl(containerFd, false, request);
  }

  unregisterMemory(containerFd: number, request: MemoryRegionRequest): Promise<void> {
    return this.memoryIoctl(containerFd, true, request);
  }

  async tceCreate(containerFd: number, request: TceCreateRequest): Promise<bigint> {
    const { argsz, flags, pageShift, windowSize, levels } = tceCreateArgs(containerFd, request);
    return this.call('ioctl', containerFd, () => this.addon.tceCreate(containerFd, argsz, flags, pageShift, windowSize, levels));
  }

  async tceRemove(containerFd: number, request: TceRemoveRequest): Promise<void> {
    const { argsz, flags, startAddr } = tceRemoveArgs(containerFd, request);
    await this.call('ioctl', containerFd, () => this.addon.tceRemove(containerFd, argsz, flags, startAddr));
  }

  async mapDma(containerFd: number, request: DmaMapRequest): Promise<void> {
    const { argsz, flags, vaddr, iova, size } = dmaMapArgs(containerFd, request);
    await this.call('ioctl', containerFd, () => this.addon.mapDma(containerFd, argsz, flags, vaddr, iova, size));
  }

  async unmapDma(containerFd: number, request: DmaUnmapRequest): Promise<void> {
    const { argsz, flags, iova, size } = dmaUnmapArgs(containerFd, request);
    await this.call('ioctl', containerFd, () => this.addon.unmapDma(containerFd, argsz, flags, iova, size));
  }

  async eehPeOp(containerFd: number, request: EehPeOpRequest): Promise<number> {
    checkFd('containerFd', containerFd);
    const op = checkU32('op', request.op);
    const flags = checkU32('flags', request.flags ?? 0);
    const argsz = checkU32('argsz', request.argsz ?? 40);
    return this.call('ioctl', containerFd, () => this.addon.eehPeOp(containerFd, argsz, flags, op));
  }

  async groupGetStatus(groupFd: number, options: ArgszOption = {}): Promise<GroupStatus> {
    checkFd('groupFd', groupFd);
    const argsz = checkU32('argsz', options.argsz ?? 8);
    const flags = await this.call('ioctl', groupFd, () => this.addon.groupGetStatus(groupFd, argsz));
    return {
      flags,
      viable: (flags & this.constants.groupFlagsViable) !== 0,
      containerSet: (flags & this.constants.groupFlagsContainerSet) !== 0,
    };
  }

  async groupSetContainer(groupFd: number, containerFd: number): Promise<void> {
    checkFd('groupFd', groupFd);
    checkFd('containerFd', containerFd);
    await this.call('ioctl', groupFd, () => this.addon.groupSetContainer(groupFd, containerFd));
  }

  async groupUnsetContainer(groupFd: number): Promise<void> {
    checkFd('groupFd', groupFd);
    await this.zeroIoctl(groupFd, 'VFIO_GROUP_UNSET_CONTAINER', 0);
  }

  async groupGetDeviceFd(groupFd: number, name: string): Promise<number> {
    checkFd('groupFd', groupFd);
    checkString('name', name);
    const fd = await this.call('ioctl', groupFd, () => this.addon.groupGetDeviceFd(groupFd, name));
    const path = this.paths.get(groupFd);
    if (path) this.paths.set(fd, `${path}:${name}`);
    return fd;
  }

  async deviceGetRegionInfo(deviceFd: number, index: number): Promise<RegionInfo> {
    checkFd('deviceFd', deviceFd);
    checkU32('index', index);
    const r = await this.call('ioctl', deviceFd, () => this.addon.deviceGetRegionInfo(deviceFd, index));
    return { index, ...r };
  }

  async pread(fd: number, length: number, offset: bigint): Promise<Buffer> {
    checkFd('fd', fd);
    checkLength('length', length, 1 << 24);
    checkU64('offset', offset);
    return this.call('pread', fd, () => this.addon.pread(fd, length, offset));
  }

  async pwrite(fd: number, data: Uint8Array, offset: bigint): Promise<number> {
    checkFd('fd', fd);
    checkBytes('data', data);
    checkU64('offset', offset);
    return this.call('pwrite', fd, () => this.addon.pwrite(fd, Buffer.from(data.buffer, data.byteOffset, data.length), offset));
  }

  async memfdCreate(name: string, options: MemfdOptions = {}): Promise<number> {
    checkString('name', name, 249);
    const huge = options.hugePageShift === undefined ? 0 : checkU32('hugePageShift', options.hugePageShift);
    const fd = await this.call('memfd_create', undefined, () => this.addon.memfdCreate(name, huge));
    this.paths.set(fd, `/memfd:${name}`);
    return fd;
  }

  async ftruncate(fd: number, size: bigint): Promise<void> {
    checkFd('fd', fd);
    checkU64('size', size);
    await this.call('ftruncate', fd, () => this.addon.ftruncate(fd, size));
  }

  async mmap(fd: number, size: bigint, options: MmapOptions = {}): Promise<bigint> {
    checkFd('fd', fd);
    checkU64('size', size);
    const offset = checkU64('offset', options.offset ?? 0n);
    return this.call('mmap', fd, () => this.addon.mmap(fd, size, offset, options.populate ?? false));
  }

  async munmap(address: bigint, size: bigint): Promise<void> {
    checkU64('address', address);
    checkU64('size', size);
    await this.call('munmap', undefined, () => this.addon.munmap(address, size));
  }

  readMemory(address: bigint, length: number): Buffer {
    checkU64('address', address);
    checkLength('length', length, 1 << 30);
    return this.addon.readMemory(address, length);
  }

  writeMemory(address: bigint, data: Uint8Array): void {
    checkU64('address', address);
    checkBytes('data', data);
    this.addon.writeMemory(address, Buffer.from(data.buffer, data.byteOffset, data.length));
  }

  getMemlockLimit(): MemlockLimit {
    return this.addon.getMemlock();
  }

  async lockedMemoryBytes(): Promise<bigint> {
    const status = await readFile('/proc/self/status', 'utf8');
    const m = /^VmLck:\s+(\d+)\s+kB$/m.exec(status);
    return m ? BigInt(m[1]!) * 1024n : 0n;
  }

  async socketPair(): Promise<[number, number]> {
    return this.call('socketpair', undefined, () => this.addon.socketPair());
  }

  async sendFds(socketFd: number, data: Uint8Array, fds: number[]): Promise<number> {
    checkFd('socketFd', socketFd);
    checkBytes('data', data);
    if (!Array.isArray(fds) || fds.length > 253) throw new RangeError('fds must be an array of at most 253 fds');
    fds.forEach((fd, i) => checkFd(`fds[${i}]`, fd));
    if (data.length === 0) throw new RangeError('data must not be empty (SCM_RIGHTS needs at least one byte)');
    return this.call('sendmsg', socketFd, () => this.addon.sendFds(socketFd, Buffer.from(data.buffer, data.byteOffset, data.length), fds));
  }

  async recvFds(socketFd: number, maxData: number, maxFds: number): Promise<ReceivedMessage> {
    checkFd('socketFd', socketFd);
    checkLength('maxData', maxData, 1 << 24);
    checkLength('maxFds', maxFds, 253);
    if (maxData === 0) throw new RangeError('maxData must be at least 1');
    return this.call('recvmsg', socketFd, () => this.addon.recvFds(socketFd, maxData, maxFds));
  }
}

/** The native binding, loaded once per call site. */
export function createNativeBinding(addonPath?: string): NativeBinding {
  return new NativeBinding(loadNativeAddon(addonPath));
}
