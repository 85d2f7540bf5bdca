// One preparation per group at a time. A VFIO group opens once, so a second
// PreStartContainer for a group still being prepared (the kubelet retrying
// after its 30 s deadline, an init container racing the app) would fail with
// EBUSY against the plugin itself. Identical requests in flight share one
// result; overlapping ones wait their turn.
import type { Preparer } from './types.js';

export function serializeByGroup(preparer: Preparer): Preparer {
  const inFlight = new Map<string, Promise<void>>();
  const busy = new Map<number, Promise<void>>();
  return async (resource, groups) => {
    const key = `${resource.name}\u0000${groups
      .map((g) => g.id)
      .sort((a, b) => a - b)
      .join(',')}`;
    const same = inFlight.get(key);
    if (same) return same;
    const before = groups.map((g) => busy.get(g.id)).filter((p): p is Promise<void> => p !== undefined);
    const run = Promise.allSettled(before).then(() => preparer(resource, groups));
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    inFlight.set(key, run);
    for (const g of groups) busy.set(g.id, settled);
    try {
      await run;
    } finally {
      if (inFlight.get(key) === run) inFlight.delete(key);
      for (const g of groups) if (busy.get(g.id) === settled) busy.delete(g.id);
    }
  };
}
