// One simulated process as a VfioBinding: its syscall table. Each entry is implemented in the file
// for its part of the kernel; this class holds the process's identity, limits and fault injection.
import type {
  ArgszOption,
  DmaMapRequest,
  DmaUnmapRequest,
  EehPeOpRequest,
  GroupStatus,
  MemfdOptions,
  MemlockLimit,
  MemoryRegionRequest,
  MmapOptions,
  ReceivedMessage,
  RegionInfo,
  SpaprTceInfo,
  TceCreateRequest,
  TceRemoveRequest,
  VfioBinding,
} from '../binding.js';
import * as container from './container.js';
import * as dma from './dma-map.js';
import * as files from './files.js';
import * as groups from './groups.js';
import { SIMULATED_CONSTANTS } from './platform.js';
import { ProcessCore } from './process-core.js';
import * as registered from './registered-memory.js';
import * as windows from './tce-windows.js';
import * as memory from './user-memory.js';

/** One simulated process: a VfioBinding with its own fd table, mm and limits. */
export class SimulatedProcess extends ProcessCore implements VfioBinding {
  readonly kind = 'simulated' as const;
  readonly constants = SIMULATED_CONSTANTS;

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

  // --- /dev/vfio ----------------------------------------------------------------

  async openContainer(devRoot: string): Promise<number> {
    return container.openContainer(this, devRoot);
  }

  async openGroup(devRoot: string, group: number): Promise<number> {
    return groups.openGroup(this, devRoot, group);
  }

  async close(fd: number): Promise<void> {
    files.close(this, fd);
  }

  // --- container ioctls ----------------------------------------------------------

  async getApiVersion(containerFd: number): Promise<number> {
    return container.getApiVersion(this, containerFd);
  }

  async checkExtension(containerFd: number, extension: number): Promise<number> {
    return container.checkExtension(this, containerFd, extension);
  }

  async setIommu(containerFd: number, type: number): Promise<void> {
    container.setIommu(this, containerFd, type);
  }

  async spaprTceGetInfo(containerFd: number, options: ArgszOption = {}): Promise<SpaprTceInfo> {
    return container.spaprTceGetInfo(this, containerFd, options);
  }

  async enable(containerFd: number): Promise<void> {
    container.enable(this, containerFd);
  }

  async disable(containerFd: number): Promise<void> {
    container.disable(this, containerFd);
  }

  async registerMemory(containerFd: number, request: MemoryRegionRequest): Promise<void> {
    registered.registerMemory(this, containerFd, request);
  }

  async unregisterMemory(containerFd: number, request: MemoryRegionRequest): Promise<void> {
    registered.unregisterMemory(this, containerFd, request);
  }

  async tceCreate(containerFd: number, request: TceCreateRequest): Promise<bigint> {
    return windows.tceCreate(this, containerFd, request);
  }

  async tceRemove(containerFd: number, request: TceRemoveRequest): Promise<void> {
    windows.tceRemove(this, containerFd, request);
  }

  async mapDma(containerFd: number, request: DmaMapRequest): Promise<void> {
    dma.mapDma(this, containerFd, request);
  }

  async unmapDma(containerFd: number, request: DmaUnmapRequest): Promise<void> {
    dma.unmapDma(this, containerFd, request);
  }

  async eehPeOp(containerFd: number, request: EehPeOpRequest): Promise<number> {
    return groups.eehPeOp(this, containerFd, request);
  }

  // --- group and device ioctls ---------------------------------------------------

  async groupGetStatus(groupFd: number, options: ArgszOption = {}): Promise<GroupStatus> {
    return groups.groupGetStatus(this, groupFd, options);
  }

  async groupSetContainer(groupFd: number, containerFd: number): Promise<void> {
    groups.groupSetContainer(this, groupFd, containerFd);
  }

  async groupUnsetContainer(groupFd: number): Promise<void> {
    groups.groupUnsetContainer(this, groupFd);
  }

  async groupGetDeviceFd(groupFd: number, name: string): Promise<number> {
    return groups.groupGetDeviceFd(this, groupFd, name);
  }

  async deviceGetRegionInfo(deviceFd: number, index: number): Promise<RegionInfo> {
    return groups.deviceGetRegionInfo(this, deviceFd, index);
  }

  async pread(fd: number, length: number, offset: bigint): Promise<Buffer> {
    return files.pread(this, fd, length, offset);
  }

  async pwrite(fd: number, data: Uint8Array, offset: bigint): Promise<number> {
    return files.pwrite(this, fd, data, offset);
  }

  // --- DMA memory ----------------------------------------------------------------

  async memfdCreate(name: string, options: MemfdOptions = {}): Promise<number> {
    return memory.memfdCreate(this, name, options);
  }

  async ftruncate(fd: number, size: bigint): Promise<void> {
    memory.ftruncate(this, fd, size);
  }

  async mmap(fd: number, size: bigint, options: MmapOptions = {}): Promise<bigint> {
    return memory.mmap(this, fd, size, options);
  }

  async munmap(address: bigint, size: bigint): Promise<void> {
    memory.munmap(this, address, size);
  }

  readMemory(address: bigint, length: number): Buffer {
    return memory.readMemory(this, address, length);
  }

  writeMemory(address: bigint, data: Uint8Array): void {
    memory.writeMemory(this, address, data);
  }

  // --- accounting ----------------------------------------------------------------

  getMemlockLimit(): MemlockLimit {
    return { ...this.memlock };
  }

  async lockedMemoryBytes(): Promise<bigint> {
    return registered.lockedMemoryBytes(this);
  }

  // --- fd passing ----------------------------------------------------------------

  async socketPair(): Promise<[number, number]> {
    return files.socketPair(this);
  }

  async sendFds(socketFd: number, data: Uint8Array, fds: number[]): Promise<number> {
    return files.sendFds(this, socketFd, data, fds);
  }

  async recvFds(socketFd: number, maxData: number, maxFds: number): Promise<ReceivedMessage> {
    return files.recvFds(this, socketFd, maxData, maxFds);
  }
}
