// Cases: facts a differential run of both kernels found (6.12, both guests).
import { acceptedLevels, prepareContainer } from '../container-sequence.js';
import { VfioPrepareError } from '../errors.js';
import { assert, ContractSkip, equal, rejectsWith, succeeds } from '../contract-assert.js';
import { CONFIG_SIZE_PCI, CONFIG_SIZE_PCIE, PCI_REGION_CONFIG, PCI_REGION_ROM, PCI_REGION_VGA, barRegionFlags, parsePciResource, resourceSize } from '../pci-device.js';
import { scoped, setup, profile, RW, KiB, MiB, defaultTable, locked, type ContractCase } from './context.js';

export const differentialCases: ContractCase[] = [
  // --- facts a differential run found (6.12, both guests) ----------------------------
  {
    name: 'v2 with two groups attached, pseries can create no window (MAP, UNMAP, TCE_CREATE EPERM, nothing charged); powernv maps for both',
    requires: { groups: 2 },
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const pseries = profile(ctx).family === 'pseries';
        const g1 = s.fd(await b.openGroup(ctx.devRoot, ctx.groups[0]!.group));
        const g2 = s.fd(await b.openGroup(ctx.devRoot, ctx.groups[1]!.group));
        const containerFd = s.fd(await b.openContainer(ctx.devRoot));
        await succeeds(b.groupSetContainer(g1, containerFd), 'first group');
        await succeeds(b.groupSetContainer(g2, containerFd), 'second group before SET_IOMMU');
        await succeeds(b.setIommu(containerFd, b.constants.spaprTceV2Iommu), 'SET_IOMMU v2 with two groups');
        const mem = await s.memory(64n * KiB);
        const before = await locked(ctx);
        await b.registerMemory(containerFd, { vaddr: mem.address, size: mem.size });
        equal((await locked(ctx)) - before, 64n * KiB, 'REGISTER charges the memory');
        const map = { vaddr: mem.address, iova: 0n, size: mem.size, flags: RW(b) };
        const w = { pageShift: 12, windowSize: 64n * KiB, levels: 1 };
        if (pseries) {
          // The pending default window cannot be created for two PEs [seen].
          await rejectsWith(b.mapDma(containerFd, map), 'EPERM', 'MAP_DMA with two groups and the default window pending');
          await rejectsWith(b.unmapDma(containerFd, { iova: 0n, size: mem.size }), 'EPERM', 'UNMAP_DMA likewise');
          await rejectsWith(b.tceCreate(containerFd, w), 'EPERM', 'TCE_CREATE likewise');
          equal((await locked(ctx)) - before, 64n * KiB, 'no table charged');
          await succeeds(b.tceRemove(containerFd, { startAddr: 0n }), 'cancel the pending default window');
          await rejectsWith(b.tceCreate(containerFd, w), 'EPERM', 'TCE_CREATE with no window pending');
          await succeeds(b.groupUnsetContainer(g2), 'the second group leaves');
          const start = await succeeds(b.tceCreate(containerFd, w), 'TCE_CREATE with one group');
          equal(start, 0n, 'its start');
          await succeeds(b.mapDma(containerFd, map), 'MAP_DMA with one group');
          await rejectsWith(b.groupSetContainer(g2, containerFd), 'EPERM', 'a group cannot join while a window exists');
          await succeeds(b.unmapDma(containerFd, { iova: 0n, size: mem.size }), 'UNMAP_DMA');
        } else {
          // powernv programs every window into both PEs.
          await succeeds(b.mapDma(containerFd, map), 'MAP_DMA with two groups');
          equal((await locked(ctx)) - before, 64n * KiB + defaultTable(ctx), 'the default window charged once');
          await succeeds(b.unmapDma(containerFd, { iova: 0n, size: mem.size }), 'UNMAP_DMA');
          equal(await succeeds(b.tceCreate(containerFd, w), 'TCE_CREATE with two groups'), 1n << 59n, 'second window start');
          await succeeds(b.groupUnsetContainer(g2), 'the second group leaves');
          await succeeds(b.groupSetContainer(g2, containerFd), 'and joins again with windows in place');
        }
        await b.unregisterMemory(containerFd, { vaddr: mem.address, size: mem.size });
      });
    },
  },
  {
    name: 'v2, a group joins after the pending default window was cancelled; on pseries then no window can be created',
    requires: { groups: 2 },
    async run(ctx) {
      if (profile(ctx).family !== 'pseries') {
        // powernv: the second group takes every window created later [seen].
        await scoped(ctx, async (s) => {
          const b = ctx.binding;
          const { containerFd } = await setup(ctx, s, 'v2');
          await b.tceRemove(containerFd, { startAddr: 0n });
          const g2 = s.fd(await b.openGroup(ctx.devRoot, ctx.groups[1]!.group));
          await succeeds(b.groupSetContainer(g2, containerFd), 'second group with no window');
          const start = await succeeds(b.tceCreate(containerFd, { pageShift: 12, windowSize: 64n * KiB, levels: 1 }), 'TCE_CREATE with two groups');
          equal(start, 0n, 'slot 0');
        });
        return;
      }
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const { containerFd } = await setup(ctx, s, 'v2');
        await b.tceRemove(containerFd, { startAddr: 0n });
        const g2 = s.fd(await b.openGroup(ctx.devRoot, ctx.groups[1]!.group));
        await succeeds(b.groupSetContainer(g2, containerFd), 'second group with no window');
        const mem = await s.memory(64n * KiB);
        await b.registerMemory(containerFd, { vaddr: mem.address, size: mem.size });
        const before = await locked(ctx);
        await rejectsWith(b.tceCreate(containerFd, { pageShift: 12, windowSize: 64n * KiB, levels: 1 }), 'EPERM', 'TCE_CREATE 4K');
        await rejectsWith(b.tceCreate(containerFd, { pageShift: 16, windowSize: 1n << 30n, levels: 1 }), 'EPERM', 'TCE_CREATE 64K');
        equal(await locked(ctx), before, 'nothing charged');
        await rejectsWith(b.mapDma(containerFd, { vaddr: mem.address, iova: 0n, size: mem.size, flags: RW(b) }), 'ENXIO', 'MAP_DMA finds no window');
        await b.unregisterMemory(containerFd, { vaddr: mem.address, size: mem.size });
      });
    },
  },
  {
    name: 'two v2 containers in one process register the same memory, charged once, and each maps it',
    requires: { groups: 2 },
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const a = await setup(ctx, s, 'v2', 0);
        const c = await setup(ctx, s, 'v2', 1);
        const mem = await s.memory(64n * KiB);
        const before = await locked(ctx);
        await b.registerMemory(a.containerFd, { vaddr: mem.address, size: mem.size });
        await succeeds(b.registerMemory(c.containerFd, { vaddr: mem.address, size: mem.size }), 'the same region in the second container');
        equal((await locked(ctx)) - before, 64n * KiB, 'charged once');
        for (const x of [a, c]) {
          await b.tceRemove(x.containerFd, { startAddr: 0n });
          equal(await b.tceCreate(x.containerFd, { pageShift: 12, windowSize: 64n * KiB, levels: 1 }), 0n, `window of group ${x.group}`);
          await succeeds(b.mapDma(x.containerFd, { vaddr: mem.address, iova: 0n, size: mem.size, flags: RW(b) }), `MAP_DMA for group ${x.group}`);
        }
        if (ctx.sim) {
          b.writeMemory(mem.address, Buffer.from('both'));
          for (const x of [a, c]) equal(ctx.sim.dmaRead(x.group, 0n, 4).toString(), 'both', `group ${x.group} reads the memory`);
        }
        const withTables = await locked(ctx);
        for (const x of [a, c]) await b.unmapDma(x.containerFd, { iova: 0n, size: mem.size });
        await b.unregisterMemory(a.containerFd, { vaddr: mem.address, size: mem.size });
        equal(await locked(ctx), withTables, 'still charged while the second container holds it');
        await b.unregisterMemory(c.containerFd, { vaddr: mem.address, size: mem.size });
      });
    },
  },
  {
    name: 'powernv TCE_CREATE takes one-level tables up to 16 MiB (2M entries), the charge returns on remove; acceptedLevels agrees',
    async run(ctx) {
      if (profile(ctx).family === 'pseries') {
        // pseries has one level only, charged 8 bytes an entry: 4K x 1 GiB and 64K x 4 GiB [seen].
        await scoped(ctx, async (s) => {
          const b = ctx.binding;
          const { containerFd } = await setup(ctx, s, 'v2');
          await b.tceRemove(containerFd, { startAddr: 0n });
          const before = await locked(ctx);
          for (const [pageShift, windowSize] of [[12, 1n << 30n], [16, 4n << 30n]] as Array<[number, bigint]>) {
            const start = await succeeds(b.tceCreate(containerFd, { pageShift, windowSize, levels: 1 }), `one level, page shift ${pageShift}`);
            equal((await locked(ctx)) - before, (windowSize >> BigInt(pageShift)) * 8n, `page shift ${pageShift}: charge`);
            await b.tceRemove(containerFd, { startAddr: start });
            equal(acceptedLevels(windowSize, pageShift, b.pageSize, 1), 1, 'one level');
          }
          equal(await locked(ctx), before, 'returned');
        });
        return;
      }
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const { containerFd } = await setup(ctx, s, 'v2');
        await b.tceRemove(containerFd, { startAddr: 0n });
        const GiB = 1n << 30n;
        const before = await locked(ctx);
        for (const [pageShift, windowSize] of [[12, 8n * GiB], [16, 64n * GiB], [16, 128n * GiB], [12, 4n * GiB]] as Array<[number, bigint]>) {
          const what = `${windowSize / GiB} GiB of ${1 << (pageShift - 10)}K pages`;
          const start = await succeeds(b.tceCreate(containerFd, { pageShift, windowSize, levels: 1 }), `one level for ${what}`);
          equal(start, 0n, `${what}: slot 0 at the dma32 start`);
          // The hardware table and its userspace view, 8 bytes an entry each [seen].
          equal((await locked(ctx)) - before, (windowSize >> BigInt(pageShift)) * 16n, `${what}: charge`);
          await b.tceRemove(containerFd, { startAddr: start });
          equal(await locked(ctx), before, `${what}: returned`);
          if (b.pageSize === 4096) equal(acceptedLevels(windowSize, pageShift, b.pageSize, 5), 1, `${what}: the sequence asks for one level`);
        }
        // One level more than that is refused after the charge (a child-process case): the sequence asks for two.
        equal(acceptedLevels(16n * GiB, 12, 4096, 5), 2, '16 GiB of 4K pages on a 4K-page kernel: two levels');
        equal(acceptedLevels(256n * GiB, 16, 65536, 5), 2, '256 GiB of 64K pages on a 64K-page kernel: two levels');
        equal(acceptedLevels(128n * GiB, 16, 65536, 5), 1, '128 GiB of 64K pages on a 64K-page kernel: one level');
      });
    },
  },
  {
    name: 'windows smaller than an IOMMU page, powernv creates them at 0x0 for two pages of table; pseries refuses them but for an empty 4K-page default window',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const { containerFd } = await setup(ctx, s, 'v2');
        await b.tceRemove(containerFd, { startAddr: 0n });
        const before = await locked(ctx);
        for (const windowSize of [8n * KiB, 16n * KiB, 32n * KiB]) {
          const w = { pageShift: 16, windowSize, levels: 1 };
          if (profile(ctx).family === 'pseries') {
            await rejectsWith(b.tceCreate(containerFd, w), 'EINVAL', `${windowSize / KiB} KiB of 64K pages`);
            equal(await locked(ctx), before, 'nothing charged');
            continue;
          }
          const start = await succeeds(b.tceCreate(containerFd, w), `${windowSize / KiB} KiB of 64K pages`);
          equal(start, 0n, 'at 0x0');
          equal((await locked(ctx)) - before, 2n * BigInt(b.pageSize), 'the minimal table, twice');
          await succeeds(b.tceRemove(containerFd, { startAddr: start }), 'TCE_REMOVE finds it');
          equal(await locked(ctx), before, 'returned');
        }
        // 2 KiB of 4K pages: powernv as above; pseries re-creates the default window in slot 0 with no
        // entry, uncharged, which TCE_REMOVE cannot find; closing the container removes it [seen].
        const w2k = { pageShift: 12, windowSize: 2n * KiB, levels: 1 };
        const start = await succeeds(b.tceCreate(containerFd, w2k), '2 KiB of 4K pages');
        equal(start, 0n, '2 KiB window at 0x0');
        if (profile(ctx).family === 'pseries') {
          equal(await locked(ctx), before, '2 KiB window: nothing charged');
          await rejectsWith(b.tceRemove(containerFd, { startAddr: 0n }), 'EINVAL', 'TCE_REMOVE of the empty window');
        } else {
          equal((await locked(ctx)) - before, 2n * BigInt(b.pageSize), '2 KiB window: the minimal table, twice');
          await succeeds(b.tceRemove(containerFd, { startAddr: 0n }), 'TCE_REMOVE of the 2 KiB window');
        }
      });
    },
  },
  {
    name: 'UNREGISTER_MEMORY before the container has an mm is EPERM whatever the arguments; after, an unknown region is ENOENT',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const { containerFd } = await setup(ctx, s, 'v2');
        const mem = await s.memory(64n * KiB);
        await rejectsWith(b.unregisterMemory(containerFd, { vaddr: mem.address, size: mem.size }), 'EPERM', 'UNREGISTER before any REGISTER');
        await rejectsWith(b.unregisterMemory(containerFd, { vaddr: mem.address + 1n, size: mem.size }), 'EPERM', 'misaligned, before the mm');
        await rejectsWith(b.unregisterMemory(containerFd, { vaddr: mem.address, size: mem.size, flags: 1 }), 'EPERM', 'flags, before the mm');
        await b.registerMemory(containerFd, { vaddr: mem.address, size: mem.size });
        await rejectsWith(b.unregisterMemory(containerFd, { vaddr: mem.address, size: 4096n }), 'ENOENT', 'a region never registered');
        await succeeds(b.unregisterMemory(containerFd, { vaddr: mem.address, size: mem.size }), 'UNREGISTER');
      });
    },
  },
  {
    name: 'memfd_create MFD_HUGETLB of a size the kernel has no huge pages for is ENODEV, and the sequence names the remedy',
    requires: { groups: 1 },
    async run(ctx) {
      const b = ctx.binding;
      const have = await ctx.hugePageShifts();
      for (const shift of [21, 24, 30, 34]) {
        if (have.includes(shift)) {
          const fd = await succeeds(b.memfdCreate('huge', { hugePageShift: shift }), `a ${shift}-bit huge page memfd`);
          await b.close(fd);
        } else {
          await rejectsWith(b.memfdCreate('huge', { hugePageShift: shift }), 'ENODEV', `no ${1 << (shift - 20)} MiB huge pages`);
        }
      }
      // 16 MiB huge pages exist only on hash-MMU kernels; neither guest has them [seen].
      assert(!have.includes(24), 'no 16 MiB huge pages here');
      const before = await locked(ctx);
      try {
        await prepareContainer(b, { devRoot: ctx.devRoot, groups: [ctx.groups[0]!.group], memorySize: 16n * MiB, hugePageShift: 24 });
        throw new Error('prepareContainer with 16 MiB huge pages succeeded');
      } catch (err) {
        assert(err instanceof VfioPrepareError, `a VfioPrepareError (got ${String(err)})`);
        equal(err.code, 'ERR_VFIO_MEMORY', 'code');
        assert(/no 16 MiB huge pages.*\/sys\/kernel\/mm\/hugepages.*hugepagesz=16M/.test(err.message), `the message names the remedy: ${err.message}`);
      }
      equal(await locked(ctx), before, 'nothing charged');
      const fd = await succeeds(b.openGroup(ctx.devRoot, ctx.groups[0]!.group), 'the group was released');
      await b.close(fd);
    },
  },
  {
    name: 'group ioctls on a container fd are EINVAL before SET_IOMMU and ENOTTY after',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const bare = s.fd(await b.openContainer(ctx.devRoot));
        await rejectsWith(b.groupGetStatus(bare), 'EINVAL', 'GROUP_GET_STATUS on a bare container');
        await rejectsWith(b.groupUnsetContainer(bare), 'EINVAL', 'GROUP_UNSET_CONTAINER on a bare container');
        const { containerFd } = await setup(ctx, s, 'v2');
        await rejectsWith(b.groupGetStatus(containerFd), 'ENOTTY', 'GROUP_GET_STATUS after SET_IOMMU');
        await rejectsWith(b.groupUnsetContainer(containerFd), 'ENOTTY', 'GROUP_UNSET_CONTAINER after SET_IOMMU');
        await rejectsWith(b.groupGetDeviceFd(containerFd, ctx.groups[0]!.devices[0]!), 'ENOTTY', 'GROUP_GET_DEVICE_FD after SET_IOMMU');
      });
    },
  },
  {
    name: 'region info follows the device, config size from its type, BARs from its sysfs resource file, no VGA region (EINVAL)',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const name = ctx.groups[0]!.devices[0]!;
        const { groupFd } = await setup(ctx, s, 'v2');
        const deviceFd = s.fd(await b.groupGetDeviceFd(groupFd, name));
        const sysfs = await ctx.pciDevice(name);
        assert(sysfs.configSize === CONFIG_SIZE_PCI || sysfs.configSize === CONFIG_SIZE_PCIE, `config size ${sysfs.configSize}`);
        const config = await b.deviceGetRegionInfo(deviceFd, PCI_REGION_CONFIG);
        equal(config.size, BigInt(sysfs.configSize), 'config region size = sysfs config size');
        equal(config.flags, 3, 'config region read/write');
        const resources = parsePciResource(sysfs.resource);
        for (let i = 0; i <= 5; i++) {
          const r = await b.deviceGetRegionInfo(deviceFd, i);
          equal(r.size, resourceSize(resources[i]), `BAR${i} size = its resource line`);
          const expected = barRegionFlags(resources[i], false);
          // The MSI-X BAR also carries a capability chain (CAPS) [seen: e1000e BAR3 0xf].
          assert((r.flags & ~8) === expected, `BAR${i} flags 0x${r.flags.toString(16)} (expected 0x${expected.toString(16)}, maybe with CAPS)`);
        }
        const rom = await b.deviceGetRegionInfo(deviceFd, PCI_REGION_ROM);
        equal(rom.size, resourceSize(resources[PCI_REGION_ROM]), 'ROM size = its resource line');
        await rejectsWith(b.deviceGetRegionInfo(deviceFd, PCI_REGION_VGA), 'EINVAL', 'no VGA region');
        await rejectsWith(b.deviceGetRegionInfo(deviceFd, 9), 'EINVAL', 'past the last region');
        const cfg = await b.pread(deviceFd, 4, (BigInt(PCI_REGION_CONFIG) << 40n));
        assert(cfg.length === 4 && cfg.readUInt16LE(0) !== 0xffff, 'config space reads the vendor id');
      });
    },
  },
  {
    name: 'a group with a function on a host driver is not viable, SET_CONTAINER is EPERM',
    async run(ctx) {
      const g = ctx.nonViableGroup;
      if (!g) throw new ContractSkip('no group with a function on a host driver is arranged here (--non-viable-group)');
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const groupFd = s.fd(await succeeds(b.openGroup(ctx.devRoot, g.group), 'the group node exists (one function is on vfio-pci)'));
        const status = await b.groupGetStatus(groupFd);
        equal(status.flags, 0, 'neither VIABLE nor CONTAINER_SET');
        const containerFd = s.fd(await b.openContainer(ctx.devRoot));
        await rejectsWith(b.groupSetContainer(groupFd, containerFd), 'EPERM', 'SET_CONTAINER of a non-viable group');
      });
    },
  },
];
