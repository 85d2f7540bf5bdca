// A group's device name in the DRA pool. The kernel's group number changes
// from boot to boot (it is a counter), so the name comes from the PCI address
// of the group's first endpoint, which firmware keeps stable: `0030:01:00.0`
// -> `pci-0030-01-00-0`, a DNS label as ResourceSlices require.
import type { IommuGroup } from '../topology/types.js';

/** The function a group is named after and reported by (`pciBusID`): its first endpoint, else its first function. */
export function primaryFunction(group: IommuGroup): IommuGroup['functions'][number] | undefined {
  return group.functions.find((fn) => !fn.isBridge) ?? group.functions[0];
}

export function deviceNameOf(group: IommuGroup): string {
  const fn = primaryFunction(group);
  // A group with no readable function is never offered; the number keeps the name unique anyway.
  if (!fn) return `group-${group.id}`;
  return `pci-${fn.address.toLowerCase().replace(/[:.]/g, '-')}`;
}
