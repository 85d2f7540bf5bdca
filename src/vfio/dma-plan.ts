// The shapes a prepared container is described in (memory, window, mapped ranges) and a verified
// group (the verify mode's options and result), and the arithmetic the sequence plans with: sizes,
// ranges, window bounds and how many TCE levels the kernel accepts for a window.
import type { Logger } from '../log.js';
import { kernelMaxPageOrder, type SpaprTceInfo } from './binding.js';
import { VfioPrepareError } from './errors.js';

export type IommuVersion = 'v1' | 'v2';

/** DMA memory: a memfd mapped shared read-write into this process. */
export interface DmaMemory {
  fd: number;
  address: bigint;
  size: bigint;
  /** Backing page size in bytes (the kernel page, or the huge page). */
  pageSize: bigint;
  release(): Promise<void>;
}

/** An IOMMU window the device can DMA through. */
export interface DmaWindow {
  start: bigint;
  size: bigint;
  pageShift: number;
  levels: number;
  /** True for a window this sequence created (v2); false for the platform's dma32 window (v1). */
  created: boolean;
}

/** One MAP_DMA: `size` bytes at `vaddr` (offset `offset` in the memory fd) seen by the device at `iova`. */
export interface MappedRange {
  iova: bigint;
  vaddr: bigint;
  size: bigint;
  offset: bigint;
}

export interface PrepareOptions {
  /** Directory holding dev/vfio ('/' on a node). */
  devRoot: string;
  /** Whole IOMMU groups to put in one container. */
  groups: number[];
  /** Bytes of DMA memory to allocate and map (rounded up to the backing page size). */
  memorySize: bigint;
  /** Back the memory with hugetlb pages of 2^shift bytes. */
  hugePageShift?: number;
  /** v2: the smallest window to create (a power of two is chosen at least this large). */
  minWindowSize?: bigint;
  /** 'auto' (v2 when the kernel takes it, else v1), or force one. Default 'auto'. */
  iommu?: 'auto' | IommuVersion;
  logger?: Logger;
}

/** One IOMMU container of a preparation, with the groups attached to it. */
export interface PreparedIommuContainer {
  containerFd: number;
  groups: Array<{ group: number; fd: number }>;
  window: DmaWindow;
  mappings: MappedRange[];
}

/** A prepared container the caller keeps (handoff) or releases (verify). */
export interface PreparedContainer {
  /** The first container (the one holding the first group). */
  containerFd: number;
  /** Every group of the allocation, in the order asked for. */
  groups: Array<{ group: number; fd: number }>;
  /**
   * The containers, first one first: one for all groups where the kernel lets them share
   * (powernv v2), else one per group (v1; pseries v2). Each maps the same memory at the same
   * iova range of an identical window.
   */
  containers: PreparedIommuContainer[];
  iommu: IommuVersion;
  info: SpaprTceInfo;
  window: DmaWindow;
  memory: DmaMemory;
  mappings: MappedRange[];
  /** Locked memory this preparation added (VmLck after minus before). */
  lockedBytes: bigint;
  /** Undo everything in order; safe to call twice. Throws VfioPrepareError when a step failed (all steps still run). */
  release(): Promise<void>;
}

/** The `verify` mode (verify-groups.ts): each group prepared in a container of its own, then released. */
export interface VerifyOptions {
  devRoot: string;
  /** Bytes of probe memory to map and unmap (default one kernel page). */
  probeSize?: bigint;
  hugePageShift?: number;
  iommu?: 'auto' | IommuVersion;
  logger?: Logger;
}

/** What verifying one group learned. */
export interface GroupVerification {
  group: number;
  iommu: IommuVersion;
  window: DmaWindow;
  info: SpaprTceInfo;
  /** Locked memory the preparation needed at its peak. */
  lockedBytes: bigint;
}

export const MiB = 1n << 20n;

/** "64 MiB", "1 GiB", "12 KiB". */
export function formatBytes(bytes: bigint): string {
  const units: Array<[bigint, string]> = [
    [1n << 40n, 'TiB'],
    [1n << 30n, 'GiB'],
    [1n << 20n, 'MiB'],
    [1n << 10n, 'KiB'],
  ];
  for (const [size, unit] of units) if (bytes >= size && bytes % size === 0n) return `${bytes / size} ${unit}`;
  for (const [size, unit] of units) if (bytes >= size) return `${(Number(bytes) / Number(size)).toFixed(1)} ${unit}`;
  return `${bytes} bytes`;
}

export function nextPow2(v: bigint): bigint {
  let p = 1n;
  while (p < v) p <<= 1n;
  return p;
}

export function roundUp(v: bigint, to: bigint): bigint {
  return ((v + to - 1n) / to) * to;
}

/** Merges ranges contiguous in both vaddr and iova, so each needs one MAP_DMA. */
export function coalesceRanges(ranges: MappedRange[]): MappedRange[] {
  const sorted = [...ranges].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
  const out: MappedRange[] = [];
  for (const r of sorted) {
    if (r.size === 0n) continue;
    const last = out[out.length - 1];
    if (last && last.iova + last.size === r.iova && last.vaddr + last.size === r.vaddr && last.offset + last.size === r.offset) {
      last.size += r.size;
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

/** The check the kernel does not do: the whole range inside the window. Throws before any MAP_DMA that would overrun. */
export function assertInsideWindow(window: DmaWindow, iova: bigint, size: bigint): void {
  const end = window.start + window.size;
  if (iova < window.start || iova + size > end || size < 0n) {
    throw new VfioPrepareError('ERR_VFIO_WINDOW_BOUNDS', {
      step: 'map',
      problem: `Refusing MAP_DMA of 0x${size.toString(16)} bytes at iova 0x${iova.toString(16)}: the window is 0x${window.start.toString(16)}..0x${end.toString(16)}`,
      remedy: 'map only inside the window (mapping past its end crashes pseries kernels); this is a bug in the caller',
    });
  }
}

/**
 * The fewest TCE table levels a multi-level platform (powernv) builds for a window: each level is
 * one contiguous allocation of at most PAGE_SIZE << MAX_PAGE_ORDER bytes (16 MiB, 2M entries, on
 * 4K-page and 64K-page kernels alike: kernelMaxPageOrder), and (level bits) * levels + page shift
 * must stay below 55. Platforms with one level (pseries) get 1.
 */
export function acceptedLevels(windowSize: bigint, pageShift: number, kernelPageSize: number, maxLevels: number): number {
  if (maxLevels <= 1) return 1;
  let entriesShift = 0;
  for (let v = windowSize >> BigInt(pageShift); v > 1n; v >>= 1n) entriesShift++;
  const kernelPageShift = Math.round(Math.log2(kernelPageSize));
  const maxOrder = kernelMaxPageOrder(kernelPageSize);
  for (let levels = 1; levels <= maxLevels; levels++) {
    const levelShift = Math.max(Math.ceil(entriesShift / levels) + 3, kernelPageShift);
    if (levelShift <= kernelPageShift + maxOrder && (levelShift - 3) * levels + pageShift < 55) return levels;
  }
  return 1;
}

/**
 * Locked memory the kernel charges for a default (4K-page) window's TCE
 * table: 8 bytes per entry, twice on powernv (seen: 2 MiB for 1 GiB on
 * pseries, 8 MiB for 2 GiB on powernv). The larger figure is used.
 */
export function defaultTableEstimate(windowSize: bigint): bigint {
  return (windowSize >> 12n) * 8n * 2n;
}
