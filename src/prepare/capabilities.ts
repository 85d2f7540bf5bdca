// What a successful verification says about the node's IOMMU, as the plain
// facts node labels are made of.
import type { GroupVerification } from '../vfio/container-sequence.js';

export interface IommuCapabilities {
  spaprTceV2: boolean;
  dynamicWindows: boolean;
  /** IOMMU page sizes in bytes, ascending; empty when the kernel did not say (v1). */
  iommuPageSizes: number[];
}

/** DDW bit of vfio_iommu_spapr_tce_info.flags. */
const INFO_DDW = 1;

export function capabilitiesOf(v: GroupVerification): IommuCapabilities {
  const ddw = (v.info.flags & INFO_DDW) !== 0;
  const sizes: number[] = [];
  if (ddw) {
    for (let bit = 12; bit < 48; bit++) {
      if ((v.info.ddw.pgsizes >> BigInt(bit)) & 1n) sizes.push(2 ** bit);
    }
  }
  return {
    spaprTceV2: v.iommu === 'v2',
    dynamicWindows: ddw && v.info.ddw.maxDynamicWindowsSupported > 0,
    iommuPageSizes: sizes,
  };
}
