// What the kubelet gets back for Allocate and GetPreferredAllocation, as pure
// functions over the advertised devices. No gRPC and no kernel here: the
// server adapts these to the wire and the preparation room does the ioctls.
import { RequestError } from '../errors.js';
import type { IommuGroup } from '../topology/types.js';
import type { ContainerAllocateResponse } from '../generated/v1beta1/ContainerAllocateResponse.js';
import { VFIO_CONTAINER_PATH, groupEnvironment, groupNodePath, type AdvertisedDevice } from '../inventory/advertised.js';
import type { AllocationExtra } from '../prepare/types.js';

const DEVICE_ID = /^(0|[1-9][0-9]{0,9})$/;

/**
 * Checks one container's device IDs and returns the groups in request order.
 * Malformed, unknown and duplicate IDs are invalid requests; known devices that
 * are unhealthy fail the precondition. Nothing is changed on failure.
 */
export function resolveDevices(
  resourceName: string,
  ids: readonly string[],
  devices: ReadonlyMap<string, AdvertisedDevice>,
  options: { requireHealthy: boolean } = { requireHealthy: true },
): IommuGroup[] {
  if (ids.length === 0) {
    throw new RequestError('PVDP_ERR_INVALID_REQUEST', 'invalid', `No device IDs requested for ${resourceName}`);
  }
  const seen = new Set<string>();
  const groups: IommuGroup[] = [];
  for (const id of ids) {
    if (typeof id !== 'string' || !DEVICE_ID.test(id)) {
      throw new RequestError(
        'PVDP_ERR_INVALID_REQUEST',
        'invalid',
        `Device ID ${JSON.stringify(id).slice(0, 80)} is malformed: ${resourceName} device IDs are IOMMU group numbers`,
      );
    }
    if (seen.has(id)) {
      throw new RequestError('PVDP_ERR_DUPLICATE_DEVICE', 'invalid', `Device ID ${id} is requested more than once`);
    }
    seen.add(id);
    const device = devices.get(id);
    if (!device) {
      throw new RequestError('PVDP_ERR_UNKNOWN_DEVICE', 'invalid', `IOMMU group ${id} is not a device of ${resourceName} on this node`);
    }
    if (options.requireHealthy && !device.healthy) {
      throw new RequestError(
        'PVDP_ERR_DEVICE_UNHEALTHY',
        'precondition',
        `IOMMU group ${id} of ${resourceName} is unhealthy${device.reason ? `: ${device.reason}` : ''}`,
      );
    }
    groups.push(device.group);
  }
  return groups;
}

/** The response for one container: device nodes, and env naming functions and groups. */
export function containerAllocation(
  resourceName: string,
  groups: readonly IommuGroup[],
  options: { cdi?: boolean } = {},
): ContainerAllocateResponse {
  const devices = options.cdi ? [] : [
    { container_path: VFIO_CONTAINER_PATH, host_path: VFIO_CONTAINER_PATH, permissions: 'rw' },
    ...groups.map((g) => ({ container_path: groupNodePath(g.id), host_path: groupNodePath(g.id), permissions: 'rw' })),
  ];
  return {
    // Every function of every group: the group is allocated whole.
    envs: groupEnvironment(resourceName, groups),
    devices,
    mounts: [],
    annotations: {},
    // With CDI the runtime injects /dev/vfio/vfio and /dev/vfio/N from our specs.
    cdi_devices: options.cdi ? groups.map((g) => ({ name: `${resourceName}=${g.id}` })) : [],
  };
}

/** Adds `extra`'s env and mounts to a container's response; refuses to overwrite an env or a mount path. */
export function mergeAllocation(response: ContainerAllocateResponse, extra: AllocationExtra): ContainerAllocateResponse {
  const envs = { ...(response.envs ?? {}) };
  for (const [name, value] of Object.entries(extra.envs ?? {})) {
    if (name in envs && envs[name] !== value) throw new Error(`Environment variable ${name} would be set twice`);
    envs[name] = value;
  }
  const mounts = [...(response.mounts ?? [])];
  for (const mount of extra.mounts ?? []) {
    if (mounts.some((m) => m.container_path === mount.container_path)) throw new Error(`Mount ${mount.container_path} would be made twice`);
    mounts.push(mount);
  }
  return { ...response, envs, mounts };
}

/**
 * Resolves every container of one Allocate request. A group may appear in only
 * one container of a request: a VFIO group opens once.
 */
