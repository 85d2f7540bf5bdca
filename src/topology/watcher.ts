// Keeps the topology current without a restart. Four sources, cheapest first:
// kernel uevents (driver bind/unbind, hot-plug, EEH recovery: each names a PCI
// function or /dev/vfio/N, so only that group is rescanned; see uevents.ts),
// inotify on /dev/vfio (devtmpfs reports nodes coming and going, named by
// group number), inotify on /sys/kernel/iommu_groups (works on test trees; real
// sysfs sends nothing), and a safety poll that fingerprints every group and
// rescans only the ones whose fingerprint moved. All scans run one at a time
// through a queue, so an event and a poll never interleave their updates.
//
// This module is the schedule and the rescan decisions; the event sources are
// in watch-sources.ts.
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { diffTopologies, emptyTopology, isEmptyChange } from './diff.js';
import { isGroupNumber } from './parse.js';
import { discoverGroup, discoverTopology, fingerprintGroups, groupFingerprint, listGroupIds, listVfioDevNodes, vfioDevNodesOf, mapLimit, WORKER_MIN_GROUPS } from './scan.js';
import type { DiscoveryIssue, DiscoveryRoots, IommuGroup, Topology, TopologyChange } from './types.js';
import type { Uevent, UeventLossError, UeventSource } from './uevents.js';
import { DirWatches, startUeventSource, stopUeventSource, targetsOfUevents, type WatchName } from './watch-sources.js';

export interface TopologyWatcherOptions {
  /** Safety poll period; real sysfs sends no inotify events, so this bounds how stale a driver change can be. */
  pollIntervalMs?: number;
  /**
   * Safety poll period while kernel uevents are received (they announce bind,
   * unbind, hot-plug and EEH recovery at once). Default: the larger of
   * pollIntervalMs and 60 s.
   */
  ueventPollIntervalMs?: number;
  /** Watch events arriving within this window are handled in one rescan. */
  debounceMs?: number;
  logger?: Logger;
  /** Called like a `'change'` listener. */
  onChange?: (change: TopologyChange) => void;
  /** Groups fingerprinted or scanned at once. */
  concurrency?: number;
  /** Safety polls of this many groups or more read through a reader thread (default: as full scans). */
  readerThreadMinGroups?: number;
  /**
   * Kernel uevents. Omitted: the netlink listener when the sysfs root is the
   * kernel's sysfs, none on a test tree. Null: none.
   */
  uevents?: UeventSource | null;
  /** Uevents arriving within this window are handled in one rescan (a bind comes with several). */
  ueventDebounceMs?: number;
}

/** Counters for tests and metrics. */
export interface TopologyWatcherStats {
  fullScans: number;
  polls: number;
  /** Groups rescanned individually (after a watch event or a fingerprint change). */
  groupRescans: number;
  /** Ids of the groups rescanned individually, most recent last (bounded). */
  recentRescans: number[];
  /** Kernel uevents received (parsed; every subsystem). */
  uevents: number;
  /** A uevent source is delivering. */
  ueventsActive: boolean;
}

const RECENT_LIMIT = 64;
/** Beyond this many unhandled uevents, one full fingerprint pass is cheaper than mapping each. */
const PENDING_UEVENT_LIMIT = 4096;

export class TopologyWatcher extends EventEmitter<{ change: [TopologyChange] }> {
  readonly #roots: DiscoveryRoots;
  readonly #pollIntervalMs: number;
  readonly #ueventPollIntervalMs: number;
  readonly #debounceMs: number;
  readonly #log: Logger;
  readonly #onChange: ((change: TopologyChange) => void) | undefined;
  readonly #concurrency: number;
  readonly #readerThreadMinGroups: number;
  readonly #ueventDebounceMs: number;
  /** Undefined: choose at start (netlink on real sysfs). */
  readonly #ueventOption: UeventSource | null | undefined;
  #uevents: UeventSource | null = null;

