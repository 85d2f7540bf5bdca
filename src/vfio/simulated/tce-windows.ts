// TCE tables and DMA windows: the platform's table size, window creation (the v1 default window,
// pending until first use, and v2's TCE_CREATE with its levels) and TCE_REMOVE. The charge for a
// table goes to locked_vm before the table exists and, on most failures, stays there.
import { kernelMaxPageOrder, type TceCreateRequest, type TceRemoveRequest } from '../binding.js';
import { tceCreateArgs, tceRemoveArgs } from '../validate.js';
import type { SimulatedKernel } from './kernel.js';
import { ilog2, isPow2, tableEnd, type Table, type TceDriver } from './objects.js';
import { DDW_START, IOMMU_PAGE_SHIFT_4K, PSERIES_MAX_TABLE_ORDER, PSERIES_MULTILEVEL_CHARGE } from './platform.js';
import { IOCTL, type ProcessCore } from './process-core.js';
import { account, unaccount } from './registered-memory.js';

/** @internal: the platform's get_table_size; 0 means the parameters are refused (EINVAL). */
export function tableSize(kernel: SimulatedKernel, pageShift: number, windowSize: bigint, levels: number): bigint {
  if (kernel.profile.family === 'pseries') {
    // entries * 8, no minimum, power of two or not: levels > 1 and a size that is not a power of
    // two are refused only after the charge (createWindow) [seen: 3 MiB leaked one page].
    return (windowSize >> BigInt(pageShift)) * 8n;
  }
  if (!isPow2(windowSize)) return 0n;
  // A window smaller than one IOMMU page still gets a minimal table (created at 0x0, 8 KiB
  // charged on a 4K-page kernel, seen for 8K..32K windows of 64K pages).
  const entriesShift = Math.max(0, ilog2(windowSize) - pageShift);
  if (levels < 1 || levels > kernel.profile.maxLevels) return 0n;
  let tceTableSize = 1n << BigInt(entriesShift + 3);
  if (tceTableSize < 0x1000n) tceTableSize = 0x1000n;
  const levelEntriesShift = Math.ceil(entriesShift / levels);
  const directShift = Math.max(levelEntriesShift + 3, kernel.pageShift);
  const direct = 1n << BigInt(directShift);
  let bytes = 0n;
  for (let l = levels; l > 0; l--) {
    bytes += ((tceTableSize + direct - 1n) / direct) * direct;
    tceTableSize = (tceTableSize / direct) << 3n;
    if (tceTableSize < direct) tceTableSize = direct;
  }
  return bytes * 2n; // the hardware table and its userspace view
}

