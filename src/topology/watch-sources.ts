// The topology watcher's event sources: inotify on /dev/vfio and on
// /sys/kernel/iommu_groups (re-armed when a directory is recreated), the
// kernel uevent source (netlink on the kernel's sysfs, none on a test tree),
// and what a batch of uevents asks to rescan. The watcher decides when.
import { watch, type FSWatcher } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Logger } from '../log.js';
import { iommuGroupsDir, mapLimit, vfioDevDir } from './scan.js';
import type { DiscoveryRoots, IommuGroup } from './types.js';
import { NetlinkUeventSource, isRealSysfs, targetOfUevent, type Uevent, type UeventLossError, type UeventSource } from './uevents.js';

export type WatchName = 'devVfio' | 'iommuGroups';

interface ArmedWatch {
  watcher: FSWatcher;
  /** Inode of the watched directory: a recreated directory needs a new watch. */
  ino: number;
}

/** inotify on /dev/vfio and the IOMMU groups directory. */
export class DirWatches {
  readonly #watches = new Map<WatchName, ArmedWatch>();

  constructor(
    private readonly roots: DiscoveryRoots,
    private readonly log: Logger,
    private readonly stopped: () => boolean,
    private readonly onEvent: (source: WatchName, filename: string | null) => void,
  ) {}

  /** (Re)arms both watches; a missing directory is retried at the next call. */
  async armAll(): Promise<void> {
    await this.#arm('devVfio', vfioDevDir(this.roots));
    await this.#arm('iommuGroups', iommuGroupsDir(this.roots));
  }

  disarmAll(): void {
    for (const name of [...this.#watches.keys()]) this.#disarm(name);
  }

  async #arm(name: WatchName, dir: string): Promise<void> {
    let ino: number;
    try {
      ino = (await stat(dir)).ino;
    } catch {
      if (this.#watches.has(name)) {
        this.log.debug({ dir }, 'Watched directory vanished; watching again when it returns');
        this.#disarm(name);
      }
      return;
    }
    const armed = this.#watches.get(name);
    if (armed !== undefined && armed.ino === ino) return;
    if (armed !== undefined) this.#disarm(name);
    if (this.stopped()) return;
    try {
      const watcher = watch(dir, { persistent: true }, (_event, filename) => {
        if (!this.stopped()) this.onEvent(name, filename === null ? null : filename.toString());
      });
      watcher.on('error', (err) => {
        this.log.debug({ err, dir }, 'Directory watch failed; the poll takes over');
        this.#disarm(name);
      });
      this.#watches.set(name, { watcher, ino });
      this.log.debug({ dir }, 'Watching directory');
    } catch (err) {
      this.log.debug({ err, dir }, 'Cannot watch directory yet; the poll takes over');
    }
  }

  #disarm(name: WatchName): void {
    const armed = this.#watches.get(name);
    if (armed === undefined) return;
    this.#watches.delete(name);
    try {
      armed.watcher.close();
    } catch {
      // Already closed.
    }
  }
}

/**
 * Starts the uevent source: the given one, or (when undefined) netlink on the
 * kernel's sysfs and none on a test tree. Null when there is none or it could
 * not start (said once: the poll still finds every change, only later).
 */
export async function startUeventSource(
  option: UeventSource | null | undefined,
  roots: DiscoveryRoots,
  log: Logger,
  pollIntervalMs: number,
  stopped: () => boolean,
  onEvent: (event: Uevent) => void,
  onLost: (err: UeventLossError) => void,
): Promise<UeventSource | null> {
  const source = option === undefined ? ((await isRealSysfs(roots)) ? new NetlinkUeventSource({ logger: log }) : null) : option;
  if (source === null || stopped()) return null;
  try {
    source.start(onEvent, onLost);
    log.debug({ source: source.kind }, 'Listening to kernel uevents');
    return source;
  } catch (err) {
    log.warn({ err, source: source.kind, pollIntervalMs }, 'Kernel uevents are unavailable; driver and EEH changes are found by the safety poll only');
    return null;
  }
}

export function stopUeventSource(source: UeventSource | null, log: Logger): void {
  if (source === null) return;
  try {
    source.stop();
  } catch (err) {
    log.debug({ err }, 'Stopping the uevent source failed');
  }
}

/** What a batch of uevents asks for: these groups, the container node, or a pass over every group. */
export interface UeventTargets {
  groups: Set<number>;
  container: boolean;
  all: boolean;
}

export async function targetsOfUevents(
  events: Uevent[],
  groups: ReadonlyMap<number, IommuGroup>,
  roots: DiscoveryRoots,
  concurrency: number,
  log: Logger,
): Promise<UeventTargets> {
  const out: UeventTargets = { groups: new Set(), container: false, all: false };
  if (events.length === 0) return out;
  let byFunction: Map<string, number[]> | null = null;
  const groupsOfFunction = (address: string): number[] => {
    if (byFunction === null) {
      byFunction = new Map();
      for (const g of groups.values()) {
        for (const f of g.functions) byFunction.set(f.address, [...(byFunction.get(f.address) ?? []), g.id]);
      }
    }
    return byFunction.get(address) ?? [];
  };
  const targets = await mapLimit(events, concurrency, (e) => targetOfUevent(e, { roots, groupsOfFunction }));
  targets.forEach((t, i) => {
    const e = events[i] as Uevent;
    if (t.kind === 'none') return;
    log.debug({ action: e.action, subsystem: e.subsystem, devpath: e.devpath, target: t }, 'Kernel uevent');
    if (t.kind === 'groups') for (const id of t.groups) out.groups.add(id);
    else if (t.kind === 'container') out.container = true;
    else out.all = true;
  });
  return out;
}