  #groups = new Map<number, IommuGroup>();
  #groupIssues = new Map<number, DiscoveryIssue[]>();
  #globalIssues: DiscoveryIssue[] = [];
  #topology: Topology = emptyTopology();
  /** Last fingerprint per group id; orphan device nodes are tracked too. */
  #fingerprints = new Map<number, string>();

  #queue: Promise<unknown> = Promise.resolve();
  #pollTimer: NodeJS.Timeout | null = null;
  #debounceTimer: NodeJS.Timeout | null = null;
  /** When the pending debounce timer fires (performance.now()). */
  #debounceDue = 0;
  #pendingUevents: Uevent[] = [];
  readonly #watches: DirWatches;
  #pendingGroups = new Set<number>();
  #pendingAll = false;
  #pendingContainer = false;
  #started = false;
  #stopped = false;
  /** Aborted by stop(): a scan in flight ends between groups instead of finishing a large node. */
  #abort = new AbortController();
  #stats: TopologyWatcherStats = { fullScans: 0, polls: 0, groupRescans: 0, recentRescans: [], uevents: 0, ueventsActive: false };

  constructor(roots: DiscoveryRoots, options: TopologyWatcherOptions = {}) {
    super();
    this.#roots = roots;
    this.#pollIntervalMs = options.pollIntervalMs ?? 5000;
    this.#ueventPollIntervalMs = options.ueventPollIntervalMs ?? Math.max(this.#pollIntervalMs, 60_000);
    this.#debounceMs = options.debounceMs ?? 50;
    this.#log = options.logger ?? silentLogger();
    this.#onChange = options.onChange;
    this.#concurrency = options.concurrency ?? 32;
    this.#readerThreadMinGroups = options.readerThreadMinGroups ?? WORKER_MIN_GROUPS;
    this.#ueventDebounceMs = options.ueventDebounceMs ?? 2;
    this.#ueventOption = options.uevents;
    this.#watches = new DirWatches(roots, this.#log, () => this.#stopped, (source, filename) => this.#onWatchEvent(source, filename));
  }

