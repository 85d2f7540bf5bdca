// The sPAPR sequence on the simulated kernel: call order, teardown order,
// failure paths that leave nothing behind, window sizing and verify messages.
import { describe, expect, it } from 'vitest';
import { acceptedLevels, coalesceRanges, prepareContainer } from '../../src/vfio/container-sequence.js';
import { verifyGroups } from '../../src/vfio/verify-groups.js';
import { VfioPrepareError } from '../../src/vfio/errors.js';
import { SimulatedKernel } from '../../src/vfio/simulated-kernel.js';
import type { Platform } from '../../src/vfio/binding.js';

const MiB = 1n << 20n;
const groups = [
  { group: 4, devices: ['0004:01:00.0', '0004:01:00.1'] },
  { group: 5, devices: ['0005:01:00.0'] },
];

function kernel(platform: Platform, opts: Partial<ConstructorParameters<typeof SimulatedKernel>[0]> = {}) {
  const k = new SimulatedKernel({ platform, groups, memlockLimit: null, ...opts });
  return { k, p: k.process() };
}

const ops = (k: SimulatedKernel) => k.calls.filter((c) => c.op.startsWith('VFIO_')).map((c) => c.op.replace(/^VFIO_(IOMMU_)?(SPAPR_)?/, ''));

describe('prepareContainer', () => {
  it('follows the reference order on v2 and tears down in reverse', async () => {
    const { k, p } = kernel('powernv9');
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: 3n * MiB });
    expect(ops(k)).toEqual([
      'GROUP_GET_STATUS', 'GET_API_VERSION', 'CHECK_EXTENSION', 'CHECK_EXTENSION', 'GROUP_SET_CONTAINER', 'SET_IOMMU',
      'TCE_GET_INFO', 'CHECK_EXTENSION', 'EEH_PE_OP', 'REGISTER_MEMORY', 'TCE_REMOVE', 'TCE_CREATE', 'MAP_DMA',
    ]);
    expect(prepared.window.size).toBe(4n * MiB); // the next power of two above the request
    expect(prepared.window.start).toBe(0n); // powernv slot 0 gets the dma32 start
    k.calls.length = 0;
    await prepared.release();
    expect(ops(k)).toEqual(['UNMAP_DMA', 'TCE_REMOVE', 'UNREGISTER_MEMORY', 'GROUP_UNSET_CONTAINER']);
    expect(k.calls.filter((c) => c.op === 'close').length).toBe(3); // memfd, container, group
    expect(p.openFds()).toEqual([]);
    expect(p.mappings()).toEqual([]);
    expect(await p.lockedMemoryBytes()).toBe(0n);
    await prepared.release(); // twice is harmless
  });

  it('picks the largest IOMMU page not above the backing page (2 MiB huge pages -> shift 21)', async () => {
    const { k, p } = kernel('pseries', { hugePages: { 21: 8 } });
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: 4n * MiB, hugePageShift: 21 });
    expect(prepared.window.pageShift).toBe(21);
    expect(prepared.window.start).toBe(1n << 59n);
    expect(prepared.mappings).toEqual([{ iova: 1n << 59n, vaddr: prepared.memory.address, size: 4n * MiB, offset: 0n }]);
    await prepared.release();
    expect(k.freeHugePages(21)).toBe(8);
  });

  it('grows levels until TCE_CREATE accepts a large window (powernv)', async () => {
    const { k, p } = kernel('powernv9');
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: 64n * 1024n, minWindowSize: 64n << 30n });
    expect(prepared.window.levels).toBeGreaterThan(1);
    const creates = k.calls.filter((c) => c.op === 'VFIO_IOMMU_SPAPR_TCE_CREATE');
    expect(creates.at(-1)!.result).toBe('ok');
    expect(creates.slice(0, -1).every((c) => c.result !== 'ok')).toBe(true);
    await prepared.release();
    expect(await p.lockedMemoryBytes()).toBe(0n);
  });

  it('falls back to v1 when the PE has no dynamic windows', async () => {
    const k = new SimulatedKernel({ platform: 'pseries', groups: [{ group: 9, devices: ['0009:00:01.0'], dynamicWindows: false }], memlockLimit: null });
    const prepared = await prepareContainer(k.process(), { devRoot: '/', groups: [9], memorySize: MiB });
    expect(prepared.iommu).toBe('v1');
    expect(k.calls.filter((c) => c.op === 'VFIO_SET_IOMMU').map((c) => c.result)).toEqual(['EINVAL', 'ok']);
    await prepared.release();
  });

  it('puts two groups in one v2 container on powernv', async () => {
    const { k, p } = kernel('powernv9');
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4, 5], memorySize: MiB });
    p.writeMemory(prepared.memory.address, Buffer.from('both'));
    expect(k.dmaRead(4, prepared.window.start, 4).toString()).toBe('both');
    expect(k.dmaRead(5, prepared.window.start, 4).toString()).toBe('both');
    await prepared.release();
    expect(p.openFds()).toEqual([]);
  });

  it('gives each group a container of its own on pseries v2 (no window for two PEs), the same memory and window in each', async () => {
    const { k, p } = kernel('pseries');
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4, 5], memorySize: MiB });
    expect(prepared.containers.map((c) => c.groups.map((g) => g.group))).toEqual([[4], [5]]);
    expect(prepared.containers[1]!.window).toEqual(prepared.window);
    // REGISTER of the same region in the second container is not charged again (and the 2 KiB
    // tables of these 1 MiB windows round down to nothing on pseries).
    expect(prepared.lockedBytes).toBe(MiB);
    expect(k.calls.filter((c) => c.op === 'VFIO_IOMMU_MAP_DMA').map((c) => c.result)).toEqual(['ok', 'ok']);
    // The second group tried the first container first: refused with EPERM while a window exists.
    expect(k.calls.filter((c) => c.op === 'VFIO_GROUP_SET_CONTAINER').map((c) => c.result)).toEqual(['ok', 'EPERM', 'ok']);
    p.writeMemory(prepared.memory.address, Buffer.from('both'));
    expect(k.dmaRead(4, prepared.window.start, 4).toString()).toBe('both');
    expect(k.dmaRead(5, prepared.window.start, 4).toString()).toBe('both');
    await prepared.release();
    expect(p.openFds()).toEqual([]);
    expect(await p.lockedMemoryBytes()).toBe(0n);
  });

  it('gives each group a container of its own on v1 (one group per container), each enabled', async () => {
    const { k, p } = kernel('powernv9');
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4, 5], memorySize: MiB, iommu: 'v1' });
    expect(prepared.containers).toHaveLength(2);
    expect(k.calls.filter((c) => c.op === 'VFIO_IOMMU_ENABLE').map((c) => c.result)).toEqual(['ok', 'ok']);
    await prepared.release();
    expect(await p.lockedMemoryBytes()).toBe(0n);
  });

  it('takes one level for tables up to 16 MiB: no TCE_CREATE is refused (its charge would stay until exit)', async () => {
    for (const [pageSize, pageShift, windowSize] of [[4096, 12, 8n << 30n], [65536, 16, 128n << 30n]] as Array<[number, number, bigint]>) {
      const { k, p } = kernel('powernv9', { pageSize });
      const prepared = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: BigInt(pageSize), minWindowSize: windowSize });
      expect(prepared.window.pageShift).toBe(pageShift);
      expect(prepared.window.levels).toBe(1);
      expect(k.calls.filter((c) => c.op === 'VFIO_IOMMU_SPAPR_TCE_CREATE').map((c) => c.result)).toEqual(['ok']);
      await prepared.release();
      // Twice the size: two levels, asked for at once.
      const bigger = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: BigInt(pageSize), minWindowSize: 2n * windowSize });
      expect(bigger.window.levels).toBe(2);
      expect(k.calls.filter((c) => c.op === 'VFIO_IOMMU_SPAPR_TCE_CREATE').map((c) => c.result)).toEqual(['ok', 'ok']);
      await bigger.release();
      expect(await p.lockedMemoryBytes()).toBe(0n);
    }
    expect(acceptedLevels(8n << 30n, 12, 4096, 5)).toBe(1);
    expect(acceptedLevels(16n << 30n, 12, 4096, 5)).toBe(2);
    expect(acceptedLevels(128n << 30n, 16, 65536, 5)).toBe(1);
    expect(acceptedLevels(256n << 30n, 16, 65536, 5)).toBe(2);
  });

  it('names the remedy when the kernel has no huge pages of the size asked for (memfd_create ENODEV)', async () => {
    const { p } = kernel('pseries', { hugePageShifts: [21] });
    const err = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: 2n << 30n, hugePageShift: 30 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VfioPrepareError);
    expect((err as VfioPrepareError).code).toBe('ERR_VFIO_MEMORY');
    expect((err as Error).message).toMatch(/the kernel has no 1 GiB huge pages: .*\/sys\/kernel\/mm\/hugepages.*hugepages-1048576kB.*hugepagesz=1G hugepages=N/);
    expect(p.openFds()).toEqual([]);
    expect(await p.lockedMemoryBytes()).toBe(0n);
  });

  it.each(['pseries', 'powernv9'] as Platform[])('releases everything when a step fails half-way (%s, memlock at TCE_CREATE)', async (platform) => {
    const { k, p } = kernel(platform, { memlockLimit: 2n * MiB });
    // 1 MiB registers fine; a 1 TiB window's table does not fit in the rest.
    const err = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: MiB, minWindowSize: 1n << 40n }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VfioPrepareError);
    expect((err as VfioPrepareError).code).toMatch(/ERR_VFIO_(MEMLOCK|WINDOW)/);
    expect(p.openFds()).toEqual([]);
    expect(p.mappings()).toEqual([]);
    expect(await p.lockedMemoryBytes()).toBe(0n);
    expect(k.dead).toBe(false);
  });

  it('a DMA to an iova that was never mapped is blocked and freezes the PE (powernv)', async () => {
    const { k, p } = kernel('powernv9');
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: MiB });
    expect(() => k.dmaWrite(4, prepared.window.start + 2n * MiB, Buffer.from('x'))).toThrow(/blocked/);
    expect(k.peState(4)).toBe(2);
    await prepared.release();
  });

  it('a handed-over container serves DMA but refuses MAP_DMA from the receiving process (mm rule)', async () => {
    const { k, p } = kernel('pseries');
    const [a, b] = await p.socketPair();
    const pod = p.fork(); // the pod holds the other end of the socket
    await p.close(b);
    await pod.close(a);
    const prepared = await prepareContainer(p, { devRoot: '/', groups: [4], memorySize: MiB });
    await p.sendFds(a, Buffer.from('{"v":1}'), [prepared.containerFd, prepared.groups[0]!.fd, prepared.memory.fd]);
    const msg = await pod.recvFds(b, 64, 8);
    const [containerFd, , memFd] = msg.fds as [number, number, number];
    await expect(pod.mapDma(containerFd, { vaddr: 0x10000n, iova: prepared.window.start, size: 4096n, flags: 3 })).rejects.toMatchObject({ code: 'EPERM' });
    const podView = await pod.mmap(memFd, MiB);
    pod.writeMemory(podView + 16n, Buffer.from('from the pod'));
    expect(k.dmaRead(4, prepared.window.start + 16n, 12).toString()).toBe('from the pod');
    // The plugin closes its copies; the pod's exit then releases everything in the kernel.
    for (const fd of [prepared.containerFd, prepared.groups[0]!.fd, prepared.memory.fd]) await p.close(fd);
    await p.munmap(prepared.memory.address, prepared.memory.size);
    expect(await p.lockedMemoryBytes()).toBeGreaterThan(0n); // still held: the pod has the fds
    pod.exit();
    expect(await p.lockedMemoryBytes()).toBe(0n);
    await p.close(a);
    expect(p.openFds()).toEqual([]);
  });
});

