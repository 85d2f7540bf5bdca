// The DMA memory a process provides: memfds (normal or hugetlb pages), ftruncate, mmap/munmap
// with the hugetlb pool's reservations, and reads and writes through a mapping.
import type { MemfdOptions, MmapOptions } from '../binding.js';
import { checkBytes, checkFd, checkLength, checkString, checkU32, checkU64 } from '../validate.js';
import type { SimulatedKernel } from './kernel.js';
import { CHUNK, readMemfd, writeMemfd, type Mapping, type Memfd } from './objects.js';
import type { ProcessCore } from './process-core.js';

/** @internal: reserve hugetlb pages at mmap time. */
export function reserveHuge(kernel: SimulatedKernel, shift: number, pages: number): boolean {
  const free = kernel.hugePool.get(shift) ?? 0;
  if (free < pages) return false;
  kernel.hugePool.set(shift, free - pages);
  return true;
}

/** @internal */
export function releaseHuge(kernel: SimulatedKernel, m: Mapping): void {
  if (m.hugePages > 0 && m.memfd.hugePageShift !== null) {
    kernel.hugePool.set(m.memfd.hugePageShift, (kernel.hugePool.get(m.memfd.hugePageShift) ?? 0) + m.hugePages);
    m.hugePages = 0;
  }
}

export function memfdCreate(p: ProcessCore, name: string, options: MemfdOptions = {}): number {
  checkString('name', name, 249);
  p.alive();
  // 0 means normal pages, as in the addon.
  const huge = options.hugePageShift ? options.hugePageShift : null;
  if (huge !== null) {
    checkU32('hugePageShift', huge);
    // The same argument check as the addon's.
    if (huge < 16 || huge > 40) throw new RangeError('hugePageShift out of range');
    // No hstate of that size: hugetlb_file_setup refuses with ENODEV [seen on 6.12].
    if (!p.kernel.supportsHugeShift(huge)) throw p.err('ENODEV', 'memfd_create');
  }
  const memfd: Memfd = { id: p.kernel.newId(), name, size: 0n, hugePageShift: huge, chunks: new Map() };
  return p.installFd({ kind: 'memfd', refs: 1, path: `/memfd:${name}`, memfd });
}

export function ftruncate(p: ProcessCore, fd: number, size: bigint): void {
  checkFd('fd', fd);
  checkU64('size', size);
  p.alive();
  const f = p.fds.get(fd);
  if (!f) throw p.err('EBADF', 'ftruncate', fd);
  if (f.kind !== 'memfd') throw p.err('EINVAL', 'ftruncate', fd);
  if (size > 1n << 50n) throw p.err('EFBIG', 'ftruncate', fd);
  const huge = f.memfd.hugePageShift;
  if (huge !== null && size & ((1n << BigInt(huge)) - 1n)) throw p.err('EINVAL', 'ftruncate', fd);
  f.memfd.size = size;
  for (const idx of [...f.memfd.chunks.keys()]) if (idx * CHUNK >= size) f.memfd.chunks.delete(idx);
}

export function mmap(p: ProcessCore, fd: number, size: bigint, options: MmapOptions = {}): bigint {
  checkFd('fd', fd);
  checkU64('size', size);
  const offset = checkU64('offset', options.offset ?? 0n);
  p.alive();
  const f = p.fds.get(fd);
  if (!f) throw p.err('EBADF', 'mmap', fd);
  if (f.kind !== 'memfd') throw p.err('ENODEV', 'mmap', fd);
  const huge = f.memfd.hugePageShift;
  const pageShift = huge ?? p.kernel.pageShift;
  const align = 1n << BigInt(pageShift);
  if (size === 0n || offset & (align - 1n)) throw p.err('EINVAL', 'mmap', fd);
  const len = (size + align - 1n) & ~(align - 1n);
  if (len > 1n << 46n) throw p.err('ENOMEM', 'mmap', fd);
  let hugePages = 0;
  if (huge !== null) {
    hugePages = Number(len >> BigInt(huge));
    if (!reserveHuge(p.kernel, huge, hugePages)) throw p.err('ENOMEM', 'mmap', fd);
  }
  const addr = (p.mm.nextAddr + align - 1n) & ~(align - 1n);
  p.mm.nextAddr = addr + len + (1n << 20n); // a guard gap, so ranges are never accidentally contiguous
  p.mm.mappings.push({ addr, size: len, memfd: f.memfd, offset, pageShift, hugePages });
  return addr;
}

export function munmap(p: ProcessCore, address: bigint, size: bigint): void {
  checkU64('address', address);
  checkU64('size', size);
  p.alive();
  const i = p.mm.mappings.findIndex(
    (m) => m.addr === address && (m.size === size || m.size === ((size + BigInt(p.pageSize) - 1n) & ~(BigInt(p.pageSize) - 1n))),
  );
  if (i < 0) throw p.err('EINVAL', 'munmap');
  const [m] = p.mm.mappings.splice(i, 1);
  releaseHuge(p.kernel, m!);
}

export function mappingFor(p: ProcessCore, address: bigint, length: number): Mapping {
  checkU64('address', address);
  const m = p.mm.mappings.find((x) => x.addr <= address && address + BigInt(length) <= x.addr + x.size);
  if (!m) throw new RangeError(`0x${address.toString(16)}+${length} is not inside a mapping made by this binding`);
  return m;
}

export function readMemory(p: ProcessCore, address: bigint, length: number): Buffer {
  checkLength('length', length, 1 << 30);
  p.alive();
  const m = mappingFor(p, address, length);
  return readMemfd(m.memfd, m.offset + (address - m.addr), length);
}

export function writeMemory(p: ProcessCore, address: bigint, data: Uint8Array): void {
  checkBytes('data', data);
  p.alive();
  const m = mappingFor(p, address, data.length);
  writeMemfd(m.memfd, m.offset + (address - m.addr), Buffer.from(data.buffer, data.byteOffset, data.length));
}
