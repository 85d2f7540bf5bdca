// What every contract case gets (the context, the requirements that skip a case) and the helpers
// cases share: a scope that closes what a case opened whatever happens, the usual setups, and the
// platform facts the expectations are computed from.
import type { Platform, VfioBinding } from '../binding.js';
import { PLATFORM_PROFILES, type SimulatedKernel, type SimulatedProcess } from '../simulated-kernel.js';
import { assert, succeeds } from '../contract-assert.js';
import type { ChildProcessOptions, ChildResult, ChildScriptArgs, ChildScriptName } from '../contract-child.js';

export interface ContractGroup {
  group: number;
  /** Device names (PCI addresses) in the group. */
  devices: string[];
}

/** Result of one call made in another process. */
export type OtherProcessResult = { ok: true; value: unknown } | { ok: false; code: string };

/** Binding methods a case may run in another process on inherited fds. */
export type OtherProcessOp = 'spaprTceGetInfo' | 'getApiVersion' | 'enable' | 'mapDma' | 'unmapDma';

export interface ContractContext {
  binding: VfioBinding;
  devRoot: string;
  simulated: boolean;
  platform: Platform;
  groups: ContractGroup[];
  /**
   * Runs `op` in another process that inherited `fds` (a forked child, or a
   * spawned Node with the fds at 3, 4, ...). `fdIndex` picks the fd in `fds`;
   * bigint arguments are allowed.
   */
  inOtherProcess(fds: number[], op: OtherProcessOp, fdIndex: number, args?: unknown[]): Promise<OtherProcessResult>;
  /**
   * Runs a script of contract-child.ts in a process of its own (which exits afterwards, taking any
   * locked memory the kernel leaked with it), optionally without CAP_IPC_LOCK under a given
   * RLIMIT_MEMLOCK.
   */
  inChildProcess(script: ChildScriptName, args: ChildScriptArgs, options?: ChildProcessOptions): Promise<ChildResult>;
  /** What sysfs shows for a device: its `resource` file and the size of its `config` file. */
  pciDevice(name: string): Promise<{ resource: string; configSize: number }>;
  /** Huge page sizes (shifts) the kernel has, as listed in /sys/kernel/mm/hugepages. */
  hugePageShifts(): Promise<number[]>;
  /** A group with one function on vfio-pci and another on a host driver (not viable), where arranged. */
  nonViableGroup?: ContractGroup;
  /** Only with the simulator: the kernel, for fault injection. */
  sim?: SimulatedKernel;
  log(message: string): void;
}

export interface ContractRequires {
  /** Runs only on the simulator: why (it would crash the guest kernel or break its state until reboot). */
  simulated?: string;
  /** At least this many VFIO groups (default 1; 0 for cases that need no device). */
  groups?: number;
  platforms?: Platform[];
}

export interface ContractCase {
  name: string;
  requires?: ContractRequires;
  run(ctx: ContractContext): Promise<void>;
}

/** Why a case cannot run in this context, or null. */
export function skipReason(c: ContractCase, ctx: Pick<ContractContext, 'simulated' | 'groups' | 'platform'>): string | null {
  const r = c.requires ?? {};
  if (r.simulated && !ctx.simulated) return `simulator only: ${r.simulated}`;
  const groups = r.groups ?? 1;
  if (ctx.groups.length < groups) {
    return ctx.groups.length === 0 ? 'needs a VFIO group (a device bound to vfio-pci); none given' : `needs ${groups} groups, have ${ctx.groups.length}`;
  }
  if (r.platforms && !r.platforms.includes(ctx.platform)) return `platform ${ctx.platform} not in ${r.platforms.join(', ')}`;
  return null;
}
// ----------------------------------------------------------------------------
// Helpers: a scope that closes what a case opened, whatever happens.

export class Scope {
  private fds: number[] = [];
  private maps: Array<{ address: bigint; size: bigint }> = [];
  constructor(private readonly b: VfioBinding) {}
  fd(fd: number): number {
    this.fds.push(fd);
    return fd;
  }
  forget(fd: number): void {
    this.fds = this.fds.filter((x) => x !== fd);
  }
  async close(fd: number): Promise<void> {
    this.forget(fd);
    await this.b.close(fd);
  }
  async memory(size: bigint): Promise<{ fd: number; address: bigint; size: bigint }> {
    const fd = this.fd(await this.b.memfdCreate('contract'));
    await this.b.ftruncate(fd, size);
    const address = await this.b.mmap(fd, size);
    this.maps.push({ address, size });
    return { fd, address, size };
  }
  async dispose(): Promise<void> {
    // Close newest first: device fds before group fds before the container.
    for (const fd of this.fds.reverse()) await this.b.close(fd).catch(() => undefined);
    this.fds = [];
    for (const m of this.maps) await this.b.munmap(m.address, m.size).catch(() => undefined);
    this.maps = [];
  }
}

export async function scoped(ctx: ContractContext, fn: (s: Scope) => Promise<void>): Promise<void> {
  const s = new Scope(ctx.binding);
  try {
    await fn(s);
  } finally {
    if (!ctx.sim?.dead) await s.dispose();
  }
}

export interface Setup {
  group: number;
  groupFd: number;
  containerFd: number;
}

/** Opens the first group and a container; attaches and sets the IOMMU type when asked. */
export async function setup(ctx: ContractContext, s: Scope, iommu: 'none' | 'attached' | 'v1' | 'v2', index = 0): Promise<Setup> {
  const g = ctx.groups[index]!;
  const groupFd = s.fd(await ctx.binding.openGroup(ctx.devRoot, g.group));
  const containerFd = s.fd(await ctx.binding.openContainer(ctx.devRoot));
  if (iommu !== 'none') await succeeds(ctx.binding.groupSetContainer(groupFd, containerFd), 'GROUP_SET_CONTAINER');
  const k = ctx.binding.constants;
  if (iommu === 'v1') await succeeds(ctx.binding.setIommu(containerFd, k.spaprTceIommu), 'SET_IOMMU v1');
  if (iommu === 'v2') await succeeds(ctx.binding.setIommu(containerFd, k.spaprTceV2Iommu), 'SET_IOMMU v2');
  return { group: g.group, groupFd, containerFd };
}

export function profile(ctx: ContractContext) {
  return PLATFORM_PROFILES[ctx.platform];
}

export const RW = (b: VfioBinding) => b.constants.dmaMapFlagRead | b.constants.dmaMapFlagWrite;
/** An fd number no process has open (above any RLIMIT_NOFILE). */
export const BAD_FD = 1_000_000;
export const KiB = 1024n;
export const MiB = 1024n * KiB;

/** The default window's TCE table charge: dma32 size / 4K * 8, doubled on powernv (hardware table + userspace view) [seen]. */
export function defaultTable(ctx: Pick<ContractContext, 'platform'>): bigint {
  const p = PLATFORM_PROFILES[ctx.platform];
  return (p.dma32Size >> 12n) * 8n * (p.family === 'powernv' ? 2n : 1n);
}

export async function locked(ctx: ContractContext): Promise<bigint> {
  return ctx.binding.lockedMemoryBytes();
}

export function childArgs(ctx: ContractContext): ChildScriptArgs {
  return { devRoot: ctx.devRoot, platform: ctx.platform, group: ctx.groups[0]!.group };
}

export function simProcess(ctx: ContractContext): SimulatedProcess {
  assert(ctx.sim, 'this case needs the simulator');
  return ctx.binding as SimulatedProcess;
}

