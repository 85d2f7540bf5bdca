// Locked-page accounting (account_locked_vm against RLIMIT_MEMLOCK) and v2's registered memory
// (REGISTER/UNREGISTER_MEMORY, mm_iommu_*), including the leak the kernel keeps when a region is
// unregistered while still mapped.
import type { MemoryRegionRequest } from '../binding.js';
import { memoryRegionArgs } from '../validate.js';
import type { SimulatedKernel } from './kernel.js';
import { ctz, type Mm, type Region, type TceDriver } from './objects.js';
import { IOCTL, type ProcessCore } from './process-core.js';

/** @internal: account_locked_vm(mm, pages, true). */
export function account(kernel: SimulatedKernel, proc: ProcessCore, mm: Mm, pages: number): boolean {
  const limit = proc.memlock.soft;
  if (!proc.capIpcLock && limit !== null) {
    const externalPages = Number((mm.externalLockedBytes + BigInt(kernel.pageSize) - 1n) / BigInt(kernel.pageSize));
    if (mm.lockedPages + externalPages + pages > Number(limit >> BigInt(kernel.pageShift))) return false;
  }
  mm.lockedPages += pages;
  return true;
}

/** @internal */
export function unaccount(kernel: SimulatedKernel, mm: Mm, pages: number): void {
  mm.lockedPages -= pages;
  if (mm.lockedPages < 0) throw new Error('simulator bug: locked_vm went negative');
}

/** @internal: is any TCE of any container of this mm pointing into the region? */
export function regionMapped(kernel: SimulatedKernel, mm: Mm, r: Region): boolean {
  for (const d of kernel.drivers) {
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
export function preregFree(kernel: SimulatedKernel, driver: TceDriver, r: Region): void {
  driver.prereg = driver.prereg.filter((x) => x !== r);
  r.users--;
  if (r.users > 0 || !driver.mm) return;
  // Once leaked, a region stays pinned and charged for the life of the process, even if it is
  // registered again and everything is closed [seen: 64 KiB kept after a partial unmap].
  if (r.leaked || regionMapped(kernel, driver.mm, r)) {
    r.leaked = true;
    return;
  }
  driver.mm.regions = driver.mm.regions.filter((x) => x !== r);
  unaccount(kernel, driver.mm, r.chargedPages);
}

export function registerMemory(p: ProcessCore, containerFd: number, request: MemoryRegionRequest): void {
  const { argsz, flags, vaddr, size } = memoryRegionArgs(containerFd, request);
  p.ioctl(IOCTL.registerMemory, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (!d.v2) throw 'ENOTTY';
    p.mmSet(d);
    if (argsz < 24) throw 'EINVAL';
    if (flags) throw 'EINVAL';
    const mask = BigInt(p.pageSize) - 1n;
    if (vaddr & mask || size & mask || vaddr + size > (1n << 64n) - 1n) throw 'EINVAL';
    const existing = p.mm.regions.find((r) => r.vaddr === vaddr && r.size === size);
    if (existing) {
      if (d.prereg.includes(existing)) throw 'EBUSY';
      existing.users++;
      d.prereg.push(existing);
      d.enabled = true;
      return;
    }
    // mm_iommu_do_alloc: vzalloc(0) of the page array fails before the overlap check [seen].
    if (size === 0n) throw 'ENOMEM';
    if (p.mm.regions.some((r) => r.vaddr < vaddr + size && vaddr < r.vaddr + r.size)) throw 'EINVAL';
    const pieces = p.resolve(vaddr, size);
    if (!pieces) throw 'EFAULT';
    const pages = Number(size >> BigInt(p.kernel.pageShift));
    if (!account(p.kernel, p, p.mm, pages)) throw 'ENOMEM';
    let pageShift = Math.min(ctz(vaddr | size), 63);
    for (const p of pieces) pageShift = Math.min(pageShift, p.pageShift);
    const region: Region = { vaddr, size, pageShift, pieces, users: 1, chargedPages: pages, leaked: false };
    p.mm.regions.push(region);
    d.prereg.push(region);
    d.enabled = true;
  }, { vaddr: `0x${vaddr.toString(16)}`, size: `0x${size.toString(16)}` });
}

export function unregisterMemory(p: ProcessCore, containerFd: number, request: MemoryRegionRequest): void {
  const { argsz, flags, vaddr, size } = memoryRegionArgs(containerFd, request);
  p.ioctl(IOCTL.unregisterMemory, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (!d.v2) throw 'ENOTTY';
    // Checked before the arguments [seen: EPERM with bad flags or alignment too].
    if (!d.mm) throw 'EPERM';
    if (argsz < 24) throw 'EINVAL';
    if (flags) throw 'EINVAL';
    const mask = BigInt(p.pageSize) - 1n;
    if (vaddr & mask || size & mask) throw 'EINVAL';
    const region = d.mm.regions.find((r) => r.vaddr === vaddr && r.size === size);
    if (!region || !d.prereg.includes(region)) throw 'ENOENT';
    preregFree(p.kernel, d, region);
  }, { vaddr: `0x${vaddr.toString(16)}`, size: `0x${size.toString(16)}` });
}

export function lockedMemoryBytes(p: ProcessCore): bigint {
  p.alive();
  return BigInt(p.mm.lockedPages) * BigInt(p.pageSize) + p.mm.externalLockedBytes;
}
