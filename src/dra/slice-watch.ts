// The ResourceSlice publisher's watch on its pool: opened from the
// resourceVersion of the last list, spread in length so many nodes do not
// reconnect together, restarted at once after a watch that lived and with a
// backoff after quick failures; whatever a restart may have missed is listed
// first (the publisher's next run). What an event means is the writes' call.
import type { Logger } from '../log.js';
import { watchResourceSlices, type SliceApi, type WatchEvent } from './slice-api.js';

export interface SliceWatchOptions {
  api: SliceApi;
  logger: Logger;
  fieldSelector: string;
  requestTimeoutMs: number;
  random: () => number;
  /** The retry delay after this many quick failures in a row. */
  backoffDelay: (failures: number) => number;
  stopped: () => boolean;
  /** An event of the pool arrived (bookmarks are not passed on). */
  onEvent: (event: WatchEvent) => void;
  /** The watch restarts: the caller lists (catching up on what it missed), then opens it again. */
  restart: () => void;
}

export class SliceWatch {
  /** resourceVersion to watch from: of the last list, then of each event seen. */
  fromVersion: string | undefined;
  /** Events received so far (bookmarks included). */
  events = 0;
  /** Set while a watch request is open (or being opened). */
  private abort: AbortController | null = null;
  private timer: NodeJS.Timeout | null = null;
  private failures = 0;

  constructor(private readonly options: SliceWatchOptions) {}

  get watching(): boolean {
    return this.abort !== null;
  }

  /** 1 while a restart waits. */
  get timers(): number {
    return this.timer ? 1 : 0;
  }

  /** Open, or waiting to open again. */
  get active(): boolean {
    return this.abort !== null || this.timer !== null;
  }

  start(): void {
    const o = this.options;
    if (o.stopped() || this.active) return;
    const clients = o.api.clients;
    const cluster = clients?.kc.getCurrentCluster();
    if (!clients || !cluster) return;
    const abort = new AbortController();
    this.abort = abort;
    const startedAt = Date.now();
    // The server ends the watch after timeoutSeconds; spread them so many nodes do not reconnect together.
    const timeoutSeconds = 240 + Math.floor(o.random() * 120);
    watchResourceSlices(
      { clients, server: cluster.server, fieldSelector: o.fieldSelector, fromVersion: this.fromVersion, timeoutSeconds, requestTimeoutMs: o.requestTimeoutMs, abort },
      {
        stopped: o.stopped,
        onEvent: (event) => this.received(event),
        onError: () => {
          // 410 Gone: our resourceVersion is too old; list again and watch from there.
          this.fromVersion = undefined;
        },
        onEnd: (err) => {
          if (this.abort === abort) this.abort = null;
          abort.abort();
          if (o.stopped()) return;
          // A watch that lived (the server ends each one after timeoutSeconds) is restarted at once; quick failures back off.
          this.ended(err, Date.now() - startedAt >= 1000);
        },
      },
    );
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const abort = this.abort;
    this.abort = null;
    abort?.abort();
  }

  private received(event: WatchEvent): void {
    this.events += 1;
    const resourceVersion = (event.object?.['metadata'] as { resourceVersion?: string } | undefined)?.resourceVersion;
    if (resourceVersion) this.fromVersion = resourceVersion;
    if (event.object) this.options.onEvent(event);
  }

  /** Restarts after a backoff; a watch that lived and delivered resets it. */
  private ended(err: Error | undefined, healthy: boolean): void {
    if (healthy) this.failures = 0;
    else this.failures += 1;
    const delay = this.failures === 0 ? 0 : this.options.backoffDelay(this.failures);
    if (err && this.failures === 1) {
      this.options.logger.info({ err: err.message, retryInMs: delay }, 'ResourceSlice watch ended; watching again after a list');
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this.options.restart();
    }, delay);
    this.timer.unref?.();
  }
}
