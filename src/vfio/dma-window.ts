// Steps 8-9 of the container sequence for one container: its DMA window (v1: the platform's
// dma32 window, enabled; v2: the memory registered, the default window replaced by one sized for
// the request) and the memory mapped into it, one MAP_DMA per contiguous range with the window's
// bounds checked first. Each step pushes its undo on the preparation's teardown stack.
import { largestPageShift, type SpaprTceInfo } from './binding.js';
import { KernelOopsError, isVfioError } from './errors.js';
import {
  acceptedLevels,
  assertInsideWindow,
  coalesceRanges,
  defaultTableEstimate,
  formatBytes,
  nextPow2,
  type DmaMemory,
  type DmaWindow,
  type IommuVersion,
  type MappedRange,
  type PrepareOptions,
  type PreparedIommuContainer,
} from './dma-plan.js';
import { describe, fail, ioctlFailure, memlockFailure, type SequenceContext } from './sequence-context.js';

/**
 * Steps 8-9 for one container: v1 ENABLE or v2 REGISTER_MEMORY and a window, then the memory
 * mapped. `like` is the first container's window: every further container must get the same one.
 */
export async function mapContainer(
  ctx: SequenceContext,
  containerFd: number,
  groups: Array<{ group: number; fd: number }>,
  iommu: IommuVersion,
  info: SpaprTceInfo,
  memory: DmaMemory,
  options: PrepareOptions,
  like?: DmaWindow,
): Promise<PreparedIommuContainer> {
  const { binding } = ctx;
  const group = groups[0]!.group;
  let window: DmaWindow;
  if (iommu === 'v1') {
    window = { start: BigInt(info.dma32WindowStart), size: BigInt(info.dma32WindowSize), pageShift: 12, levels: 1, created: false };
    if (memory.size > window.size) {
      fail('ERR_VFIO_WINDOW', 'window', group, `${formatBytes(memory.size)} of DMA memory does not fit the ${formatBytes(window.size)} dma32 window of a v1 container`,
        'ask for less memory, or use a kernel and platform where SPAPR TCE v2 (dynamic windows) works');
    }
    try {
      await binding.enable(containerFd);
    } catch (err) {
      if (isVfioError(err, 'ENOMEM')) {
        // The first MAP_DMA then charges the window's TCE table too: ask for both.
        const table = defaultTableEstimate(window.size);
        await memlockFailure(
          ctx,
          'enable',
          group,
          `enabling the ${formatBytes(window.size)} dma32 window (and up to ${formatBytes(table)} for its TCE table at the first map)`,
          window.size + table,
          err,
        );
      }
      return ioctlFailure('enable', group, err);
    }
    ctx.teardown.push('disable', () => binding.disable(containerFd));
  } else {
    try {
      await binding.registerMemory(containerFd, { vaddr: memory.address, size: memory.size });
    } catch (err) {
      if (isVfioError(err, 'ENOMEM')) {
        await memlockFailure(ctx, 'register-memory', group, `registering ${formatBytes(memory.size)} of DMA memory`, memory.size, err);
      }
      return ioctlFailure('register-memory', group, err);
    }
    ctx.teardown.push('unregister memory', async () => {
      // UNREGISTER of memory that is still mapped, even in part, returns 0 and leaves it pinned and
      // charged for the life of the process [seen]: after any failed unmap, let close release it.
      if (ctx.teardown.unmapFailed) return;
      await binding.unregisterMemory(containerFd, { vaddr: memory.address, size: memory.size });
    });
    window = await createWindow(ctx, containerFd, info, memory, options, group);
  }
  if (like && (window.start !== like.start || window.size !== like.size || window.pageShift !== like.pageShift)) {
    fail('ERR_VFIO_WINDOW', 'window', group,
      `group ${group} got its window at 0x${window.start.toString(16)} (${formatBytes(window.size)}, ${formatBytes(1n << BigInt(window.pageShift))} pages), the allocation's first group at 0x${like.start.toString(16)} (${formatBytes(like.size)}, ${formatBytes(1n << BigInt(like.pageShift))} pages)`,
      'allocate these groups to separate pods: the platform gives them different DMA windows');
  }

  // One MAP_DMA per contiguous range, bounds checked before each
  const ranges = coalesceRanges([{ iova: window.start, vaddr: memory.address, size: memory.size, offset: 0n }]);
  const mappings = await mapRanges(ctx, containerFd, window, ranges, group);
  return { containerFd, groups: [...groups], window, mappings };
}

