// MAP_DMA and UNMAP_DMA (what each checks, in the kernel's order, and which mistakes are an Oops
// rather than an errno), and the device side: DMA through the TCEs they wrote.
import type { DmaMapRequest, DmaUnmapRequest } from '../binding.js';
import { dmaMapArgs, dmaUnmapArgs } from '../validate.js';
import type { SimulatedKernel } from './kernel.js';
import { tableEnd, type Extent, type Memfd, type Piece, type SimGroup, type Table } from './objects.js';
import { SIMULATED_CONSTANTS } from './platform.js';
import { IOCTL, PositiveReturn, type ProcessCore } from './process-core.js';
import { createDefaultWindow } from './tce-windows.js';

const C = SIMULATED_CONSTANTS;

export function mapDma(p: ProcessCore, containerFd: number, request: DmaMapRequest): void {
  const { argsz, flags, vaddr, iova, size } = dmaMapArgs(containerFd, request);
  p.ioctl(IOCTL.mapDma, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (!d.enabled) throw 'EPERM';
    if (argsz < 32) throw 'EINVAL';
    if (flags & ~(C.dmaMapFlagRead | C.dmaMapFlagWrite)) throw 'EINVAL';
    createDefaultWindow(p.kernel, p, d);
    const t = d.tables.find((x) => x !== null && x.start <= iova && iova < tableEnd(x));
    if (!t) throw 'ENXIO';
    const pageMask = (1n << BigInt(t.pageShift)) - 1n;
    if (size & pageMask || vaddr & pageMask) throw 'EINVAL';
    if (!(flags & (C.dmaMapFlagRead | C.dmaMapFlagWrite))) throw 'EINVAL';
    // iommu_tce_put_param_check is an `a || b` expression: a failed check returns 1, not -EINVAL.
    if (iova & pageMask) throw new PositiveReturn(1);
    // Only the first page is range-checked by the kernel; writing TCEs past the table is the Oops.
    if (iova + size > tableEnd(t)) {
      p.kernel.die(
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
        const r = p.mm.regions.find((x) => x.vaddr <= cur && cur < x.vaddr + x.size);
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
      pieces = p.resolve(vaddr, size);
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

export function unmapDma(p: ProcessCore, containerFd: number, request: DmaUnmapRequest): void {
  const { argsz, flags, iova, size } = dmaUnmapArgs(containerFd, request);
  p.ioctl(IOCTL.unmapDma, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (!d.enabled) throw 'EPERM';
    if (argsz < 24) throw 'EINVAL';
    if (flags) throw 'EINVAL';
    createDefaultWindow(p.kernel, p, d);
    const t = d.tables.find((x) => x !== null && x.start <= iova && iova < tableEnd(x));
    if (!t) throw 'ENXIO';
    const pageMask = (1n << BigInt(t.pageShift)) - 1n;
    if (size & pageMask) throw 'EINVAL';
    if (iova & pageMask) throw new PositiveReturn(1);
    // Only the first page is range-checked, like MAP. pseries [seen]: the entries past the end go
    // to H_PUT_TCE, which the hypervisor refuses; the kernel skips them and returns 0.
    if (iova + size > tableEnd(t)) {
      if (p.kernel.profile.family !== 'pseries') {
        p.kernel.die(`UNMAP_DMA cleared TCEs past the end of the window (iova 0x${iova.toString(16)} size 0x${size.toString(16)})`);
      }
      clearExtents(t, iova >> BigInt(t.pageShift), (tableEnd(t) - iova) >> BigInt(t.pageShift));
      return;
    }
    clearExtents(t, iova >> BigInt(t.pageShift), size >> BigInt(t.pageShift));
  }, { iova: `0x${iova.toString(16)}`, size: `0x${size.toString(16)}` });
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

/** Device-side DMA through a group's TCEs; an unmapped or forbidden access is blocked and freezes the PE. */
export function dmaWalk(
  kernel: SimulatedKernel,
  g: SimGroup,
  iova: bigint,
  length: bigint,
  write: boolean,
  fn: (memfd: Memfd, offset: bigint, pos: number, len: number) => void,
): void {
  kernel.assertAlive();
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
