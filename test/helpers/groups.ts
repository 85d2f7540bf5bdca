// In-memory IommuGroup values for tests of the rooms above discovery.
import type { IommuGroup, PciFunction, Topology } from '../../src/topology/types.js';

export function fn(address: string, overrides: Partial<PciFunction> = {}): PciFunction {
  return {
    address,
    domain: Number.parseInt(address.split(':')[0]!, 16),
    vendor: '144d',
    device: 'a808',
    subsystemVendor: null,
    subsystemDevice: null,
    classCode: '010802',
    isBridge: false,
    driver: 'vfio-pci',
    driverOverride: null,
    numaNode: 0,
    physfn: null,
    ...overrides,
  };
}

export function group(id: number, functions: PciFunction[], overrides: Partial<IommuGroup> = {}): IommuGroup {
  const numaNodes = [...new Set(functions.map((f) => f.numaNode).filter((n) => n >= 0))].sort((a, b) => a - b);
  return {
    id,
    name: null,
    phb: functions[0]?.domain ?? null,
    pe: null,
    functions,
    devNode: true,
    numaNodes,
    eeh: null,
    vfioCandidate: true,
    usable: true,
    problems: [],
    ...overrides,
  };
}

export function topologyOf(groups: IommuGroup[]): Topology {
  return { groups: new Map(groups.map((g) => [g.id, g])), containerNode: true, issues: [] };
}