/** v2: drop the default window, create one for the request; levels grown until the kernel accepts. */
async function createWindow(
  ctx: SequenceContext,
  containerFd: number,
  info: SpaprTceInfo,
  memory: DmaMemory,
  options: PrepareOptions,
  group: number,
): Promise<DmaWindow> {
  const { binding } = ctx;
  const ddw = info.ddw;
  const pageShift = largestPageShift(ddw.pgsizes, memory.pageSize);
  if (pageShift === null) {
    fail('ERR_VFIO_WINDOW', 'window', group, `no IOMMU page size in 0x${ddw.pgsizes.toString(16)} fits ${formatBytes(memory.pageSize)} backing pages`,
      'use a backing page size the platform supports');
  }
  try {
    await binding.tceRemove(containerFd, { startAddr: BigInt(info.dma32WindowStart) });
  } catch (err) {
    return ioctlFailure('remove-default-window', group, err);
  }
  let size = memory.size > (options.minWindowSize ?? 0n) ? memory.size : options.minWindowSize!;
  size = nextPow2(size < 1n << BigInt(pageShift) ? 1n << BigInt(pageShift) : size);
  const maxLevels = Math.max(1, ddw.levels);
  let lastError: unknown;
  // Real kernels charge the table BEFORE the platform builds it and never return the charge when
  // building fails (a TCE_CREATE refused with ENOMEM/EINVAL after get_table_size leaks it in the
  // process's locked_vm until exit; seen on 6.12 powernv and pseries). So start at the level count
  // the platform will accept instead of growing from 1 through refusals.
  const firstLevels = Math.min(maxLevels, acceptedLevels(size, pageShift, binding.pageSize, maxLevels));
  for (let levels = firstLevels; levels <= maxLevels; levels++) {
    try {
      const start = await binding.tceCreate(containerFd, { pageShift, windowSize: size, levels });
      ctx.teardown.push('remove window', () => binding.tceRemove(containerFd, { startAddr: start }));
      return { start, size, pageShift, levels, created: true };
    } catch (err) {
      lastError = err;
      if (!isVfioError(err, 'EINVAL', 'ENOMEM')) return ioctlFailure('create-window', group, err);
      ctx.logger?.warn({ group, levels, code: err.code }, 'TCE_CREATE refused; the kernel may keep the refused table charged in VmLck until the plugin exits');
    }
  }
  if (isVfioError(lastError, 'ENOMEM')) {
    const tableBytes = (size >> BigInt(pageShift)) * 8n;
    const limit = binding.getMemlockLimit().soft;
    const locked = await binding.lockedMemoryBytes();
    if (limit !== null && locked + tableBytes > limit) {
      await memlockFailure(ctx, 'create-window', group, `the TCE table of a ${formatBytes(size)} window`, tableBytes, lastError);
    }
  }
  return fail('ERR_VFIO_WINDOW', 'create-window', group,
    `the kernel refused a ${formatBytes(size)} window of ${formatBytes(1n << BigInt(pageShift))} pages at every level 1..${maxLevels} (${describe(lastError)})`,
    'ask for a smaller window or back the memory with larger pages', lastError);
}

async function mapRanges(ctx: SequenceContext, containerFd: number, window: DmaWindow, ranges: MappedRange[], group: number): Promise<MappedRange[]> {
  const { binding } = ctx;
  const k = binding.constants;
  const mapped: MappedRange[] = [];
  for (const r of ranges) {
    assertInsideWindow(window, r.iova, r.size);
    try {
      await binding.mapDma(containerFd, { vaddr: r.vaddr, iova: r.iova, size: r.size, flags: k.dmaMapFlagRead | k.dmaMapFlagWrite });
    } catch (err) {
      if (err instanceof KernelOopsError) throw err;
      if (isVfioError(err, 'ENOMEM') && mapped.length === 0) {
        // The first map creates the pending default window and charges its table.
        await memlockFailure(ctx, 'map', group, `the TCE table of the default window (created at the first MAP_DMA)`, defaultTableEstimate(window.size), err);
      }
      fail('ERR_VFIO_MAP', 'map', group, `MAP_DMA of ${formatBytes(r.size)} at iova 0x${r.iova.toString(16)} failed: ${describe(err)}`,
        isVfioError(err, 'EINVAL') ? 'the memory must be registered and backed by pages at least as large as the IOMMU page' : 'check dmesg for vfio messages', err);
    }
    mapped.push(r);
    ctx.teardown.push(`unmap 0x${r.iova.toString(16)}`, async () => {
      try {
        await binding.unmapDma(containerFd, { iova: r.iova, size: r.size });
      } catch (err) {
        ctx.teardown.unmapFailed = true;
        throw err;
      }
    });
  }
  return mapped;
}
