// What the rest of the plugin tells the reporting room about the node: the
// devices of each resource with their health, selection conflicts and the
// capabilities discovered. Plain data, so callers need nothing from here but types.

export interface DeviceReport {
  /** Device ID as advertised to the kubelet: the IOMMU group number. */
  id: string;
  healthy: boolean;
  /** Why the device is unhealthy, one sentence; ignored when healthy. */
  reason?: string;
}

export interface ResourceReport {
  /** Fully qualified resource name: `ibm.com/nvme`. */
  name: string;
  devices: DeviceReport[];
}

export interface ConflictReport {
  /** IOMMU group number selected by several resources (advertised by none). */
  group: number | string;
  resources: string[];
}

/** Kernel and platform facts; a field that is unknown is not labelled (and a label we set before is removed). */
export interface NodeCapabilities {
  /** VFIO_SPAPR_TCE_v2_IOMMU is offered. */
  spaprTceV2?: boolean;
  /** DDW: VFIO_IOMMU_SPAPR_TCE_CREATE/REMOVE work (dynamic DMA windows). */
  dynamicWindows?: boolean;
  /** IOMMU page sizes supported, in bytes. */
  iommuPageSizes?: readonly number[];
  /** `power8`, `power9`, `power10`, ... where known. */
  powerGeneration?: string;
  /** `pseries` (LPAR under PowerVM/KVM) or `powernv` (bare metal). */
  platform?: string;
  /** IOMMU groups discovered; when undefined, the number of devices in the snapshot. */
  groups?: number;
}

export interface NodeSnapshot {
  resources: ResourceReport[];
  conflicts?: ConflictReport[];
  /**
   * Merged into what was known (the VFIO layer may supply its part later than
   * discovery, or through `setCapabilities`); a field given as undefined is forgotten.
   */
  capabilities?: NodeCapabilities;
}
