// The DMA memory a preparation maps: a memfd (hugetlb when asked), sized and mapped.
import type { VfioBinding } from './binding.js';
import { roundUp, type DmaMemory } from './dma-plan.js';

/** Allocates DMA memory: memfd (hugetlb when asked), sized, mapped. Releases what it made on failure. */
export async function allocateDmaMemory(
  binding: VfioBinding,
  size: bigint,
  options: { hugePageShift?: number; name?: string } = {},
): Promise<DmaMemory> {
  const pageSize = options.hugePageShift !== undefined ? 1n << BigInt(options.hugePageShift) : BigInt(binding.pageSize);
  const length = roundUp(size > 0n ? size : 1n, pageSize);
  const fd = await binding.memfdCreate(options.name ?? 'pvdp-dma', options.hugePageShift !== undefined ? { hugePageShift: options.hugePageShift } : {});
  let address: bigint;
  try {
    await binding.ftruncate(fd, length);
    address = await binding.mmap(fd, length);
  } catch (err) {
    await binding.close(fd).catch(() => undefined);
    throw err;
  }
  let released = false;
  return {
    fd,
    address,
    size: length,
    pageSize,
    async release() {
      if (released) return;
      released = true;
      try {
        await binding.munmap(address, length);
      } finally {
        await binding.close(fd);
      }
    },
  };
}
