// Managed binding for claims: the groups of a claim's managed resources moved from their host
// drivers to vfio-pci and back, each move visible to the front end while it runs (a group moving
// is not offered), and the last failed move of a group remembered until a move of it succeeds.
import type { Logger } from '../log.js';
import type { ResourceConfig } from '../config/schema.js';
import type { IommuGroup } from '../topology/types.js';
import { ClaimRefusal } from './claim-allocation.js';
import type { CheckpointClaim, GroupRebinding, OriginalBinding } from './checkpoint.js';

/**
 * Managed binding: moving a group's endpoints between their host drivers and
 * vfio-pci. Both moves wait (bounded) until they are done, and `take` gives
 * everything back itself when it fails.
 */
export interface ManagedBinding {
  /** The group's functions and drivers now, and what stops taking it (empty when nothing does). */
  inspect(group: number, allowedDrivers: readonly string[]): Promise<{ functions: OriginalBinding[]; blockers: string[] }>;
  take(group: number, original: readonly OriginalBinding[], timeoutMs: number): Promise<void>;
  giveBack(group: number, original: readonly OriginalBinding[], timeoutMs: number): Promise<void>;
}

/** What the front end hears of rebindings: to republish, to raise an Event. */
export interface RebindingListener {
  /** A group started or finished moving, or a failure was recorded or cleared. */
  changed(): void;
  /** Moving a group failed; it may be left on the wrong driver. */
  failed(group: number, resource: string, message: string): void;
}

/** Groups moving between drivers now, and groups whose last move failed (with why). */
export interface RebindingState {
  moving: ReadonlyMap<number, 'taking' | 'givingBack'>;
  failed: ReadonlyMap<number, string>;
}

/** The moves of the groups of claims' managed resources. */
export class ClaimRebinding {
  private readonly moving = new Map<number, 'taking' | 'givingBack'>();
  private readonly failures = new Map<number, { direction: 'taking' | 'givingBack'; message: string }>();

  /** Without `binding` a claim for a managed resource is refused. */
  constructor(
    private readonly binding: ManagedBinding | undefined,
    private readonly listener: RebindingListener | undefined,
    private readonly logger: Logger,
  ) {}

  /** Groups moving between drivers, and groups whose last move failed. */
  state(): RebindingState {
    return { moving: new Map(this.moving), failed: new Map([...this.failures].map(([g, f]) => [g, f.message])) };
  }

  /**
   * For the managed resources of a claim: each group's functions as they are
   * now, after checking that nothing stops taking them. Refuses, naming the
   * device and what is in use, before anything is written. `otherClaims` gives
   * the checkpoint's entries of every other claim as they are now.
   */
  async plan(
    sets: Iterable<{ resource: ResourceConfig; groups: IommuGroup[] }>,
    perDevice: readonly { deviceName: string; group: IommuGroup }[],
    otherClaims: () => Iterable<CheckpointClaim>,
  ): Promise<GroupRebinding[]> {
    const out: GroupRebinding[] = [];
    for (const set of sets) {
      const binding = set.resource.binding;
      if (binding?.mode !== 'managed') continue;
      const managed = this.binding;
      if (!managed) throw new Error(`resource ${set.resource.name} uses managed binding, which is not set up on this node`);
      for (const group of set.groups) {
        const device = `device ${perDevice.find((d) => d.group.id === group.id)?.deviceName ?? `group-${group.id}`} (IOMMU group ${group.id})`;
        if (this.moving.has(group.id)) {
          throw new ClaimRefusal(`${device} is moving between drivers for another claim; the kubelet will retry`);
        }
        // A claim that could not give the group back yet would move it away from under this one when it retries.
        const holder = [...otherClaims()].find((e) => e.bindings?.some((b) => b.group === group.id));
        if (holder) {
          throw new ClaimRefusal(`${device} still belongs to ResourceClaim ${holder.namespace}/${holder.name} (${holder.state}), whose groups are not all back on their host drivers; the kubelet will retry`);
        }
        const seen = await managed.inspect(group.id, binding.allowedDrivers ?? []);
        if (seen.blockers.length > 0) {
          throw new ClaimRefusal(`${device} cannot be taken from the host: ${seen.blockers.join('; ')}`);
        }
        out.push({ resource: set.resource.name, group: group.id, timeoutMs: Math.round(binding.timeoutSeconds * 1000), functions: seen.functions });
      }
    }
    return out;
  }

  /** One move of one group, visible to the front end while it runs; a failure is recorded and reported. */
  async move(rebinding: GroupRebinding, direction: 'taking' | 'givingBack'): Promise<void> {
    const managed = this.binding;
    if (!managed) throw new Error(`managed binding is not set up on this node; IOMMU group ${rebinding.group} cannot be moved`);
    this.moving.set(rebinding.group, direction);
    this.listener?.changed();
    try {
      if (direction === 'taking') await managed.take(rebinding.group, rebinding.functions, rebinding.timeoutMs);
      else await managed.giveBack(rebinding.group, rebinding.functions, rebinding.timeoutMs);
      // A group that could not be taken keeps its taint after the rollback: the next claim would fail the same way.
      if (direction === 'taking' || this.failures.get(rebinding.group)?.direction === 'givingBack') this.failures.delete(rebinding.group);
    } catch (err) {
      const message = (err as Error).message;
      this.failures.set(rebinding.group, { direction, message });
      this.logger.error({ group: rebinding.group, resource: rebinding.resource, direction, err: message }, 'Moving an IOMMU group between drivers failed');
      this.listener?.failed(rebinding.group, rebinding.resource, message);
      throw err;
    } finally {
      this.moving.delete(rebinding.group);
      this.listener?.changed();
    }
  }

  /** Gives every group back (in the order given); returns the ones that could not be. */
  async giveBackAll(rebindings: readonly GroupRebinding[]): Promise<{ rebinding: GroupRebinding; message: string }[]> {
    const failed: { rebinding: GroupRebinding; message: string }[] = [];
    for (const rebinding of rebindings) {
      await this.move(rebinding, 'givingBack').catch((err: unknown) => failed.push({ rebinding, message: (err as Error).message }));
    }
    return failed;
  }
}
