// What every simulated syscall goes through: the process's fd table, liveness, the call log, and
// errno codes (thrown as strings by the kernel code) turned into the VfioError the native binding
// throws. Lookups that several ioctls share (a container's driver, the mm rule) live here too.
import type { MemlockLimit } from '../binding.js';
import { KernelOopsError, UNEXPECTED_RETURN, VfioError } from '../errors.js';
import type { SimulatedKernel } from './kernel.js';
import type { Container, GroupFile, Mm, OpenFile, Piece, TceDriver } from './objects.js';

export const IOCTL = {
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

export type IoctlName = (typeof IOCTL)[keyof typeof IOCTL];

/** An ioctl that returns a positive value where the caller expects 0 (a kernel quirk, not an errno). */
export class PositiveReturn {
  constructor(readonly value: number) {}
}

export class ProcessCore {
  /** @internal */ readonly fds = new Map<number, OpenFile>();
  /** @internal */ exited = false;
  readonly pageSize: number;

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


  alive(): void {
    this.kernel.assertAlive();
    if (this.exited) throw new Error(`simulated process ${this.pid} has exited`);
  }

  err(code: string, syscall: string, fd?: number, ioctl?: IoctlName, path?: string): VfioError {
    const file = fd === undefined ? undefined : this.fds.get(fd);
    return new VfioError(code, { syscall, ioctl, fd, path: path ?? file?.path });
  }

  /** Runs one ioctl with the kernel's bookkeeping: liveness, the call log, errno codes thrown as strings. */
  ioctl<T>(name: IoctlName, fd: number, body: () => T, detail?: Record<string, string | number>): T {
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

  file(fd: number): OpenFile {
    const f = this.fds.get(fd);
    if (!f) throw 'EBADF';
    return f;
  }

  containerOf(fd: number): Container {
    const f = this.file(fd);
    if (f.kind !== 'container') throw 'ENOTTY';
    return f.container;
  }

  /** Container ioctls the vfio core passes to the IOMMU driver: EINVAL before SET_IOMMU, EPERM from a foreign mm. */
  driverOf(fd: number): TceDriver {
    const c = this.containerOf(fd);
    if (!c.driver) throw 'EINVAL';
    if (c.driver.mm && c.driver.mm !== this.mm) throw 'EPERM';
    return c.driver;
  }

  /** tce_iommu_mm_set. */
  mmSet(d: TceDriver): void {
    if (d.mm) {
      if (d.mm !== this.mm) throw 'EPERM';
      return;
    }
    d.mm = this.mm;
  }

  groupFileOf(fd: number): GroupFile {
    const f = this.file(fd);
    // On a container fd, unknown ioctls are EINVAL before SET_IOMMU (the container has no
    // driver to pass them to) and ENOTTY after (the driver does not know them) [seen].
    if (f.kind === 'container') throw f.container.driver ? 'ENOTTY' : 'EINVAL';
    if (f.kind !== 'group') throw 'ENOTTY';
    return f;
  }

  installFd(file: OpenFile): number {
    let fd = 3;
    while (this.fds.has(fd)) fd++;
    this.fds.set(fd, file);
    return fd;
  }

  /** Resolves [vaddr, vaddr+size) through this process's mappings; null when a hole is found. */
  resolve(vaddr: bigint, size: bigint): Piece[] | null {
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
}
