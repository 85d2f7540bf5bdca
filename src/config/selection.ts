// Which configured resource each discovered group belongs to. A group belongs
// to at most one resource: a group that two resources select is reported and
// advertised by neither, so an operator never gets a silent, order-dependent choice.
import type { IommuGroup, PciFunction, Topology } from '../topology/types.js';
import { isVfioDriver } from '../topology/parse.js';
import type { ResourceConfig, Selectors } from './schema.js';

export interface SelectionConflict {
  group: number;
  resources: string[];
}

export interface Selection {
  /** Resource name to its groups (ascending by number), for every configured resource. */
  byResource: Map<string, IommuGroup[]>;
  conflicts: SelectionConflict[];
}

function globToRegExp(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${escaped}$`);
}

/** Pads each part of a selector address so `30:1:0.0` also matches `0030:01:00.0`. */
function normaliseAddressPattern(pattern: string): string {
  if (pattern === '*') return pattern;
  const [domain = '', bus = '', rest = ''] = pattern.split(':');
  const [slot = '', fn = ''] = rest.split('.');
  const pad = (part: string, width: number) => (/[*?]/.test(part) ? part : part.padStart(width, '0'));
  return `${pad(domain, 4)}:${pad(bus, 2)}:${pad(slot, 2)}.${fn}`;
}

export function functionMatches(fn: PciFunction, selectors: Selectors): boolean {
  if (selectors.vendors && !selectors.vendors.includes(fn.vendor)) return false;
  if (selectors.devices && !selectors.devices.includes(fn.device)) return false;
  if (selectors.classes && !selectors.classes.some((prefix) => fn.classCode.startsWith(prefix))) return false;
  if (selectors.drivers && !selectors.drivers.includes(fn.driver ?? '')) return false;
  if (selectors.domains && !selectors.domains.includes(fn.domain)) return false;
  if (selectors.numaNodes && !selectors.numaNodes.includes(fn.numaNode)) return false;
  if (selectors.addresses) {
    const ok = selectors.addresses.some((pattern) => globToRegExp(normaliseAddressPattern(pattern)).test(fn.address));
    if (!ok) return false;
  }
  return true;
}

/**
 * A group matches when its endpoints do: with `match: any` one endpoint
 * suffices (a GPU with its audio function), with `match: all` every endpoint
 * must match. Bridges in a group are never what a selector describes.
 */
export function groupMatches(group: IommuGroup, selectors: Selectors): boolean {
  const endpoints = group.functions.filter((fn) => !fn.isBridge);
  if (endpoints.length === 0) return false;
  return selectors.match === 'all'
    ? endpoints.every((fn) => functionMatches(fn, selectors))
    : endpoints.some((fn) => functionMatches(fn, selectors));
}

/**
 * A group a managed resource may take: every endpoint is on vfio-pci, on no
 * driver, or on one of the allowed host drivers. Bridges are left where they
 * are, so they do not decide here (prepare checks they keep the group viable).
 */
export function managedCandidate(group: IommuGroup, allowedDrivers: readonly string[]): boolean {
  const endpoints = group.functions.filter((fn) => !fn.isBridge);
  if (endpoints.length === 0) return false;
  return endpoints.every((fn) => fn.driver === null || isVfioDriver(fn.driver) || allowedDrivers.includes(fn.driver));
}

/** Whether `resource` would offer `group`: static resources only groups offered for passthrough. */
export function candidateFor(group: IommuGroup, resource: ResourceConfig): boolean {
  if (group.vfioCandidate) return true;
  return resource.binding?.mode === 'managed' && managedCandidate(group, resource.binding.allowedDrivers ?? []);
}

/**
 * Static resources take groups offered for passthrough (bound to VFIO or with
 * a /dev/vfio node); managed resources also groups still on allowed host drivers.
 */
export function selectGroups(topology: Topology, resources: readonly ResourceConfig[]): Selection {
  const byResource = new Map<string, IommuGroup[]>(resources.map((r) => [r.name, []]));
  const conflicts: SelectionConflict[] = [];
  const ids = [...topology.groups.keys()].sort((a, b) => a - b);
  for (const id of ids) {
    const group = topology.groups.get(id)!;
    const matched = resources.filter((r) => candidateFor(group, r) && groupMatches(group, r.selectors)).map((r) => r.name);
    if (matched.length === 1) byResource.get(matched[0]!)!.push(group);
    else if (matched.length > 1) conflicts.push({ group: id, resources: matched });
  }
  return { byResource, conflicts };
}
