// The node's PCI passthrough topology as discovery sees it: IOMMU groups (one
// per Partitionable Endpoint on POWER), their functions, PHB, PE, NUMA and EEH.
// Plain data only, so every other room can consume it without touching sysfs.

/** Where discovery reads from. Both default to `/`; tests point them at temp trees. */
export interface DiscoveryRoots {
  /** Root under which `sys/bus/pci/devices` and `sys/kernel/iommu_groups` live. */
  sysfsRoot: string;
  /** Root under which `dev/vfio` lives. */
  devRoot: string;
}

/** One PCI function (BDF) of an IOMMU group. */
export interface PciFunction {
  /** Full PCI address as sysfs names it, lower case: `0030:01:00.0`. */
  address: string;
  /** PCI domain (PHB) number parsed from the address. */
  domain: number;
  /** Vendor id, 4 lower-case hex digits without `0x`: `1014`. */
  vendor: string;
  /** Device id, 4 lower-case hex digits. */
  device: string;
  subsystemVendor: string | null;
  subsystemDevice: string | null;
  /** Class code, 6 lower-case hex digits: `010802`. */
  classCode: string;
  /** True for PCI-to-PCI bridges (class 0604xx) and other bridge classes (06xxxx). */
  isBridge: boolean;
  /** Name of the bound driver, or null when unbound. */
  driver: string | null;
  /** Content of `driver_override`, null when absent or `(null)`. */
  driverOverride: string | null;
  /** NUMA node, -1 when unknown (sparse on POWER: 0, 8, 252..255). */
  numaNode: number;
  /** Address of the SR-IOV physical function when this is a VF, else null. */
  physfn: string | null;
  /**
   * PCIe AER fatal error count (`TOTAL_ERR_FATAL` of `aer_dev_fatal`); null or
   * absent where the kernel exposes no AER statistics for the function.
   */
  aerFatal?: number | null;
  /**
   * The PCI root complex the function sits under, as sysfs names its directory
   * (`pci0030:00`; in an LPAR the root bus need not be 00: `pci0206:a0`); null
   * when the device link could not be read.
   */
  pcieRoot?: string | null;
}

/** Decoded `eeh_pe_state` and friends; present only where the kernel exposes EEH. */
export interface EehInfo {
  /** Hardware state word (UNAVAIL 1, NOT_SUPPORT 2, RESET_ACTIVE 4, MMIO_ACTIVE 8, DMA_ACTIVE 0x10, ...). */
  hardwareState: number | null;
  /** Software state word (ISOLATED 1, RECOVERING 2, ...). */
  softwareState: number | null;
  /** `eeh_pe_config_addr`: PE number on bare metal, an address in an LPAR. */
  configAddr: number | null;
  /** `eeh_mode`. */
  mode: number | null;
  /** True when the PE is frozen (ISOLATED set, or MMIO and DMA not both active). */
  frozen: boolean;
  /** Which function's attributes were read. */
  source: string;
  /**
   * Set when EEH is present but the PE state could not be read or parsed: why,
   * naming the path. Such a PE is not judged healthy (doubt is not health).
   */
  stateUnknown?: string;
}

/** One IOMMU group: the unit of allocation. */
export interface IommuGroup {
  /** The kernel's group number N (`/sys/kernel/iommu_groups/N`, `/dev/vfio/N`): the device ID. */
  id: number;
  /** Raw content of the group's `name` file (`domain0-pe1fd`), null when absent. */
  name: string | null;
  /** PHB (PCI domain) from the name (decimal in the name), else from the functions' addresses. */
  phb: number | null;
  /** PE number from the name (hex in the name), null when unknown. */
  pe: number | null;
  /** Every function of the group, sorted by address. */
  functions: PciFunction[];
  /** `/dev/vfio/N` exists. */
  devNode: boolean;
  /** Distinct NUMA nodes (>= 0) of the functions, ascending. Empty when unknown. */
  numaNodes: number[];
  /** EEH attributes of the PE, null where EEH is absent. */
  eeh: EehInfo | null;
  /** At least one function is bound to a VFIO driver or `/dev/vfio/N` exists: offered for passthrough. */
  vfioCandidate: boolean;
  /** Every rule for passthrough holds (see `problems`). */
  usable: boolean;
  /** Why the group is not usable, one sentence each; empty when usable. */
  problems: string[];
}

/** Something odd in the tree that discovery stepped over. */
export interface DiscoveryIssue {
  /** The path that was odd. */
  path: string;
  message: string;
  /** The group concerned, when known. */
  group?: number;
}

export interface Topology {
  /** Groups by number. */
  groups: Map<number, IommuGroup>;
  /** `/dev/vfio/vfio` (the container node) exists. */
  containerNode: boolean;
  /** Odd entries met during the scan; the good groups are still reported. */
  issues: DiscoveryIssue[];
}

/** What changed between two scans, by group number. */
export interface TopologyChange {
  added: number[];
  removed: number[];
  changed: number[];
  topology: Topology;
  /** True when `/dev/vfio/vfio` appeared or vanished; absent when it did not change. */
  containerNodeChanged?: boolean;
}