describe('verifyGroups', () => {
  it('names the memlock limit and the number the node needs (the v1 dma32 charge)', async () => {
    const { p } = kernel('pseries', { memlockLimit: 64n * MiB });
    const err = (await verifyGroups(p, [4], { devRoot: '/', iommu: 'v1' }).catch((e: unknown) => e)) as VfioPrepareError;
    expect(err.message).toBe(
      "RLIMIT_MEMLOCK is 64 MiB but enabling the 1 GiB dma32 window (and up to 4 MiB for its TCE table at the first map) needs 1028 MiB locked: raise the node's memlock limit for the plugin to at least 1028 MiB (LimitMEMLOCK= in the container runtime's systemd unit, ulimit -l), or give the plugin CAP_IPC_LOCK",
    );
    expect(err.group).toBe(4);
    expect(p.openFds()).toEqual([]);
  });

  it('verifies each group in its own container and leaves the groups free', async () => {
    const { k, p } = kernel('pseries');
    const results = await verifyGroups(p, [4, 5], { devRoot: '/' });
    expect(results.map((r) => [r.group, r.iommu])).toEqual([[4, 'v2'], [5, 'v2']]);
    expect(k.calls.filter((c) => c.op === 'VFIO_IOMMU_MAP_DMA').length).toBe(2);
    expect(k.calls.filter((c) => c.op === 'VFIO_IOMMU_UNMAP_DMA').length).toBe(2);
    const fd = await p.openGroup('/', 4);
    await p.close(fd);
  });

  it('reports a group that disappeared between allocation and start', async () => {
    const { k, p } = kernel('powernv9');
    k.removeDevice(5);
    await expect(verifyGroups(p, [4, 5], { devRoot: '/' })).rejects.toMatchObject({ code: 'ERR_VFIO_GROUP_MISSING', group: 5 });
    expect(p.openFds()).toEqual([]);
  });
});

describe('coalesceRanges', () => {
  it('merges ranges contiguous in iova, vaddr and offset, and only those', () => {
    const r = coalesceRanges([
      { iova: 0x2000n, vaddr: 0x12000n, size: 0x1000n, offset: 0x2000n },
      { iova: 0x0n, vaddr: 0x10000n, size: 0x2000n, offset: 0n },
      { iova: 0x3000n, vaddr: 0x40000n, size: 0x1000n, offset: 0x3000n },
    ]);
    expect(r).toEqual([
      { iova: 0x0n, vaddr: 0x10000n, size: 0x3000n, offset: 0n },
      { iova: 0x3000n, vaddr: 0x40000n, size: 0x1000n, offset: 0x3000n },
    ]);
  });
});