  /** First full scan, then watches and the poll. Resolves with the first topology. */
  async start(): Promise<Topology> {
    if (this.#started) return this.#topology;
    this.#started = true;
    this.#stopped = false;
    if (this.#abort.signal.aborted) this.#abort = new AbortController();
    this.#log.debug({ sysfsRoot: this.#roots.sysfsRoot }, 'First scan of the IOMMU groups');
    // Listen before the first scan: an event during the scan queues a rescan behind it.
    await this.#startUevents();
    try {
      await this.#enqueue(() => this.#fullScan(false));
    } catch (err) {
      this.#started = false;
      this.#stopUevents();
      throw err;
    }
    if (!this.#stopped) {
      await this.#watches.armAll();
      this.#schedulePoll();
    }
    return this.#topology;
  }

  /** The latest topology (empty before `start`). Each change produces a new object. */
  current(): Topology {
    return this.#topology;
  }

  stats(): TopologyWatcherStats {
    return { ...this.#stats, recentRescans: [...this.#stats.recentRescans], ueventsActive: this.#uevents !== null };
  }

  /** Full rescan now; emits `'change'` when something changed and returns the change either way. */
  refresh(): Promise<TopologyChange> {
    return this.#enqueue(() => this.#fullScan(true));
  }

  /** Release every watch and timer; resolves when any scan in flight has finished. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#started = false;
    this.#abort.abort(new Error('The topology watcher stopped'));
    if (this.#pollTimer !== null) clearTimeout(this.#pollTimer);
    if (this.#debounceTimer !== null) clearTimeout(this.#debounceTimer);
    this.#pollTimer = null;
    this.#debounceTimer = null;
    this.#watches.disarmAll();
    this.#stopUevents();
    this.#pendingUevents = [];
    this.#pendingGroups.clear();
    this.#pendingAll = false;
    await this.#queue;
    // Closed handles are freed in the loop's close phase, which follows the
    // check phase: two setImmediate turns put us after it.
    for (let i = 0; i < 2; i++) await new Promise<void>((resolve) => setImmediate(resolve));
  }

  // ---- scanning ------------------------------------------------------------

  #enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(task);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /** Fingerprint first, then scan: a change in between shows up as a stale fingerprint on the next poll. */
  async #fullScan(emit: boolean): Promise<TopologyChange> {
    const prints = await this.#fingerprintAll();
    const next = await discoverTopology(this.#roots, { logger: this.#log, concurrency: this.#concurrency, signal: this.#abort.signal });
    this.#stats.fullScans++;
    this.#fingerprints = prints;
    this.#groups = new Map(next.groups);
    this.#groupIssues = new Map();
    this.#globalIssues = [];
    for (const issue of next.issues) {
      if (issue.group === undefined) this.#globalIssues.push(issue);
      else this.#groupIssueList(issue.group).push(issue);
    }
    return this.#publish(next.containerNode, emit);
  }

  #groupIssueList(id: number): DiscoveryIssue[] {
    let list = this.#groupIssues.get(id);
    if (list === undefined) {
      list = [];
      this.#groupIssues.set(id, list);
    }
    return list;
  }

  async #fingerprintAll(): Promise<Map<number, string>> {
    const [listing, dev] = await Promise.all([listGroupIds(this.#roots), listVfioDevNodes(this.#roots)]);
    const ids = [...new Set([...listing.ids, ...dev.groups])];
    const prints = await this.#fingerprintMany(ids, dev.groups);
    const map = new Map<number, string>();
    ids.forEach((id, i) => {
      const p = prints[i];
      if (p !== undefined && p !== null) map.set(id, p);
    });
    return map;
  }

  /** Fingerprints of many groups (through a reader thread on a large node), as #fingerprint gives them. */
  async #fingerprintMany(ids: readonly number[], devGroups: ReadonlySet<number>): Promise<(string | null)[]> {
    const prints = await fingerprintGroups(this.#roots, ids, devGroups, {
      readerThreadMinGroups: this.#readerThreadMinGroups,
      concurrency: this.#concurrency,
      signal: this.#abort.signal,
      logger: this.#log,
    });
    return prints.map((p, i) => p ?? (devGroups.has(ids[i] as number) ? 'orphan-dev-node' : null));
  }

  async #fingerprint(id: number, devNode: boolean): Promise<string | null> {
    const p = await groupFingerprint(this.#roots, id, devNode);
    // A device node without a group is tracked too, so its issue comes and goes.
    return p ?? (devNode ? 'orphan-dev-node' : null);
  }

  /** Cheap check of every group; rescan only those whose fingerprint moved. */
  async #poll(): Promise<void> {
    this.#stats.polls++;
    const [listing, dev] = await Promise.all([listGroupIds(this.#roots), listVfioDevNodes(this.#roots)]);
    const ids = [...new Set([...listing.ids, ...dev.groups, ...this.#fingerprints.keys(), ...this.#groups.keys()])];
    const prints = await this.#fingerprintMany(ids, dev.groups);
    const dirty: number[] = [];
    const fresh = new Map<number, string | null>();
    ids.forEach((id, i) => {
      const p = prints[i] ?? null;
      const known = this.#fingerprints.get(id) ?? null;
      if (p !== known || (p === null && this.#groups.has(id))) {
        dirty.push(id);
        fresh.set(id, p);
      }
    });
    this.#globalIssues = listing.issues;
    await this.#rescanGroups(dirty, 'poll', fresh);
    this.#publish(dev.containerNode, true);
  }

  /** Rescan the given groups; `known` carries fingerprints already taken (before the rescan). */
  async #rescanGroups(ids: number[], reason: string, known?: Map<number, string | null>): Promise<void> {
    if (ids.length === 0) return;
    const dev = known === undefined ? await listVfioDevNodes(this.#roots) : null;
    await mapLimit(ids, this.#concurrency, async (id) => {
      const print = known?.has(id) ? (known.get(id) ?? null) : await this.#fingerprint(id, dev?.groups.has(id) ?? false);
      const { group, issues } = await discoverGroup(this.#roots, id);
      if (print === null) this.#fingerprints.delete(id);
      else this.#fingerprints.set(id, print);
      if (group === null) this.#groups.delete(id);
      else this.#groups.set(id, group);
      if (issues.length === 0) this.#groupIssues.delete(id);
      else this.#groupIssues.set(id, issues);
    });
    this.#stats.groupRescans += ids.length;
    this.#stats.recentRescans.push(...ids);
    if (this.#stats.recentRescans.length > RECENT_LIMIT) this.#stats.recentRescans.splice(0, this.#stats.recentRescans.length - RECENT_LIMIT);
    this.#log.debug({ groupIds: ids, reason }, 'Rescanned groups');
  }

  /** Build the new topology from the per-group state, diff it and tell listeners. */
  #publish(containerNode: boolean, emit: boolean): TopologyChange {
    const ids = [...this.#groups.keys()].sort((a, b) => a - b);
    const groups = new Map<number, IommuGroup>();
    for (const id of ids) groups.set(id, this.#groups.get(id) as IommuGroup);
    const issueIds = [...this.#groupIssues.keys()].sort((a, b) => a - b);
    const issues = [...this.#globalIssues, ...issueIds.flatMap((id) => this.#groupIssues.get(id) ?? [])];
    const next: Topology = { groups, containerNode, issues };
    const change = diffTopologies(this.#topology, next);
    this.#topology = next;
    if (emit && !isEmptyChange(change) && !this.#stopped) {
      this.#log.info(
        { added: change.added, removed: change.removed, changed: change.changed, containerNode },
        'Topology changed',
      );
      try {
        this.emit('change', change);
        this.#onChange?.(change);
      } catch (err) {
        this.#log.error({ err }, 'A topology change listener threw');
      }
    }
    return change;
  }

  // ---- timers and watches ---------------------------------------------------

  #schedulePoll(): void {
    if (this.#stopped) return;
    // Never two chains of polls (a stop() and start() while a poll was running).
    if (this.#pollTimer !== null) clearTimeout(this.#pollTimer);
    this.#pollTimer = setTimeout(() => {
      this.#pollTimer = null;
      this.#enqueue(async () => {
        if (this.#stopped) return;
        await this.#watches.armAll();
        await this.#poll();
      })
        .catch((err: unknown) => {
          if (!this.#stopped) this.#log.error({ err }, 'Topology poll failed; retrying at the next interval');
        })
        .finally(() => this.#schedulePoll());
      // With kernel uevents announcing changes, the safety poll only has to catch what they miss.
    }, this.#uevents !== null ? this.#ueventPollIntervalMs : this.#pollIntervalMs);
  }

  #onWatchEvent(source: WatchName, name: string | null): void {
    if (name !== null && isGroupNumber(name)) this.#pendingGroups.add(Number(name));
    // The container node changes no group: re-reading /dev/vfio is enough.
    else if (source === 'devVfio' && name === 'vfio') this.#pendingContainer = true;
    // Unnamed events or other names: let the cheap poll sort it out.
    else this.#pendingAll = true;
    this.#scheduleFlush(this.#debounceMs);
  }

  /** Flush within `delayMs`: an earlier deadline wins over a pending later one. */
  #scheduleFlush(delayMs: number): void {
    const due = performance.now() + delayMs;
    if (this.#debounceTimer !== null) {
      if (this.#debounceDue <= due) return;
      clearTimeout(this.#debounceTimer);
    }
    this.#debounceDue = due;
    this.#debounceTimer = setTimeout(() => {
      this.#debounceTimer = null;
      this.#enqueue(() => this.#flush()).catch((err: unknown) =>
        this.#log.error({ err }, 'Rescan after a watch event or uevent failed; the poll will retry'),
      );
    }, delayMs);
  }

  // ---- kernel uevents -------------------------------------------------------

  async #startUevents(): Promise<void> {
    const source = await startUeventSource(
      this.#ueventOption,
      this.#roots,
      this.#log,
      this.#pollIntervalMs,
      () => this.#stopped,
      (event) => this.#onUevent(event),
      (err) => this.#onUeventLost(err),
    );
    if (source !== null) this.#uevents = source;
  }

  #stopUevents(): void {
    const source = this.#uevents;
    this.#uevents = null;
    stopUeventSource(source, this.#log);
  }

  #onUevent(event: Uevent): void {
    if (this.#stopped) return;
    this.#stats.uevents++;
    if (this.#pendingUevents.length >= PENDING_UEVENT_LIMIT) {
      this.#pendingUevents = [];
      this.#pendingAll = true;
    } else if (!this.#pendingAll) {
      this.#pendingUevents.push(event);
    }
    this.#scheduleFlush(this.#ueventDebounceMs);
  }

  #onUeventLost(err: UeventLossError): void {
    if (this.#stopped) return;
    if (err.fatal) {
      this.#uevents = null;
      this.#log.warn({ err }, 'The kernel uevent listener stopped; the safety poll takes over');
      // The armed poll may be minutes away at the uevent period: re-arm at the plain one.
      if (this.#pollTimer !== null) {
        clearTimeout(this.#pollTimer);
        this.#pollTimer = null;
        this.#schedulePoll();
      }
    } else {
      this.#log.warn({ err }, 'Kernel uevents were lost; checking every group');
    }
    this.#pendingUevents = [];
    this.#pendingAll = true;
    this.#scheduleFlush(this.#ueventDebounceMs);
  }

  /** Turn pending uevents into pending groups (or a full pass). */
  async #mapUevents(): Promise<Set<number>> {
    const events = this.#pendingUevents;
    this.#pendingUevents = [];
    const targets = await targetsOfUevents(events, this.#groups, this.#roots, this.#concurrency, this.#log);
    if (targets.container) this.#pendingContainer = true;
    if (targets.all) this.#pendingAll = true;
    return targets.groups;
  }

  async #flush(): Promise<void> {
    if (this.#stopped) return;
    const fromUevents = await this.#mapUevents();
    if (this.#stopped) return;
    const fromWatches = this.#pendingGroups.size;
    const all = this.#pendingAll;
    const ids = [...new Set([...this.#pendingGroups, ...fromUevents])].sort((a, b) => a - b);
    const container = this.#pendingContainer;
    this.#pendingAll = false;
    this.#pendingContainer = false;
    this.#pendingGroups.clear();
    if (ids.length === 0 && !container && !all) return;
    // Named groups are rescanned even when their fingerprint did not move: a
    // uevent can report what the fingerprint does not cover.
    // A targeted event stats its own nodes; listing /dev/vfio costs a read of every group's node.
    const dev = ids.length > 0 || !all ? await vfioDevNodesOf(this.#roots, ids) : null;
    if (dev !== null && ids.length > 0) {
      const prints = new Map<number, string | null>();
      await Promise.all(ids.map(async (id) => prints.set(id, await this.#fingerprint(id, dev.groups.has(id)))));
      const reason = fromUevents.size === 0 ? 'watch' : fromWatches === 0 ? 'uevent' : 'watch,uevent';
      await this.#rescanGroups(ids, reason, prints);
    }
    // Otherwise the cheap pass over every group, which publishes itself.
    if (all) await this.#poll();
    else if (dev !== null) this.#publish(dev.containerNode, true);
  }
}