export function allocate(
  resourceName: string,
  containerRequests: readonly { devices_ids: readonly string[] }[],
  devices: ReadonlyMap<string, AdvertisedDevice>,
  options: { cdi?: boolean } = {},
): { groups: IommuGroup[]; response: ContainerAllocateResponse }[] {
  if (containerRequests.length === 0) {
    throw new RequestError('PVDP_ERR_INVALID_REQUEST', 'invalid', 'Allocate request has no container requests');
  }
  const claimed = new Map<string, number>();
  const resolved = containerRequests.map((request, index) => {
    const groups = resolveDevices(resourceName, request.devices_ids, devices);
    for (const g of groups) {
      const other = claimed.get(String(g.id));
      if (other !== undefined) {
        throw new RequestError(
          'PVDP_ERR_DUPLICATE_DEVICE',
          'invalid',
          `IOMMU group ${g.id} is requested by containers ${other} and ${index} of one pod`,
        );
      }
      claimed.set(String(g.id), index);
    }
    return groups;
  });
  return resolved.map((groups) => ({ groups, response: containerAllocation(resourceName, groups, options) }));
}

interface Candidate {
  id: string;
  numa: number;
  phb: number;
  n: number;
}

function placement(device: AdvertisedDevice | undefined, id: string): Candidate {
  const group = device?.group;
  return {
    id,
    numa: group?.numaNodes[0] ?? -1,
    phb: group?.phb ?? -1,
    n: Number(id),
  };
}

function countBy<T>(items: readonly T[], key: (item: T) => number): Map<number, number> {
  const counts = new Map<number, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return counts;
}

/**
 * Preferred allocation for one container: every must-include ID first, then
 * fill up from the available IDs keeping the pod on one NUMA node and PHB
 * where it can. With no anchor, pick the NUMA node (then PHB) that fits the
 * request most tightly, so larger pools stay whole for larger pods.
 */
export function preferredAllocation(
  available: readonly string[],
  mustInclude: readonly string[],
  size: number,
  devices: ReadonlyMap<string, AdvertisedDevice>,
): string[] {
  const chosen: string[] = [];
  const chosenSet = new Set<string>();
  for (const id of mustInclude) {
    if (!chosenSet.has(id)) {
      chosen.push(id);
      chosenSet.add(id);
    }
  }
  const pool = [...new Set(available)].filter((id) => !chosenSet.has(id) && devices.get(id)?.healthy !== false);
  const needed = Math.min(Math.max(size - chosen.length, 0), pool.length);
  if (needed === 0) return chosen;

  const candidates = pool.map((id) => placement(devices.get(id), id));
  const anchors = chosen.map((id) => placement(devices.get(id), id));
  let anchorNuma: number | undefined;
  let anchorPhb: number | undefined;
  if (anchors.length > 0) {
    anchorNuma = [...countBy(anchors, (a) => a.numa)].sort((a, b) => b[1] - a[1])[0]![0];
    anchorPhb = [...countBy(anchors.filter((a) => a.numa === anchorNuma), (a) => a.phb)].sort((a, b) => b[1] - a[1])[0]![0];
  } else {
    // Tightest NUMA node that holds the whole request, else the largest one.
    const byNuma = [...countBy(candidates, (c) => c.numa)];
    const fitting = byNuma.filter(([, count]) => count >= needed).sort((a, b) => a[1] - b[1] || a[0] - b[0]);
    anchorNuma = (fitting[0] ?? byNuma.sort((a, b) => b[1] - a[1] || a[0] - b[0])[0])![0];
    const onNuma = candidates.filter((c) => c.numa === anchorNuma);
    const byPhb = [...countBy(onNuma, (c) => c.phb)];
    const phbFit = byPhb.filter(([, count]) => count >= needed).sort((a, b) => a[1] - b[1] || a[0] - b[0]);
    anchorPhb = (phbFit[0] ?? byPhb.sort((a, b) => b[1] - a[1] || a[0] - b[0])[0])![0];
  }
  const phbCounts = countBy(candidates, (c) => c.phb);
  const rank = (c: Candidate) => (c.numa === anchorNuma ? 0 : 2) + (c.phb === anchorPhb ? 0 : 1);
  candidates.sort(
    (a, b) =>
      rank(a) - rank(b) ||
      // Off the anchor PHB, prefer the fuller PHB so the pod spans few of them.
      (phbCounts.get(b.phb) ?? 0) - (phbCounts.get(a.phb) ?? 0) ||
      a.phb - b.phb ||
      a.n - b.n,
  );
  for (const c of candidates.slice(0, needed)) chosen.push(c.id);
  return chosen;
}
