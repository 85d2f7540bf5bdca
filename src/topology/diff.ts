// Compare two scans group by group, so consumers re-advertise only what moved.
import type { IommuGroup, Topology, TopologyChange } from './types.js';

/** Structural equality for plain data (objects, arrays, primitives). */
function deepEqual(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((v, i) => deepEqual(v, b[i]));
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  const rb = b as Record<string, unknown>;
  const ra = a as Record<string, unknown>;
  return ka.every((k) => Object.prototype.hasOwnProperty.call(rb, k) && deepEqual(ra[k], rb[k]));
}

export function groupsEqual(a: IommuGroup, b: IommuGroup): boolean {
  return deepEqual(a, b);
}

/** Groups added, removed and changed (any field, deep) from `prev` to `next`; ids ascending. */
export function diffTopologies(prev: Topology, next: Topology): TopologyChange {
  const added: number[] = [];
  const removed: number[] = [];
  const changed: number[] = [];
  for (const [id, g] of next.groups) {
    const old = prev.groups.get(id);
    if (old === undefined) added.push(id);
    else if (!groupsEqual(old, g)) changed.push(id);
  }
  for (const id of prev.groups.keys()) if (!next.groups.has(id)) removed.push(id);
  const asc = (x: number, y: number): number => x - y;
  const change: TopologyChange = { added: added.sort(asc), removed: removed.sort(asc), changed: changed.sort(asc), topology: next };
  if (prev.containerNode !== next.containerNode) change.containerNodeChanged = true;
  return change;
}

/** True when the change carries anything a consumer must act on. */
export function isEmptyChange(change: TopologyChange): boolean {
  return change.added.length === 0 && change.removed.length === 0 && change.changed.length === 0 && change.containerNodeChanged !== true;
}

/** An empty topology, before the first scan. */
export function emptyTopology(): Topology {
  return { groups: new Map(), containerNode: false, issues: [] };
}