/** @internal: tce_iommu_create_window. Returns the table or throws an errno code. */
export function createWindow(kernel: SimulatedKernel, proc: ProcessCore, driver: TceDriver, pageShift: number, windowSize: bigint, levels: number, isDefault: boolean): Table {
  const num = driver.tables.findIndex((t) => t === null);
  if (num < 0 || num >= kernel.profile.maxDynamicWindows) throw 'ENOSPC';
  if (pageShift > 63 || ((kernel.profile.pgsizes >> BigInt(pageShift)) & 1n) === 0n) throw 'EINVAL';
  const pseries = kernel.profile.family === 'pseries';
  // pseries programs a table only into the PE it was built for: with two groups attached every
  // window creation (the pending default one at the first MAP/UNMAP too) is EPERM, before any
  // charge [seen]. So several groups in one pseries v2 container can never get a window.
  if (pseries && driver.groups.length > 1) throw 'EPERM';
  if (pseries && levels === 0) levels = 1; // [seen] levels 0 is one level on pseries
  const size = pseries && levels > 1 ? PSERIES_MULTILEVEL_CHARGE : tableSize(kernel, pageShift, windowSize, levels);
  // pseries re-creates the 32-bit default window for a 4K-page request in slot 0 even when it is
  // smaller than one page: an empty window at the dma32 start, uncharged, that TCE_REMOVE cannot
  // find (EINVAL) and close removes [seen with 2 KiB]. Sub-page dynamic windows are EINVAL.
  const emptyDefault = pseries && size === 0n && pageShift === IOMMU_PAGE_SHIFT_4K && driver.tables[0] === null && !driver.tables[1];
  if (size === 0n && !emptyDefault) throw 'EINVAL';
  // tce_iommu_create_table: account_locked_vm(table_size >> PAGE_SHIFT), then create_table.
  const pages = Number(size >> BigInt(kernel.pageShift));
  if (!account(kernel, proc, driver.mm!, pages)) throw 'ENOMEM';
  // From here a failure does NOT return the charge: the kernel never un-accounts when
  // create_table fails, so it stays in locked_vm until the process exits [seen].
  const pe = driver.groups[0];
  let start: bigint;
  if (kernel.profile.family === 'powernv') {
    const entriesShift = Math.max(0, ilog2(windowSize) - pageShift);
    const levelShift = Math.max(Math.ceil(entriesShift / levels) + 3, kernel.pageShift);
    if ((levelShift - 3) * levels + pageShift >= 55) throw 'EINVAL';
    // Each level is one page allocation of at most PAGE_SIZE << MAX_PAGE_ORDER (16 MiB with 4K
    // or 64K pages): one level holds up to 2M entries [seen: 4K x 8 GiB, 64K x 128 GiB accepted].
    if (levelShift > kernel.pageShift + kernelMaxPageOrder(kernel.pageSize)) throw 'ENOMEM';
    start = num === 0 ? kernel.profile.dma32Start : DDW_START;
  } else {
    if (levels > 1 || !isPow2(windowSize)) throw 'EINVAL';
    if (pe?.ddwBroken) throw 'ENODEV';
    // pseries allocates the whole table at once; a very large one cannot be allocated.
    if (size > BigInt(kernel.pageSize) << BigInt(PSERIES_MAX_TABLE_ORDER)) throw 'ENOMEM';
    const other = driver.tables[num === 0 ? 1 : 0] ?? null;
    const defaultRequest = pageShift === IOMMU_PAGE_SHIFT_4K && windowSize <= kernel.profile.dma32Size;
    if (num === 0 && (isDefault || defaultRequest)) {
      // The 32-bit default window is re-created in slot 0, at the dma32 start; not while
      // a dynamic window exists [seen: EPERM, charge kept].
      if (other) throw 'EPERM';
      start = kernel.profile.dma32Start;
    } else if (other && !other.isDefaultSlot) {
      // A second window while a dynamic window holds slot 0: ENODEV, and the PE loses its
      // windows until reboot [seen].
      if (pe) pe.ddwBroken = true;
      throw 'ENODEV';
    } else {
      start = DDW_START; // ibm,create-pe-dma-window: QEMU answers 1 << 59 [seen]
    }
  }
  const table: Table = {
    start,
    pageShift,
    // powernv rounds a sub-page window up to one entry (TCE_REMOVE finds it [seen]); pseries' stays empty.
    entries: windowSize >> BigInt(pageShift) || (pseries ? 0n : 1n),
    levels,
    chargedPages: pages,
    isDefault,
    isDefaultSlot: start === kernel.profile.dma32Start && num === 0,
    extents: [],
  };
  driver.tables[num] = table;
  return table;
}

/** @internal: tce_iommu_create_default_window. */
export function createDefaultWindow(kernel: SimulatedKernel, proc: ProcessCore, driver: TceDriver): void {
  if (!driver.defWindowPending) return;
  if (driver.groups.length === 0) throw 'ENODEV';
  createWindow(kernel, proc, driver, IOMMU_PAGE_SHIFT_4K, kernel.profile.dma32Size, 1, true);
  driver.defWindowPending = false;
}

export function tceCreate(p: ProcessCore, containerFd: number, request: TceCreateRequest): bigint {
  const { argsz, flags, pageShift, windowSize, levels } = tceCreateArgs(containerFd, request);
  return p.ioctl(IOCTL.tceCreate, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (!d.v2) throw 'ENOTTY';
    p.mmSet(d);
    if (d.groups.length === 0) throw 'ENXIO';
    if (argsz < 40) throw 'EINVAL';
    if (flags) throw 'EINVAL';
    createDefaultWindow(p.kernel, p, d);
    return createWindow(p.kernel, p, d, pageShift, windowSize, levels, false).start;
  }, { pageShift, windowSize: `0x${windowSize.toString(16)}`, levels });
}

export function tceRemove(p: ProcessCore, containerFd: number, request: TceRemoveRequest): void {
  const { argsz, flags, startAddr } = tceRemoveArgs(containerFd, request);
  p.ioctl(IOCTL.tceRemove, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (!d.v2) throw 'ENOTTY';
    p.mmSet(d);
    if (d.groups.length === 0) throw 'ENXIO';
    if (argsz < 16) throw 'EINVAL';
    if (flags) throw 'EINVAL';
    if (d.defWindowPending && startAddr === 0n) {
      d.defWindowPending = false;
      return;
    }
    const num = d.tables.findIndex((t) => t !== null && t.start <= startAddr && startAddr < tableEnd(t));
    if (num < 0) throw 'EINVAL';
    const t = d.tables[num]!;
    t.extents = [];
    unaccount(p.kernel, d.mm!, t.chargedPages);
    d.tables[num] = null;
  }, { startAddr: `0x${startAddr.toString(16)}` });
}
