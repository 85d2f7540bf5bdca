// The built-in simulated node: a POWER9 bare-metal (powernv) server with two
// sockets (NUMA 0 and 8), three PHBs each behind a root port without an IOMMU
// group, one PE per adapter and one per SR-IOV VF.
import type { FunctionSpec, GroupSpec, NodeSpec } from './sysfs-tree.js';

/** Healthy PE on bare metal: MMIO and DMA active and enabled; PRI_BUS set. */
export const HEALTHY_EEH_STATE = '0x00000078 0x00000800';
/** A frozen PE: MMIO/DMA stopped, ISOLATED set (for demos of EEH health). */
export const FROZEN_EEH_STATE = '0x00000000 0x00000801';

// PHB (PCI domain) -> NUMA node; the group names print the domain in decimal.
const PHB0 = '0000'; // domain0, socket 0
const PHB48 = '0030'; // domain48, socket 8
const PHB53 = '0035'; // domain53, socket 8

function v100(address: string, numaNode: number): FunctionSpec {
  return {
    address, vendor: '10de', device: '1db1', classCode: '030200',
    subsystemVendor: '10de', subsystemDevice: '1212',
    driver: 'vfio-pci', driverOverride: 'vfio-pci', numaNode,
    parent: `${address.slice(0, 4)}:00:00.0`,
  };
}

function samsungNvme(address: string, numaNode: number, driver: string): FunctionSpec {
  return {
    address, vendor: '144d', device: 'a808', classCode: '010802',
    subsystemVendor: '144d', subsystemDevice: 'a801',
    driver, driverOverride: driver === 'vfio-pci' ? 'vfio-pci' : null, numaNode,
    parent: `${address.slice(0, 4)}:00:00.0`,
  };
}

function group(id: number, phb: string, pe: number, functions: FunctionSpec[]): GroupSpec {
  return {
    id,
    name: `domain${Number.parseInt(phb, 16)}-pe${pe.toString(16)}`,
    functions,
    eeh: { peState: HEALTHY_EEH_STATE, configAddr: pe, mode: 0x1 },
  };
}

/** The demo and `--simulate` node: 9 groups on 3 PHBs; all usable but group 0 (boot NVMe on nvme). */
export function builtinPowerNode(): NodeSpec {
  const cx5 = (fn: number, driver: string): FunctionSpec => ({
    address: `${PHB48}:01:00.${fn}`, vendor: '15b3', device: '1017', classCode: '020000',
    subsystemVendor: '15b3', subsystemDevice: '0007',
    driver, driverOverride: 'vfio-pci', numaNode: 8, parent: `${PHB48}:00:00.0`,
  });
  const cx5Vf = (fn: number): FunctionSpec => ({
    address: `${PHB48}:01:00.${fn}`, vendor: '15b3', device: '1018', classCode: '020000',
    subsystemVendor: '15b3', subsystemDevice: '0007',
    driver: 'vfio-pci', driverOverride: 'vfio-pci', numaNode: 8,
    physfn: `${PHB48}:01:00.0`, parent: `${PHB48}:00:00.0`,
  });
  const fpga: FunctionSpec = {
    address: `${PHB53}:02:00.0`, vendor: '10ee', device: '5000', classCode: '120000',
    subsystemVendor: '10ee', subsystemDevice: '000e',
    driver: 'vfio-pci', driverOverride: 'vfio-pci', numaNode: 8, parent: `${PHB53}:00:00.0`,
  };
  return {
    containerNode: true,
    groups: [
      // Socket 0: the boot NVMe stays with the host; a second NVMe and a GPU are for pods.
      group(0, PHB0, 0x1fd, [samsungNvme(`${PHB0}:01:00.0`, 0, 'nvme')]),
      group(1, PHB0, 0x1fc, [samsungNvme(`${PHB0}:02:00.0`, 0, 'vfio-pci')]),
      group(2, PHB0, 0x1fb, [v100(`${PHB0}:03:00.0`, 0)]),
      // Socket 8: a dual-port ConnectX-5 (both functions in one PE; vfio-pci's
      // enable_sriov lets the PF own VFs), an NVMe, a GPU and an FPGA.
      group(3, PHB48, 0x1fd, [cx5(0, 'vfio-pci'), cx5(1, 'vfio-pci')]),
      group(4, PHB48, 0x1fc, [samsungNvme(`${PHB48}:02:00.0`, 8, 'vfio-pci')]),
      group(5, PHB53, 0x1fd, [v100(`${PHB53}:01:00.0`, 8)]),
      group(6, PHB53, 0x1fc, [fpga]),
      // VFs appear last (sriov_numvfs), each in its own PE, so they get the highest numbers.
      group(7, PHB48, 0x2, [cx5Vf(2)]),
      group(8, PHB48, 0x3, [cx5Vf(3)]),
    ],
  };
}
