// Cases: GET_INFO, and the v1 IOMMU (ENABLE, MAP_DMA on the default window).
import { UNEXPECTED_RETURN } from '../errors.js';
import { equal, rejectsWith, succeeds } from '../contract-assert.js';
import { scoped, setup, profile, RW, KiB, defaultTable, locked, type ContractCase } from './context.js';

export const infoAndV1Cases: ContractCase[] = [
  // --- GET_INFO -------------------------------------------------------------------
  {
    name: 'SPAPR_TCE_GET_INFO on v1, the dma32 window of the platform, no DDW',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const { containerFd } = await setup(ctx, s, 'v1');
        const info = await ctx.binding.spaprTceGetInfo(containerFd);
        const p = profile(ctx);
        equal(info.flags, 0, 'flags');
        equal(BigInt(info.dma32WindowStart), p.dma32Start, 'dma32 start');
        equal(BigInt(info.dma32WindowSize), p.dma32Size, 'dma32 size');
        equal(info.ddw.pgsizes, 0n, 'ddw.pgsizes');
        equal(info.ddw.levels, 0, 'ddw.levels');
      });
    },
  },
  {
    name: 'SPAPR_TCE_GET_INFO on v2, DDW flag, pgsizes, windows and levels; argsz 15 EINVAL, 16 writes 16 bytes',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const { containerFd } = await setup(ctx, s, 'v2');
        const p = profile(ctx);
        const info = await b.spaprTceGetInfo(containerFd);
        equal(info.flags & b.constants.spaprInfoDdw, b.constants.spaprInfoDdw, 'DDW flag');
        equal(info.ddw.pgsizes, p.pgsizes, 'pgsizes');
        equal(info.ddw.maxDynamicWindowsSupported, p.maxDynamicWindows, 'max dynamic windows');
        equal(info.ddw.levels, p.maxLevels, 'levels');
        await rejectsWith(b.spaprTceGetInfo(containerFd, { argsz: 15 }), 'EINVAL', 'argsz 15');
        const short = await b.spaprTceGetInfo(containerFd, { argsz: 16 });
        equal(BigInt(short.dma32WindowSize), p.dma32Size, 'dma32 size with argsz 16');
        equal(short.ddw.pgsizes, 0n, 'ddw not written with argsz 16');
      });
    },
  },
  // --- v1 -------------------------------------------------------------------------
  {
    name: 'v1 ENABLE charges the dma32 window, twice is EBUSY, DISABLE returns 0 and un-charges',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const before = await locked(ctx);
        const { containerFd } = await setup(ctx, s, 'v1');
        const p = profile(ctx);
        await rejectsWith(b.unmapDma(containerFd, { iova: p.dma32Start, size: 4096n }), 'EPERM', 'UNMAP before ENABLE');
        await succeeds(b.enable(containerFd), 'ENABLE');
        equal((await locked(ctx)) - before, p.dma32Size, 'VmLck rise after ENABLE (GET_INFO, SET_IOMMU and SET_CONTAINER charge nothing)');
        await rejectsWith(b.enable(containerFd), 'EBUSY', 'second ENABLE');
        // The default window is pending until the first MAP/UNMAP after ENABLE, which creates it and charges its table.
        await succeeds(b.unmapDma(containerFd, { iova: p.dma32Start, size: 4096n }), 'UNMAP of nothing');
        equal((await locked(ctx)) - before, p.dma32Size + defaultTable(ctx), 'VmLck after the first UNMAP = dma32 + default table');
        await succeeds(b.disable(containerFd), 'DISABLE');
        equal((await locked(ctx)) - before, defaultTable(ctx), 'DISABLE returns the ENABLE charge only, the table stays');
        await succeeds(b.disable(containerFd), 'DISABLE again');
        await rejectsWith(b.mapDma(containerFd, { vaddr: 0n, iova: 0n, size: 4096n, flags: RW(b) }), 'EPERM', 'MAP after DISABLE');
        await s.dispose();
        equal(await locked(ctx), before, 'VmLck after close');
      });
    },
  },
  {
    name: 'v1-only ioctls on v2 and v2-only ioctls on v1 are ENOTTY',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const v1 = await setup(ctx, s, 'v1');
        await rejectsWith(b.registerMemory(v1.containerFd, { vaddr: 0n, size: 4096n }), 'ENOTTY', 'REGISTER_MEMORY on v1');
        await rejectsWith(b.unregisterMemory(v1.containerFd, { vaddr: 0n, size: 4096n }), 'ENOTTY', 'UNREGISTER_MEMORY on v1');
        await rejectsWith(b.tceCreate(v1.containerFd, { pageShift: 12, windowSize: 1n << 30n, levels: 1 }), 'ENOTTY', 'TCE_CREATE on v1');
        await rejectsWith(b.tceRemove(v1.containerFd, { startAddr: 0n }), 'ENOTTY', 'TCE_REMOVE on v1');
        await s.dispose();
        const v2 = await setup(ctx, s, 'v2');
        await rejectsWith(b.enable(v2.containerFd), 'ENOTTY', 'ENABLE on v2');
        await rejectsWith(b.disable(v2.containerFd), 'ENOTTY', 'DISABLE on v2');
      });
    },
  },
  {
    name: 'v1 MAP_DMA before ENABLE is EPERM; then every argument check in order, and a map/unmap round trip',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const before = await locked(ctx);
        const { containerFd } = await setup(ctx, s, 'v1');
        const mem = await s.memory(64n * KiB);
        const p = profile(ctx);
        const iova = p.dma32Start + 0x100000n;
        const ok = { vaddr: mem.address, iova, size: mem.size, flags: RW(b) };
        await rejectsWith(b.mapDma(containerFd, ok), 'EPERM', 'MAP before ENABLE');
        await b.enable(containerFd);
        await rejectsWith(b.mapDma(containerFd, { ...ok, argsz: 24 }), 'EINVAL', 'argsz 24');
        await rejectsWith(b.mapDma(containerFd, { ...ok, flags: 4 }), 'EINVAL', 'unknown flag');
        await rejectsWith(b.mapDma(containerFd, { ...ok, iova: p.dma32Start + p.dma32Size + 0x100000n }), 'ENXIO', 'iova in no window');
        await rejectsWith(b.mapDma(containerFd, { ...ok, size: 0x800n }), 'EINVAL', 'size not a multiple of 4K');
        await rejectsWith(b.mapDma(containerFd, { ...ok, vaddr: mem.address + 0x800n }), 'EINVAL', 'vaddr misaligned');
        await rejectsWith(b.mapDma(containerFd, { ...ok, flags: 0 }), 'EINVAL', 'flags 0');
        const plus = await rejectsWith(b.mapDma(containerFd, { ...ok, iova: iova + 0x800n }), UNEXPECTED_RETURN, 'misaligned iova');
        equal(plus.returnValue, 1, 'misaligned iova returns +1');
        await rejectsWith(b.mapDma(containerFd, { ...ok, vaddr: 0x1000n, size: 4096n }), 'EFAULT', 'unpinnable vaddr');
        await succeeds(b.mapDma(containerFd, ok), 'MAP_DMA');
        await succeeds(b.mapDma(containerFd, ok), 'MAP_DMA over an existing entry');
        await rejectsWith(b.unmapDma(containerFd, { iova, size: mem.size, flags: 1 }), 'EINVAL', 'UNMAP with flags');
        await rejectsWith(b.unmapDma(containerFd, { iova: p.dma32Start + p.dma32Size + 0x100000n, size: 4096n }), 'ENXIO', 'UNMAP in no window');
        const uplus = await rejectsWith(b.unmapDma(containerFd, { iova: iova + 0x800n, size: 4096n }), UNEXPECTED_RETURN, 'UNMAP misaligned iova');
        equal(uplus.returnValue, 1, 'UNMAP misaligned iova returns +1');
        await rejectsWith(b.unmapDma(containerFd, { iova, size: mem.size, argsz: 16 }), 'EINVAL', 'UNMAP argsz 16');
        await succeeds(b.unmapDma(containerFd, { iova, size: mem.size }), 'UNMAP_DMA');
        await succeeds(b.unmapDma(containerFd, { iova, size: mem.size }), 'UNMAP of empty entries');
        await s.dispose();
        equal(await locked(ctx), before, 'VmLck after close');
      });
    },
  },
];
