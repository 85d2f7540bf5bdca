// The platform side of the simulated kernel: the <linux/vfio.h> numbers it speaks and what a
// pseries or powernv PE (iommu_table_group) offers, per docs/spapr-vfio-facts.md section 3.
import type { Platform, VfioConstants } from '../binding.js';

/** The ABI of <linux/vfio.h>, as the simulated kernel speaks it (no ioctl numbers: it has methods). */
export const SIMULATED_CONSTANTS: VfioConstants = Object.freeze({
  apiVersion: 0,
  type1Iommu: 1,
  spaprTceIommu: 2,
  spaprTceV2Iommu: 7,
  eehExtension: 5,
  groupFlagsViable: 1,
  groupFlagsContainerSet: 2,
  dmaMapFlagRead: 1,
  dmaMapFlagWrite: 2,
  spaprInfoDdw: 1,
  eehPeOp: {
    disable: 0,
    enable: 1,
    unfreezeIo: 2,
    unfreezeDma: 3,
    getState: 4,
    resetDeactivate: 5,
    resetHot: 6,
    resetFundamental: 7,
    configure: 8,
    injectError: 9,
  },
  eehPeState: { normal: 0, reset: 1, stopped: 2, stoppedDma: 4, unavailable: 5 },
  pciRegion: { bar0: 0, config: 7 },
});

export const GiB = 1n << 30n;
export const IOMMU_PAGE_SHIFT_4K = 12;
export const DDW_START = 1n << 59n;
/** pseries get_table_size for more than one level: 0xfffff pages charged, then EINVAL [seen]. */
export const PSERIES_MULTILEVEL_CHARGE = 0xfffff000n;
/** pseries allocates a window's whole table at once; past PAGE_SIZE << 18 it cannot. */
export const PSERIES_MAX_TABLE_ORDER = 18;
const POWERNV_MAX_LEVELS = 5;

/** What a platform's PE (iommu_table_group) offers, per facts section 3. */
export interface PlatformProfile {
  family: 'pseries' | 'powernv';
  dma32Start: bigint;
  dma32Size: bigint;
  pgsizes: bigint;
  maxDynamicWindows: number;
  maxLevels: number;
  /** CHECK_EXTENSION(VFIO_EEH) and a PE behind each group. */
  eeh: boolean;
}

export const PLATFORM_PROFILES: Readonly<Record<Platform, PlatformProfile>> = Object.freeze({
  pseries: {
    family: 'pseries',
    dma32Start: 0n,
    dma32Size: 1n * GiB,
    pgsizes: 0x1211000n,
    maxDynamicWindows: 2,
    maxLevels: 1,
    eeh: false,
  },
  powernv9: {
    family: 'powernv',
    dma32Start: 0n,
    dma32Size: 2n * GiB,
    pgsizes: 0x40211000n,
    maxDynamicWindows: 2,
    maxLevels: POWERNV_MAX_LEVELS,
    eeh: true,
  },
  powernv10: {
    family: 'powernv',
    dma32Start: 0n,
    dma32Size: 2n * GiB,
    pgsizes: 0x40211000n,
    maxDynamicWindows: 2,
    maxLevels: POWERNV_MAX_LEVELS,
    eeh: true,
  },
});
