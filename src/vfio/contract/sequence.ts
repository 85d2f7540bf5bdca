// Cases: the container sequence the plugin runs, end to end.
import type { VfioBinding } from '../binding.js';
import { prepareContainer } from '../container-sequence.js';
import { verifyGroups } from '../verify-groups.js';
import { VfioPrepareError } from '../errors.js';
import { type SimulatedProcess } from '../simulated-kernel.js';
import { assert, equal, succeeds } from '../contract-assert.js';
import { profile, KiB, MiB, defaultTable, locked, childArgs, type ContractCase } from './context.js';

export const sequenceCases: ContractCase[] = [
  // --- the sequence -------------------------------------------------------------------
  {
    name: 'sequence, prepareContainer maps the memory with one MAP_DMA, DMA-visible, and release returns everything',
    async run(ctx) {
      const b = ctx.binding;
      const before = await locked(ctx);
      const prepared = await prepareContainer(b, { devRoot: ctx.devRoot, groups: [ctx.groups[0]!.group], memorySize: 1n * MiB });
      try {
        equal(prepared.iommu, 'v2', 'v2 is taken where the platform has dynamic windows');
        equal(prepared.mappings.length, 1, 'one range');
        equal(prepared.mappings[0]!.size, 1n * MiB, 'the whole memory');
        equal(prepared.window.pageShift, b.pageSize === 4096 ? 12 : 16, 'IOMMU page = backing page');
        assert(prepared.window.start + prepared.window.size >= prepared.mappings[0]!.iova + 1n * MiB, 'inside the window');
        if (ctx.sim) {
          const maps = ctx.sim.calls.filter((c) => c.op === 'VFIO_IOMMU_MAP_DMA');
          equal(maps.length, 1, 'MAP_DMA calls');
          b.writeMemory(prepared.memory.address + 8n, Buffer.from('dma'));
          equal(ctx.sim.dmaRead(ctx.groups[0]!.group, prepared.window.start + 8n, 3).toString(), 'dma', 'device reads through the IOMMU');
        }
      } finally {
        await prepared.release();
      }
      equal(await locked(ctx), before, 'VmLck after release');
      const fd = await succeeds(b.openGroup(ctx.devRoot, ctx.groups[0]!.group), 'group free again');
      await b.close(fd);
    },
  },
  {
    name: 'sequence, forced v1 maps inside the dma32 window and releases',
    async run(ctx) {
      const before = await locked(ctx);
      const prepared = await prepareContainer(ctx.binding, { devRoot: ctx.devRoot, groups: [ctx.groups[0]!.group], memorySize: 256n * KiB, iommu: 'v1' });
      try {
        equal(prepared.iommu, 'v1', 'iommu');
        equal(prepared.window.start, profile(ctx).dma32Start, 'window start');
        // ENABLE charges the dma32 window; the first MAP_DMA creates the default window and charges its table [seen].
        equal(prepared.lockedBytes, profile(ctx).dma32Size + defaultTable(ctx), 'ENABLE charge + default window table');
      } finally {
        await prepared.release();
      }
      equal(await locked(ctx), before, 'VmLck after release');
    },
  },
  {
    name: 'sequence, verifyGroups runs the whole sequence and leaves nothing behind',
    async run(ctx) {
      const before = await locked(ctx);
      const results = await verifyGroups(ctx.binding, ctx.groups.map((g) => g.group), { devRoot: ctx.devRoot });
      equal(results.length, ctx.groups.length, 'one result per group');
      equal(await locked(ctx), before, 'VmLck after verify');
      if (ctx.sim) assert(!ctx.sim.dead, 'the kernel is alive');
    },
  },
  {
    name: 'sequence, prepareContainer with two groups, one container on powernv v2, one per group on pseries v2 and on v1, the same window and memory for both',
    requires: { groups: 2 },
    async run(ctx) {
      const b = ctx.binding;
      const groups = ctx.groups.slice(0, 2).map((g) => g.group);
      const before = await locked(ctx);
      for (const iommu of ['auto', 'v1'] as const) {
        const prepared = await prepareContainer(b, { devRoot: ctx.devRoot, groups, memorySize: 256n * KiB, iommu });
        try {
          const shared = prepared.iommu === 'v2' && profile(ctx).family === 'powernv';
          equal(prepared.containers.length, shared ? 1 : 2, `${iommu}: containers`);
          equal(prepared.groups.map((g) => g.group).join(','), groups.join(','), `${iommu}: every group`);
          equal(prepared.containers.flatMap((c) => c.groups.map((g) => g.group)).join(','), groups.join(','), `${iommu}: every group in a container`);
          for (const c of prepared.containers) {
            equal(c.window.start, prepared.window.start, `${iommu}: window start of group ${c.groups[0]!.group}`);
            equal(c.window.size, prepared.window.size, `${iommu}: window size of group ${c.groups[0]!.group}`);
            equal(c.mappings.length, 1, `${iommu}: one MAP_DMA in the container of group ${c.groups[0]!.group}`);
            equal(c.mappings[0]!.iova, prepared.mappings[0]!.iova, `${iommu}: the same iova`);
          }
          if (prepared.iommu === 'v2') {
            // The memory is registered in each container but charged once; the tables of these small windows add little.
            assert(prepared.lockedBytes >= prepared.memory.size && prepared.lockedBytes < 2n * prepared.memory.size, `${iommu}: memory charged once (${prepared.lockedBytes} bytes locked)`);
          }
          if (ctx.sim) {
            b.writeMemory(prepared.memory.address + 16n, Buffer.from(`both-${iommu}`));
            for (const g of groups) equal(ctx.sim.dmaRead(g, prepared.window.start + 16n, 4 + iommu.length + 1).toString(), `both-${iommu}`, `group ${g} reads the memory`);
          }
        } finally {
          await prepared.release();
        }
        equal(await locked(ctx), before, `${iommu}: VmLck after release`);
      }
      for (const g of groups) {
        const fd = await succeeds(b.openGroup(ctx.devRoot, g), `group ${g} free again`);
        await b.close(fd);
      }
    },
  },
  {
    name: 'sequence, verify failures name the cause and the remedy (busy, not viable, memlock, missing; EEH on the simulator)',
    async run(ctx) {
      const b = ctx.binding;
      const g = ctx.groups[0]!;
      const expectFailure = async (group: number, code: string, text: RegExp, what: string, binding: VfioBinding = b) => {
        const before = await binding.lockedMemoryBytes();
        const fdsBefore = ctx.sim ? (binding as SimulatedProcess).openFds().length : 0;
        try {
          await verifyGroups(binding, [group], { devRoot: ctx.devRoot, iommu: 'v1' });
        } catch (err) {
          assert(err instanceof VfioPrepareError, `${what}: a VfioPrepareError (got ${String(err)})`);
          equal(err.code, code, `${what}: code`);
          assert(text.test(err.message), `${what}: message ${JSON.stringify(err.message)} matches ${text}`);
          equal(await binding.lockedMemoryBytes(), before, `${what}: nothing charged`);
          if (ctx.sim) equal((binding as SimulatedProcess).openFds().length, fdsBefore, `${what}: no fd left open`);
          return;
        }
        throw new Error(`${what}: verify succeeded`);
      };
      // busy: this process holds the group open
      const held = await b.openGroup(ctx.devRoot, g.group);
      try {
        await expectFailure(g.group, 'ERR_VFIO_GROUP_BUSY', /already open.*fuser/, 'busy');
      } finally {
        await b.close(held);
      }
      // not viable: a function of the group is on a host driver
      if (ctx.nonViableGroup) {
        await expectFailure(ctx.nonViableGroup.group, 'ERR_VFIO_GROUP_NOT_VIABLE', /not viable.*bind every function .* to vfio-pci/, 'host driver');
      } else {
        ctx.log('no non-viable group arranged here: the not-viable part is skipped');
      }
      // memlock: a process without CAP_IPC_LOCK under 64 MiB
      const m = await ctx.inChildProcess('verify', { ...childArgs(ctx), iommu: 'v1' }, { memlockLimit: 64n * MiB, unprivileged: true });
      equal(m['ok'], false, 'memlock: verify fails');
      equal(m['code'], 'ERR_VFIO_MEMLOCK', 'memlock: code');
      // The window, plus its 4K-page TCE table (8 bytes an entry, twice on powernv) charged at the first map.
      const dma32Mib = profile(ctx).dma32Size / MiB;
      const neededMib = dma32Mib + ((profile(ctx).dma32Size >> 12n) * 16n) / MiB;
      const memlockText = new RegExp(`RLIMIT_MEMLOCK is 64 MiB .*at least ${neededMib} MiB.*CAP_IPC_LOCK`);
      assert(memlockText.test(m['message'] as string), `memlock: message ${JSON.stringify(m['message'])} matches ${memlockText}`);
      equal(BigInt(m['leaked'] as string), 0n, 'memlock: nothing charged');
      // missing: no such group node
      await expectFailure(4000, 'ERR_VFIO_GROUP_MISSING', /does not exist.*vfio-pci/, 'missing');
      if (ctx.sim) {
        const sim = ctx.sim;
        if (profile(ctx).eeh) {
          sim.freezePe(g.group);
          await expectFailure(g.group, 'ERR_VFIO_EEH_FROZEN', /\(state 2\)/, 'frozen PE');
        }
        sim.removeDevice(g.group);
        await expectFailure(g.group, 'ERR_VFIO_GROUP_MISSING', /does not exist/, 'removed');
      }
    },
  },
];
