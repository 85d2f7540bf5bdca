// Slots: the bookkeeping of one group set of one resource (its per-allocation directories, its
// preparation and where that stands), the table that finds them by group set and by group, and
// the steps of their lifecycle that do not depend on who asked (release, removal, whether a pod
// still holds them). Work on one slot is serialised.
import { rm } from 'node:fs/promises';
import type { Logger } from '../log.js';
import type { ResourceConfig } from '../config/schema.js';
import { groupSetKey } from './allocation-record.js';
import type { HandoffPayload } from './payload.js';
import type { HandoffEndpoint } from './server.js';

/** The subset of a PodResources listing the manager needs. */
export interface DevicesInUse {
  /** When the listing was requested (ms since epoch). */
  takenAtMs: number;
  /** resource name -> device IDs held by some container. */
  byResource: ReadonlyMap<string, ReadonlySet<string>>;
  /**
   * resource name -> the device ID sets held by single containers, each as
   * sorted numeric IDs joined by ",". When given, a group set is held only if
   * one container holds exactly it; without it, if every one of its groups is held.
   */
  groupSets?: ReadonlyMap<string, ReadonlySet<string>>;
}

export type SlotState = 'allocated' | 'preparing' | 'ready' | 'claiming' | 'claimed' | 'released' | 'failed';

export interface AllocationRecord {
  id: string;
  /** The per-allocation directory (the record, never mounted). */
  dir: string;
  /** Its `sock/` subdirectory: the only part the container sees (read-only). */
  socketDir: string;
  createdMs: number;
  endpoint: HandoffEndpoint | null;
}

export interface Slot {
  key: string;
  resourceName: string;
  resource: ResourceConfig | null;
  groups: number[];
  allocations: AllocationRecord[];
  state: SlotState;
  payload: HandoffPayload | null;
  reason: string;
  timer: NodeJS.Timeout | null;
  /** Last Allocate or PreStartContainer (ms). */
  touchedMs: number;
  /** Serialises prepare, release and removal of this slot. */
  queue: Promise<void>;
  claiming: Promise<void> | null;
  claims: number;
}

export interface SlotStatus {
  key: string;
  resource: string;
  groups: number[];
  state: SlotState;
  reason: string;
  /** The per-allocation directories (records; never mounted). */
  dirs: string[];
  /** Their `sock/` subdirectories, the mounted part. */
  socketDirs: string[];
  sockets: string[];
  claims: number;
}

export class SlotTable {
  private readonly slots = new Map<string, Slot>();
  /** IOMMU group -> the slots whose group set contains it (a group is one kernel object, whatever the resource). */
  private readonly byGroup = new Map<number, Set<Slot>>();

  constructor(private readonly now: () => number) {}

  get(key: string): Slot | undefined {
    return this.slots.get(key);
  }

  has(key: string): boolean {
    return this.slots.has(key);
  }

  all(): Slot[] {
    return [...this.slots.values()];
  }

  slotFor(resourceName: string, groups: readonly number[], resource: ResourceConfig | null): Slot {
    const key = groupSetKey(resourceName, groups);
    let slot = this.slots.get(key);
    if (!slot) {
      slot = {
        key,
        resourceName,
        resource,
        groups: [...groups].sort((a, b) => a - b),
        allocations: [],
        state: 'allocated',
        payload: null,
        reason: '',
        timer: null,
        touchedMs: this.now(),
        queue: Promise.resolve(),
        claiming: null,
        claims: 0,
      };
      this.register(slot);
    }
    if (resource) slot.resource = resource;
    return slot;
  }

  register(slot: Slot): void {
    this.slots.set(slot.key, slot);
    for (const g of slot.groups) {
      let set = this.byGroup.get(g);
      if (!set) this.byGroup.set(g, (set = new Set()));
      set.add(slot);
    }
  }

  unregister(slot: Slot): void {
    if (this.slots.get(slot.key) === slot) this.slots.delete(slot.key);
    for (const g of slot.groups) {
      const set = this.byGroup.get(g);
      set?.delete(slot);
      if (set?.size === 0) this.byGroup.delete(g);
    }
  }

  /** Other slots sharing a group with `slot`. */
  overlapping(slot: Slot): Slot[] {
    const found = new Set<Slot>();
    for (const g of slot.groups) for (const other of this.byGroup.get(g) ?? []) if (other !== slot) found.add(other);
    return [...found];
  }

  status(): SlotStatus[] {
    return this.all().map((s) => ({
      key: s.key,
      resource: s.resourceName,
      groups: s.groups,
      state: s.state,
      reason: s.reason,
      dirs: s.allocations.map((a) => a.dir),
      socketDirs: s.allocations.map((a) => a.socketDir),
      sockets: s.allocations.filter((a) => a.endpoint?.listening).map((a) => a.endpoint!.socketPath),
      claims: s.claims,
    }));
  }

  /** Waits until every slot's queued work is done (tests). */
  async idle(): Promise<void> {
    await Promise.all(this.all().map((s) => s.queue));
  }
}

/** Runs `run` after the slot's earlier work; a failure does not stop the work queued after it. */
export function serial<T>(slot: Slot, run: () => Promise<T>): Promise<T> {
  const result = slot.queue.then(run);
  slot.queue = result.then(
    () => undefined,
    () => undefined,
  );
  return result;
}

/** Releases an unclaimed preparation; the sockets stay and answer PVDP_HANDOFF_RELEASED. Call inside serial(). */
export async function releasePayload(slot: Slot, reason: string, logger: Logger): Promise<void> {
  if (slot.claiming) await slot.claiming;
  if (slot.timer) clearTimeout(slot.timer);
  slot.timer = null;
  const payload = slot.payload;
  slot.payload = null;
  if (slot.state === 'ready' || slot.state === 'preparing') {
    slot.state = 'released';
    slot.reason = reason;
  }
  if (!payload) return;
  logger.info({ resource: slot.resourceName, groups: slot.groups, reason }, 'Released an unclaimed handoff');
  try {
    await payload.release();
  } catch (err) {
    logger.error({ key: slot.key, err: (err as Error).message }, 'Releasing an unclaimed handoff failed');
  }
}

export async function removeAllocation(a: AllocationRecord): Promise<void> {
  await a.endpoint?.close();
  a.endpoint = null;
  await rm(a.dir, { recursive: true, force: true });
}

/** Whether the listing shows a container holding exactly this slot's group set. */
export function heldBy(slot: Slot, inUse: DevicesInUse): boolean {
  if (inUse.groupSets) return inUse.groupSets.get(slot.resourceName)?.has(slot.groups.join(',')) ?? false;
  const held = inUse.byResource.get(slot.resourceName);
  return slot.groups.every((g) => held?.has(String(g)));
}
