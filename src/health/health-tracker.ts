// Health that remembers: the rules of group-health.ts on the current state,
// plus PCIe AER fatal errors, which are counters. A rise marks the group
// Unhealthy; it turns Healthy again after a quiet period with no new fatal
// error (EEH has by then reset the PE on POWER, and its state is checked too).
import type { Logger } from '../log.js';
import type { IommuGroup } from '../topology/types.js';
import { groupHealth, type GroupHealth } from './group-health.js';

export interface HealthTrackerOptions {
  /** How long a group stays Unhealthy after its last AER fatal error. Default 60 s. */
  aerQuietMs?: number;
  now?: () => number;
  /** Where a group's change of health is logged, once per change (with its reason). */
  logger?: Logger;
}

interface AerState {
  /** Last count seen per function. */
  counts: Map<string, number>;
  lastRiseAt: number | null;
  lastRise: string | null;
}

export class HealthTracker {
  private readonly quietMs: number;
  private readonly now: () => number;
  private readonly aer = new Map<number, AerState>();
  private readonly logger: Logger | undefined;
  /** The last verdict logged per group, so each change is logged once. */
  private readonly verdicts = new Map<number, GroupHealth>();

  constructor(options: HealthTrackerOptions = {}) {
    this.quietMs = options.aerQuietMs ?? 60_000;
    this.now = options.now ?? Date.now;
    this.logger = options.logger;
  }

  /** Health of one group now; call on every topology the plugin applies. */
  evaluate(group: IommuGroup): GroupHealth {
    const base = groupHealth(group);
    const reasons = base.reason ? [base.reason] : [];
    const state = this.observeAer(group);
    if (state.lastRiseAt !== null && this.now() - state.lastRiseAt < this.quietMs) {
      reasons.push(`${state.lastRise}; Healthy again ${Math.round(this.quietMs / 1000)} s after the last fatal error`);
    }
    const verdict: GroupHealth = reasons.length === 0 ? { healthy: true } : { healthy: false, reason: reasons.join('; ') };
    this.logChange(group.id, verdict);
    return verdict;
  }

  private logChange(id: number, verdict: GroupHealth): void {
    const before = this.verdicts.get(id);
    if (before !== undefined && before.healthy === verdict.healthy && before.reason === verdict.reason) return;
    this.verdicts.set(id, verdict);
    if (!verdict.healthy) this.logger?.warn({ group: id, reason: verdict.reason }, 'IOMMU group is Unhealthy');
    // A group first seen healthy is the normal case and not worth a line.
    else if (before !== undefined) this.logger?.info({ group: id }, 'IOMMU group is Healthy again');
  }

  private observeAer(group: IommuGroup): AerState {
    let state = this.aer.get(group.id);
    if (!state) {
      state = { counts: new Map(), lastRiseAt: null, lastRise: null };
      this.aer.set(group.id, state);
    }
    for (const fn of group.functions) {
      if (fn.aerFatal === null || fn.aerFatal === undefined) continue;
      const before = state.counts.get(fn.address);
      state.counts.set(fn.address, fn.aerFatal);
      // The first reading is the baseline: errors from before the plugin started are history.
      if (before !== undefined && fn.aerFatal > before) {
        state.lastRiseAt = this.now();
        state.lastRise = `PCIe AER fatal errors on ${fn.address} rose from ${before} to ${fn.aerFatal}`;
      }
    }
    return state;
  }

  /** Forgets groups that are gone, so a re-plugged group starts a fresh baseline. */
  retain(ids: Iterable<number>): void {
    const keep = new Set(ids);
    for (const id of [...this.aer.keys()]) if (!keep.has(id)) this.aer.delete(id);
    for (const id of [...this.verdicts.keys()]) if (!keep.has(id)) this.verdicts.delete(id);
  }

  /** Milliseconds until the next quiet period ends (a group may turn Healthy), or null. */
  nextRecoveryInMs(): number | null {
    let next: number | null = null;
    const now = this.now();
    for (const state of this.aer.values()) {
      if (state.lastRiseAt === null) continue;
      const left = state.lastRiseAt + this.quietMs - now;
      if (left > 0 && (next === null || left < next)) next = left;
    }
    return next;
  }
}
