// The `verify` preparation mode over the container sequence: prepare each group on its own and
// release it again.
import type { VfioBinding } from './binding.js';
import { prepareContainer } from './container-sequence.js';
import type { GroupVerification, VerifyOptions } from './dma-plan.js';

export type { GroupVerification, VerifyOptions } from './dma-plan.js';

/**
 * The `verify` preparation mode: for each group, the whole sequence in its own
 * container (open, viability, set container, v2 or v1, info, enable or
 * register, map and unmap a probe), then everything released. The first
 * failure is thrown as a VfioPrepareError naming the cause and the remedy.
 */
export async function verifyGroups(binding: VfioBinding, groups: number[], options: VerifyOptions): Promise<GroupVerification[]> {
  const results: GroupVerification[] = [];
  for (const group of groups) {
    const prepared = await prepareContainer(binding, {
      devRoot: options.devRoot,
      groups: [group],
      memorySize: options.probeSize ?? BigInt(binding.pageSize),
      ...(options.hugePageShift !== undefined ? { hugePageShift: options.hugePageShift } : {}),
      ...(options.iommu !== undefined ? { iommu: options.iommu } : {}),
      ...(options.logger !== undefined ? { logger: options.logger } : {}),
    });
    results.push({ group, iommu: prepared.iommu, window: prepared.window, info: prepared.info, lockedBytes: prepared.lockedBytes });
    await prepared.release();
    options.logger?.info({ group, iommu: prepared.iommu }, 'VFIO group verified');
  }
  return results;
}
