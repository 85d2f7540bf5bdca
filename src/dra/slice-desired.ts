// What the ResourceSlice publisher wants on the server: the pool's devices as
// slices at generation 0, built once per change and checked, with the content
// key that says whether anything changed. Building 1024 devices takes tens of
// milliseconds, so a burst of inventory changes is built once: the first
// change of a quiet spell is built at once (a new taint, or a device that
// cannot be described, shows without delay), later ones within the window are
// built together when it closes, or earlier when a publish needs them.
import type { Logger } from '../log.js';
import { buildSlices, type PublishedDevice, type ResourceSlice, type SliceContext } from './slices.js';

export interface DesiredPoolOptions {
  /** The slice context at generation 0, with the Node uid known now. */
  context: () => SliceContext;
  logger: Logger;
  /** Changes within this window of the last build are built together. */
  windowMs: number;
  /** A build gave slices different from the ones before. */
  changed: () => void;
  /** A build failed; the previous slices stay. */
  refused: (message: string) => void;
}

export class DesiredPool {
  /** The devices of the last build that succeeded; null before the first. */
  devices: PublishedDevice[] | null = null;
  /** Content key of the slices built from them; null before the first. */
  key: string | null = null;
  private base: ResourceSlice[] = [];
  private baseNodeUid: string | undefined;
  /** The last device list given to update(), as JSON: the same list again is no change. */
  private input: string | null = null;
  /** A list waiting for the window to close. */
  private pending: PublishedDevice[] | null = null;
  private timer: NodeJS.Timeout | null = null;
  private lastBuildAt = Number.NEGATIVE_INFINITY;
  private lastError: string | undefined;

  constructor(private readonly options: DesiredPoolOptions) {}

  /** True while a change waits to be built. */
  get waiting(): boolean {
    return this.pending !== null;
  }

  /** 1 while the window's timer runs. */
  get timers(): number {
    return this.timer ? 1 : 0;
  }

  /** The pool's devices now; the same list again changes nothing and arms nothing. */
  update(devices: PublishedDevice[]): void {
    const input = JSON.stringify(devices);
    if (input === this.input) return;
    this.input = input;
    const copy = structuredClone(devices);
    const sinceBuild = Date.now() - this.lastBuildAt;
    if (!this.timer && sinceBuild >= this.options.windowMs) {
      this.build(copy, true);
      return;
    }
    this.pending = copy;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush(true);
    }, Math.max(0, this.options.windowMs - sinceBuild));
    this.timer.unref?.();
  }

  /** Builds a waiting change now; `notify`: call changed() when the slices changed (a publish about to run needs no call). */
  flush(notify: boolean): void {
    this.cancel();
    const pending = this.pending;
    this.pending = null;
    if (pending) this.build(pending, notify);
  }

  /** Drops the window's timer (the publisher stopped, or a flush). */
  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** The slices at generation 0; built again when the Node's uid became known since (it is part of the content). */
  current(nodeUid: string | undefined): { base: ResourceSlice[]; key: string } | null {
    if (this.devices === null) return null;
    if (this.baseNodeUid !== nodeUid) {
      this.base = buildSlices(this.options.context(), this.devices);
      this.baseNodeUid = nodeUid;
      this.key = JSON.stringify(this.base);
    }
    return { base: this.base, key: this.key! };
  }

  /** The desired slices at a generation. */
  atGeneration(generation: number): ResourceSlice[] {
    return this.base.map((s) => ({ ...s, spec: { ...s.spec, pool: { ...s.spec.pool, generation } } }));
  }

  private build(devices: PublishedDevice[], notify: boolean): void {
    this.lastBuildAt = Date.now();
    const context = this.options.context();
    let base: ResourceSlice[];
    try {
      base = buildSlices(context, devices);
    } catch (err) {
      const message = (err as Error).message;
      this.options.refused(message);
      if (message !== this.lastError) {
        this.options.logger.error({ err: message }, 'Could not describe the devices as ResourceSlices; keeping the previous ones');
        this.lastError = message;
      }
      return;
    }
    this.lastError = undefined;
    const key = JSON.stringify(base);
    if (key === this.key) return;
    this.devices = devices;
    this.base = base;
    this.baseNodeUid = context.nodeUid;
    this.key = key;
    if (notify) this.options.changed();
  }
}
