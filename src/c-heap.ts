// Process housekeeping: the C heap's free pages back to the kernel.
//
// glibc keeps what a burst of allocations freed (the sysfs reads of a full
// scan or a safety poll, gRPC and HTTP buffers) inside its arenas and returns
// on its own only the top of the main heap, so an idle daemon holds tens of
// MiB it no longer uses. malloc_trim(0) in the native `c_heap` addon
// (native/c-heap.cc) releases the free pages of every arena. The addon is
// loaded by path, like the uevent addon: a loader that takes the first .node
// of build/Release could pick another addon.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from './log.js';

/** The addon's surface (native/c-heap.cc). */
export interface CHeapAddon {
  /** malloc_trim(0) on libuv's pool: true when glibc returned memory to the kernel; false elsewhere. */
  trim(): Promise<boolean>;
  /** Whether trim() can do anything with this C library (glibc). */
  supported: boolean;
}

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** build/Release/c_heap.node (or Debug) of the package; null when it is not built. */
export function loadCHeapAddon(): CHeapAddon | null {
  const found = ['Release', 'Debug'].map((dir) => join(repoRoot, 'build', dir, 'c_heap.node')).find((file) => existsSync(file));
  if (found === undefined) return null;
  const addon = createRequire(import.meta.url)(found) as Partial<CHeapAddon>;
  if (typeof addon.trim !== 'function') throw new Error(`${found} is not the C heap addon`);
  return addon as CHeapAddon;
}

/** What one trim did, for the debug log. */
export interface TrimResult {
  released: boolean;
  durationMs: number;
  rssBeforeMiB: number;
  rssAfterMiB: number;
}

export interface CHeapTrimmerOptions {
  logger: Logger;
  /** Least time between two trims after the first two (default 30 s). */
  intervalMs?: number;
  /** The second trim after start(), once start-up garbage is collected (default 15 s: after the first safety poll). */
  settleMs?: number;
  /**
   * Whether anything ran since the last trim that may have left free memory
   * (a rescan or a poll). Without it every interval trims.
   */
  workSince?: () => number;
  /** The addon; default: the package's build. Null: trimming is off. */
  addon?: CHeapAddon | null;
}

const MiB = 2 ** 20;

/**
 * Trims the C heap now (after start-up discovery) and then at most once per
 * interval, only when work was done since the last trim. The timer is unref'd:
 * it never keeps the process alive; stop() clears it.
 */
export class CHeapTrimmer {
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #settleMs: number;
  readonly #workSince: (() => number) | undefined;
  readonly #addon: CHeapAddon | null;
  #timer: NodeJS.Timeout | null = null;
  #settleTimer: NodeJS.Timeout | null = null;
  #lastWork = -1;
  /** A trim on its way: the next one waits for its turn instead of queueing behind it. */
  #trimming = false;

  constructor(options: CHeapTrimmerOptions) {
    this.#log = options.logger;
    this.#intervalMs = options.intervalMs ?? 30_000;
    this.#settleMs = options.settleMs ?? 15_000;
    this.#workSince = options.workSince;
    this.#addon = options.addon === undefined ? loadQuietly(this.#log) : options.addon;
  }

  /** Whether trims can do anything here (the addon loaded, glibc). */
  get active(): boolean {
    return this.#addon !== null && this.#addon.supported;
  }

  /**
   * Trims now and once more when V8 has collected the start-up garbage (its
   * ArrayBuffers hold malloc'd memory until then: measured at 1024 groups,
   * the first trim left ~106 MiB resident, the second, 15 s later, ~80; at
   * 5 s it still found ~107), then on the interval. A second start() starts over.
   */
  start(): void {
    if (!this.active) return;
    this.stop();
    void this.trimNow();
    this.#settleTimer = setTimeout(() => {
      this.#settleTimer = null;
      void this.trimNow();
    }, this.#settleMs);
    this.#settleTimer.unref();
    this.#timer = setInterval(() => this.#tick(), this.#intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    if (this.#settleTimer !== null) clearTimeout(this.#settleTimer);
    this.#timer = null;
    this.#settleTimer = null;
  }

  /**
   * One malloc_trim(0) off the event loop, timed and logged at debug level;
   * null when trimming is off, a trim is already on its way, or it failed.
   */
  async trimNow(): Promise<TrimResult | null> {
    const addon = this.#addon;
    if (addon === null || !addon.supported || this.#trimming) return null;
    this.#trimming = true;
    this.#lastWork = this.#workSince?.() ?? -1;
    const rssBefore = process.memoryUsage.rss();
    const started = process.hrtime.bigint();
    let released: boolean;
    try {
      released = await addon.trim();
    } catch (err) {
      this.#log.debug({ err }, 'Trimming the C heap failed');
      return null;
    } finally {
      this.#trimming = false;
    }
    const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
    const result: TrimResult = {
      released,
      durationMs: round(durationMs, 3),
      rssBeforeMiB: round(rssBefore / MiB, 1),
      rssAfterMiB: round(process.memoryUsage.rss() / MiB, 1),
    };
    this.#log.debug(result, 'Trimmed the C heap');
    return result;
  }

  #tick(): void {
    if (this.#workSince !== undefined && this.#workSince() === this.#lastWork) return;
    void this.trimNow();
  }
}

function loadQuietly(log: Logger): CHeapAddon | null {
  try {
    const addon = loadCHeapAddon();
    if (addon === null) log.debug('The C heap addon is not built; the C heap is not trimmed');
    return addon;
  } catch (err) {
    log.debug({ err }, 'Cannot load the C heap addon; the C heap is not trimmed');
    return null;
  }
}

const round = (n: number, digits: number): number => Math.round(n * 10 ** digits) / 10 ** digits;
