// Cases: the mm rule (fork, fd passing), release on close, EEH, hostile input and memlock accounting.
import { assert, equal, rejectsWith, rejectsWithArgumentError, succeeds } from '../contract-assert.js';
import { scoped, setup, profile, RW, BAD_FD, KiB, MiB, locked, childArgs, type ContractCase } from './context.js';

export const processAndInputCases: ContractCase[] = [
  // --- the mm rule, release, EEH ------------------------------------------------------
  {
    name: 'once the container has an mm, another process gets EPERM (before, it may query)',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const { containerFd } = await setup(ctx, s, 'v1');
        const early = await ctx.inOtherProcess([containerFd], 'spaprTceGetInfo', 0);
        assert(early.ok, `GET_INFO from another process before the mm is set (got ${early.ok ? 'ok' : early.code})`);
        await b.enable(containerFd);
        const late = await ctx.inOtherProcess([containerFd], 'spaprTceGetInfo', 0);
        equal(late.ok ? 'ok' : late.code, 'EPERM', 'GET_INFO from another process after ENABLE');
        const map = await ctx.inOtherProcess([containerFd], 'mapDma', 0, [{ vaddr: 0x10000n, iova: 0x100000n, size: 0x1000n, flags: 3 }]);
        equal(map.ok ? 'ok' : map.code, 'EPERM', 'MAP_DMA from another process');
        equal(await b.getApiVersion(containerFd), 0, 'this process still owns it');
      });
    },
  },
  {
    name: 'closing the fds releases everything, TCEs, windows, registrations, charges',
    async run(ctx) {
      const b = ctx.binding;
      const before = await locked(ctx);
      await scoped(ctx, async (s) => {
        const { containerFd } = await setup(ctx, s, 'v2');
        const mem = await s.memory(256n * KiB);
        await b.registerMemory(containerFd, { vaddr: mem.address, size: mem.size });
        await b.tceRemove(containerFd, { startAddr: 0n });
        const start = await b.tceCreate(containerFd, { pageShift: 12, windowSize: 256n * MiB, levels: 1 });
        await b.mapDma(containerFd, { vaddr: mem.address, iova: start, size: mem.size, flags: RW(b) });
        assert((await locked(ctx)) > before, 'something is charged');
      });
      equal(await locked(ctx), before, 'VmLck after closing without any teardown ioctl');
      await scoped(ctx, async (s) => {
        const { containerFd } = await setup(ctx, s, 'v1');
        await b.enable(containerFd);
      });
      equal(await locked(ctx), before, 'VmLck after closing an enabled v1 container');
    },
  },
  {
    name: 'GROUP_UNSET_CONTAINER releases the IOMMU, un-charged, and the container takes SET_IOMMU again',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const before = await locked(ctx);
        const { groupFd, containerFd } = await setup(ctx, s, 'v1');
        await b.enable(containerFd);
        await succeeds(b.groupUnsetContainer(groupFd), 'UNSET_CONTAINER');
        equal(await locked(ctx), before, 'VmLck after UNSET');
        await rejectsWith(b.spaprTceGetInfo(containerFd), 'EINVAL', 'GET_INFO after the last group left');
        await b.groupSetContainer(groupFd, containerFd);
        await succeeds(b.setIommu(containerFd, b.constants.spaprTceV2Iommu), 'SET_IOMMU v2 on the reused container');
      });
    },
  },
  {
    name: 'EEH_PE_OP, ENODEV without a PE (pseries), GET_STATE normal on powernv, flags and unknown ops EINVAL',
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const ops = b.constants.eehPeOp;
        const { containerFd } = await setup(ctx, s, 'v2');
        if (!profile(ctx).eeh) {
          await rejectsWith(b.eehPeOp(containerFd, { op: ops.getState }), 'ENODEV', 'GET_STATE without a PE');
          return;
        }
        equal(await b.eehPeOp(containerFd, { op: ops.getState }), b.constants.eehPeState.normal, 'GET_STATE');
        await rejectsWith(b.eehPeOp(containerFd, { op: ops.getState, flags: 1 }), 'EINVAL', 'flags');
        await rejectsWith(b.eehPeOp(containerFd, { op: ops.getState, argsz: 8 }), 'EINVAL', 'argsz 8');
        await rejectsWith(b.eehPeOp(containerFd, { op: 99 }), 'EINVAL', 'unknown op');
      });
    },
  },
  // --- hostile input ------------------------------------------------------------------
  {
    name: 'every ioctl on a closed fd is a typed EBADF',
    requires: { groups: 0 },
    async run(ctx) {
      const b = ctx.binding;
      const fd = BAD_FD;
      const calls: Array<[string, () => Promise<unknown>]> = [
        ['GET_API_VERSION', () => b.getApiVersion(fd)],
        ['CHECK_EXTENSION', () => b.checkExtension(fd, 7)],
        ['SET_IOMMU', () => b.setIommu(fd, 7)],
        ['GET_INFO', () => b.spaprTceGetInfo(fd)],
        ['ENABLE', () => b.enable(fd)],
        ['DISABLE', () => b.disable(fd)],
        ['REGISTER_MEMORY', () => b.registerMemory(fd, { vaddr: 0n, size: 4096n })],
        ['UNREGISTER_MEMORY', () => b.unregisterMemory(fd, { vaddr: 0n, size: 4096n })],
        ['TCE_CREATE', () => b.tceCreate(fd, { pageShift: 12, windowSize: 1n << 20n, levels: 1 })],
        ['TCE_REMOVE', () => b.tceRemove(fd, { startAddr: 0n })],
        ['MAP_DMA', () => b.mapDma(fd, { vaddr: 0n, iova: 0n, size: 4096n, flags: 3 })],
        ['UNMAP_DMA', () => b.unmapDma(fd, { iova: 0n, size: 4096n })],
        ['EEH_PE_OP', () => b.eehPeOp(fd, { op: 4 })],
        ['GROUP_GET_STATUS', () => b.groupGetStatus(fd)],
        ['GROUP_SET_CONTAINER', () => b.groupSetContainer(fd, fd)],
        ['GROUP_UNSET_CONTAINER', () => b.groupUnsetContainer(fd)],
        ['GROUP_GET_DEVICE_FD', () => b.groupGetDeviceFd(fd, 'x')],
        ['DEVICE_GET_REGION_INFO', () => b.deviceGetRegionInfo(fd, 0)],
      ];
      for (const [name, call] of calls) {
        const err = await rejectsWith(call(), 'EBADF', name);
        equal(err.syscall, 'ioctl', `${name} syscall`);
        assert(err.ioctl?.startsWith('VFIO_'), `${name} names the ioctl (${err.ioctl})`);
      }
      await rejectsWith(b.close(fd), 'EBADF', 'close');
    },
  },
  {
    name: 'VFIO ioctls on a non-VFIO fd are ENOTTY; malformed arguments are argument errors, never a crash',
    requires: { groups: 0 },
    async run(ctx) {
      await scoped(ctx, async (s) => {
        const b = ctx.binding;
        const mem = s.fd(await b.memfdCreate('not-vfio'));
        await rejectsWith(b.getApiVersion(mem), 'ENOTTY', 'GET_API_VERSION on a memfd');
        await rejectsWith(b.groupGetStatus(mem), 'ENOTTY', 'GROUP_GET_STATUS on a memfd');
        const bad = b as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
        await rejectsWithArgumentError(() => bad['mapDma']!(3, { vaddr: -1n, iova: 0n, size: 1n, flags: 3 }), 'negative vaddr');
        await rejectsWithArgumentError(() => bad['mapDma']!(3, { vaddr: 1n << 64n, iova: 0n, size: 1n, flags: 3 }), 'vaddr above 2^64');
        await rejectsWithArgumentError(() => bad['mapDma']!(3, { vaddr: 0, iova: 0n, size: 1n, flags: 3 }), 'number instead of bigint');
        await rejectsWithArgumentError(() => bad['getApiVersion']!('3'), 'string fd');
        await rejectsWithArgumentError(() => bad['getApiVersion']!(1.5), 'fractional fd');
        await rejectsWithArgumentError(() => bad['spaprTceGetInfo']!(3, { argsz: -1 }), 'negative argsz');
        await rejectsWithArgumentError(() => bad['openGroup']!(ctx.devRoot, -1), 'negative group');
        await rejectsWithArgumentError(() => bad['groupGetDeviceFd']!(3, 'a\0b'), 'NUL in device name');
        await rejectsWithArgumentError(() => bad['sendFds']!(3, Buffer.alloc(0), []), 'empty message');
      });
    },
  },
  {
    name: 'memfd memory, write, read back, munmap; reads outside a mapping are RangeErrors; unknown munmap EINVAL',
    requires: { groups: 0 },
    async run(ctx) {
      const b = ctx.binding;
      const fd = await b.memfdCreate('roundtrip');
      try {
        await b.ftruncate(fd, 64n * KiB);
        const addr = await b.mmap(fd, 64n * KiB);
        const pattern = Buffer.from('sPAPR TCE round trip');
        b.writeMemory(addr + 100n, pattern);
        equal(b.readMemory(addr + 100n, pattern.length).toString(), pattern.toString(), 'read back');
        equal((await b.pread(fd, pattern.length, 100n)).toString(), pattern.toString(), 'the memfd holds it');
        await rejectsWithArgumentError(() => b.readMemory(addr + 64n * KiB - 4n, 8), 'read across the end');
        // Far past the end (above every mapping): a RangeError, never a fault.
        await rejectsWithArgumentError(() => b.readMemory(addr + (1n << 40n), 4), 'read far past the end');
        await rejectsWithArgumentError(() => b.writeMemory(addr + 64n * KiB, Buffer.from('x')), 'write just past the end');
        await rejectsWithArgumentError(() => b.readMemory(0x1000n, 4), 'read of an unknown address');
        await rejectsWith(b.munmap(addr + 4096n, 4096n), 'EINVAL', 'munmap of part of a mapping');
        await succeeds(b.munmap(addr, 64n * KiB), 'munmap');
        await rejectsWithArgumentError(() => b.readMemory(addr, 4), 'read after munmap');
      } finally {
        await b.close(fd);
      }
    },
  },
  {
    name: 'SCM_RIGHTS, a memfd sent over a socket pair maps the same memory',
    requires: { groups: 0 },
    async run(ctx) {
      const b = ctx.binding;
      const [a, c] = await b.socketPair();
      const fd = await b.memfdCreate('passed');
      const opened = [a, c, fd];
      try {
        await b.ftruncate(fd, 4096n);
        await b.pwrite(fd, Buffer.from('handed over'), 0n);
        equal(await b.sendFds(a, Buffer.from('{"v":1}'), [fd]), 7, 'bytes sent');
        const msg = await b.recvFds(c, 64, 4);
        equal(msg.data.toString(), '{"v":1}', 'payload');
        equal(msg.fds.length, 1, 'one fd received');
        opened.push(...msg.fds);
        assert(msg.fds[0] !== fd, 'a new fd number');
        equal((await b.pread(msg.fds[0]!, 11, 0n)).toString(), 'handed over', 'same file behind it');
        await rejectsWith(b.sendFds(a, Buffer.from('x'), [BAD_FD]), 'EBADF', 'sending a closed fd');
        await rejectsWith(b.sendFds(fd, Buffer.from('x'), []), 'ENOTSOCK', 'sendmsg on a memfd');
        // More fds than the receiver takes: the kernel cuts them off (MSG_CTRUNC) and none is kept.
        equal(await b.sendFds(a, Buffer.from('two'), [fd, fd]), 3, 'bytes sent with two fds');
        let truncated: unknown = null;
        try {
          const extra = await b.recvFds(c, 64, 1);
          opened.push(...extra.fds);
        } catch (err) {
          truncated = err;
        }
        equal((truncated as { code?: unknown } | null)?.code, 'MSG_CTRUNC', 'receiving two fds with room for one');
      } finally {
        for (const x of opened) await b.close(x).catch(() => undefined);
      }
    },
  },
  {
    name: 'RLIMIT_MEMLOCK and VmLck are readable',
    requires: { groups: 0 },
    async run(ctx) {
      const limit = ctx.binding.getMemlockLimit();
      assert(limit.soft === null || typeof limit.soft === 'bigint', 'soft limit is a bigint or null (unlimited)');
      assert(limit.hard === null || limit.soft === null || limit.soft <= limit.hard, 'soft <= hard');
      const vmLck = await ctx.binding.lockedMemoryBytes();
      assert(vmLck >= 0n, 'VmLck is non-negative');
    },
  },
  // --- memlock accounting (the runner has CAP_IPC_LOCK in the guest) ----------------------
  {
    name: 'ENABLE over RLIMIT_MEMLOCK is ENOMEM and charges nothing; CAP_IPC_LOCK bypasses the limit (in child processes)',
    async run(ctx) {
      const limited = await ctx.inChildProcess('enable', childArgs(ctx), { memlockLimit: 64n * MiB, unprivileged: true });
      equal(limited['enable'], 'ENOMEM', 'ENABLE over the limit without CAP_IPC_LOCK');
      equal(BigInt(limited['charged'] as string), 0n, 'nothing charged');
      const privileged = await ctx.inChildProcess('enable', childArgs(ctx), { memlockLimit: 64n * MiB });
      equal(privileged['enable'], 'ok', 'ENABLE over the limit with CAP_IPC_LOCK');
      equal(BigInt(privileged['charged'] as string), profile(ctx).dma32Size, 'still counted');
    },
  },
];
