// Where discovery looks (sysfs and /dev/vfio under the given roots), and the small async
// helpers every scan uses.
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { DiscoveryRoots } from './types.js';

// ---- paths -----------------------------------------------------------------

export function iommuGroupsDir(roots: DiscoveryRoots): string {
  return join(roots.sysfsRoot, 'sys', 'kernel', 'iommu_groups');
}

export function pciDevicesDir(roots: DiscoveryRoots): string {
  return join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices');
}

export function vfioDevDir(roots: DiscoveryRoots): string {
  return join(roots.devRoot, 'dev', 'vfio');
}

/** `<devRoot>/dev/vfio/N`. */
export function groupDevNodePath(roots: DiscoveryRoots, id: number): string {
  return join(vfioDevDir(roots), String(id));
}

// ---- small async helpers ---------------------------------------------------

export function errCode(err: unknown): string {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : 'EUNKNOWN';
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

