// Keeps this node's DRA pool on the API server: the ResourceSlices that
// buildSlices describes, under deterministic names, replacing whatever an
// earlier run left. The kubelet deletes a node's slices when it starts, so a
// watch (and a periodic resync as a safety net) notices slices vanishing or
// being changed by someone else and publishes again. Like the node reporter,
// the API server is a best-effort audience here: nothing throws into the
// caller, failures back off exponentially with jitter and are logged once per
// change of state. @kubernetes/client-node is loaded on first use only.
//
// This module is the worker and its state; what is wanted is in
// slice-desired.ts, the writes and their order in slice-writes.ts, the watch
// in slice-watch.ts and the requests in slice-api.ts.
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ApiErrorKind, ClassifiedApiError } from '../report/api-errors.js';
import { RequestFailure, SliceApi, Stopped, type Clients } from './slice-api.js';
import { DesiredPool } from './slice-desired.js';
import { SliceWatch } from './slice-watch.js';
import { SliceWrites } from './slice-writes.js';
import { buildSlices, type PublishedDevice, type SliceContext } from './slices.js';

export type PublisherState = 'starting' | 'published' | 'retrying' | 'stopped';

export interface PublisherStatus {
  state: PublisherState;
  /** Pool generation of the last publish; 0 before the first. */
  generation: number;
  /** Slices and devices of the last publish. */
  slices: number;
  devices: number;
  /** Why the last attempt failed, or why the last update could not be taken; cleared by a success. */
  lastError?: string;
}

export interface SlicePublisherOptions {
  /** The DRA driver name (`spec.driver`). */
  driver: string;
  /** This node's name (the downward API's spec.nodeName); also the pool's name. */
  nodeName: string;
  platform: 'powernv' | 'pseries' | null;
  /** A KubeConfig, or a factory called on first use (and again after it failed). */
  kubeConfig: KubeConfig | (() => Promise<KubeConfig> | KubeConfig);
  logger?: Logger;
  /** First retry delay after a failure; default 500 ms. */
  retryMinMs?: number;
  /** Largest retry delay; default 30 000 ms. */
  retryMaxMs?: number;
  /** Lists and compares this often even when the watch saw nothing; 0 turns it off. Default 60 000 ms. */
  resyncMs?: number;
  /** Deadline of each request (of a watch: until the server answers); default 10 000 ms. */
  requestTimeoutMs?: number;
  /** Updates (and watch events) within this window are built and go out as one publish; default 25 ms. */
  coalesceMs?: number;
  /** Random numbers in [0, 1) for the jitter; tests pin it. */
  random?: () => number;
}

/** What the publisher still holds; all zero after stop(). For tests and diagnostics. */
export interface PublisherActivity {
  timers: number;
  watching: boolean;
  requests: number;
  running: boolean;
  /** Watch events received so far (bookmarks included). */
  watchEvents: number;
}

const STATE_MESSAGES: Record<ApiErrorKind, string> = {
  unreachable: 'Kubernetes API unreachable',
  timeout: 'Kubernetes API did not answer in time',
  unauthorized: 'Kubernetes API rejected our credentials',
  forbidden: 'Kubernetes API forbids publishing ResourceSlices; check the ClusterRole (resourceslices get/list/watch/create/update/delete, nodes get)',
  notFound: 'Kubernetes API does not serve resource.k8s.io/v1 ResourceSlices; DRA needs Kubernetes 1.34 or newer',
  conflict: 'Kubernetes API kept reporting conflicts on our ResourceSlices',
  throttled: 'Kubernetes API is throttling us',
  serverError: 'Kubernetes API failed with a server error',
  clientError: 'Kubernetes API refused a ResourceSlice',
  config: 'Kubernetes API configuration is unusable',
};

export class SlicePublisher {
  private readonly driver: string;
  private readonly nodeName: string;
  private readonly platform: 'powernv' | 'pseries' | null;
  private readonly logger: Logger;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  private readonly resyncMs: number;
  private readonly coalesceMs: number;
  private readonly random: () => number;
  private readonly api: SliceApi;
  private readonly desired: DesiredPool;
  private readonly writes: SliceWrites;
  private readonly watch: SliceWatch;

  /** Key of what the server holds as far as we know; null when that is in doubt. */
  private publishedKey: string | null = null;
  /** Counts doubts: a run that saw one arrive while it ran must not claim the server is in sync. */
  private doubts = 0;
  private generation = 0;
  private publishedDevices = 0;

  private nodeUid: string | undefined;
  private nodeReadDue = true;
  private nodeProblemLogged = false;

  private state: PublisherState = 'starting';
  private lastError: string | undefined;
  private lastLoggedKind: ApiErrorKind | null = null;
  private consecutiveFailures = 0;

  private started = false;
  private stopped = false;
  private firstAttempt: Promise<void> | null = null;
  private resolveFirstAttempt: (() => void) | null = null;
  private waiters: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];

  // The worker: one run at a time; a request meanwhile runs it once more after.
  private timer: NodeJS.Timeout | null = null;
  private timerAt = 0;
  private inBackoff = false;
  private running: Promise<void> | null = null;
  private rerun = false;
  private resyncTimer: NodeJS.Timeout | null = null;

  constructor(options: SlicePublisherOptions) {
    this.driver = options.driver;
    this.nodeName = options.nodeName;
    this.platform = options.platform;
    this.logger = (options.logger ?? silentLogger()).child({ room: 'dra', driver: options.driver, node: options.nodeName });
    this.retryMinMs = options.retryMinMs ?? 500;
    this.retryMaxMs = Math.max(this.retryMinMs, options.retryMaxMs ?? 30_000);
    this.resyncMs = options.resyncMs ?? 60_000;
    const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.api = new SliceApi(options.kubeConfig, requestTimeoutMs);
    this.coalesceMs = options.coalesceMs ?? 25;
    this.random = options.random ?? Math.random;
    // Check the names now: a wrong driver or node name is a configuration error, not an API failure.
    buildSlices(this.context(0), []);
    this.desired = new DesiredPool({
      context: () => this.context(0),
      logger: this.logger,
      windowMs: this.coalesceMs,
      changed: () => {
        if (this.started) this.schedule(this.coalesceMs);
      },
      refused: (message) => {
        this.lastError = message;
      },
    });
    this.writes = new SliceWrites(this.api, this.logger, this.nodeName, this.driver);
    this.watch = new SliceWatch({
      api: this.api,
      logger: this.logger,
      fieldSelector: this.writes.fieldSelector(),
      requestTimeoutMs,
      random: this.random,
      backoffDelay: (failures) => this.backoffDelay(failures),
      stopped: () => this.stopped,
      onEvent: (event) => {
        const reason = this.writes.judge(event);
        if (reason) this.doubt(reason);
      },
      // The run lists (catching up on what the watch missed) and then starts the watch again.
      restart: () => this.doubt('the watch restarted'),
    });
  }

  /** Publishes what update() gave (or, before any update, learns what is there). Resolves after the first attempt; never rejects. */
  start(): Promise<void> {
    if (this.firstAttempt) return this.firstAttempt;
    this.started = true;
    this.firstAttempt = new Promise<void>((resolve) => {
      this.resolveFirstAttempt = resolve;
    });
    if (this.stopped) {
      this.resolveFirstAttempt?.();
    } else {
      this.arm(0);
      this.armResync();
    }
    return this.firstAttempt;
  }

  /** The pool's devices now. Returns at once; bursts coalesce; an unchanged pool writes nothing. */
  update(devices: PublishedDevice[]): void {
    if (this.stopped) return;
    this.desired.update(devices);
  }

  /** Stops the watch, timers and requests in flight; the slices stay (a restarted driver replaces them). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clearTimer();
    this.desired.cancel();
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    this.resyncTimer = null;
    this.watch.stop();
    this.api.stop();
    await this.running?.catch(() => undefined);
    this.setState('stopped');
    this.resolveFirstAttempt?.();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(new Error('The ResourceSlice publisher stopped before the devices were published'));
  }

  status(): PublisherStatus {
    return {
      state: this.state,
      generation: this.generation,
      slices: this.writes.published.size,
      devices: this.publishedDevices,
      ...(this.lastError !== undefined ? { lastError: this.lastError } : {}),
    };
  }

  /** Resolves once what update() last got is on the server; rejects if the publisher stops first. */
  whenPublished(): Promise<void> {
    if (this.isSynced()) return Promise.resolve();
    if (this.stopped) return Promise.reject(new Error('The ResourceSlice publisher is stopped'));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Timers, watch and requests the publisher holds. */
  activity(): PublisherActivity {
    return {
      timers: [this.timer, this.resyncTimer].filter((t) => t !== null).length + this.watch.timers + this.desired.timers,
      watching: this.watch.watching,
      requests: this.api.requests,
      running: this.running !== null,
      watchEvents: this.watch.events,
    };
  }

  private context(generation: number): SliceContext {
    return {
      driver: this.driver,
      nodeName: this.nodeName,
      platform: this.platform,
      generation,
      ...(this.nodeUid ? { nodeUid: this.nodeUid } : {}),
    };
  }

  private isSynced(): boolean {
    return this.desired.key !== null && !this.desired.waiting && this.publishedKey === this.desired.key && this.state === 'published';
  }

  /** Something may have changed our slices on the server: compare soon. */
  private doubt(reason: string): void {
    if (this.stopped) return;
    this.logger.debug({ reason }, 'Checking the ResourceSlices on the server');
    this.doubts += 1;
    this.publishedKey = null;
    this.schedule(this.coalesceMs);
  }

  // ---- the worker ------------------------------------------------------------------------------

  private schedule(delayMs: number): void {
    if (this.stopped || !this.started) return;
    if (this.running) {
      this.rerun = true;
      return;
    }
    if (this.inBackoff) return;
    if (this.timer && this.timerAt <= Date.now() + delayMs) return;
    this.arm(delayMs);
  }

  private arm(delayMs: number): void {
    this.clearTimer();
    this.timerAt = Date.now() + delayMs;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.inBackoff = false;
      this.running = this.run().finally(() => {
        this.running = null;
        this.afterRun();
      });
    }, delayMs);
    this.timer.unref?.();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private afterRun(): void {
    this.resolveFirstAttempt?.();
    this.resolveFirstAttempt = null;
    if (this.stopped || this.inBackoff) return;
    if (this.rerun) {
      this.rerun = false;
      this.arm(0);
    }
  }

  private armResync(): void {
    if (this.resyncMs <= 0 || this.stopped) return;
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    this.resyncTimer = setTimeout(() => {
      this.resyncTimer = null;
      if (this.nodeUid === undefined) this.nodeReadDue = true;
      this.doubt('periodic resync');
      this.armResync();
    }, this.resyncMs);
    this.resyncTimer.unref?.();
  }

  private async run(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.syncOnce();
      this.succeeded();
    } catch (err) {
      if (this.stopped || err instanceof Stopped) return;
      this.failed(err);
    }
  }

  /** Reads the Node when due, lists our slices, and writes only when they differ from what we want. */
  private async syncOnce(): Promise<void> {
    const doubtsBefore = this.doubts;
    const clients = await this.api.client();
    if (this.nodeReadDue) await this.readNode(clients);
    const listed = await this.writes.listOurs(clients);
    this.watch.fromVersion = listed.resourceVersion;
    const existing = listed.items;

    // A change still in the coalescing window goes out with this run.
    this.desired.flush(false);
    const wanted = this.desired.current(this.nodeUid);
    if (wanted === null) return;
    const devices = this.desired.devices!;
    const { key } = wanted;

    if (this.generation > 0 && this.writes.matches(existing, this.desired.atGeneration(this.generation), key)) {
      // Ours are intact; slices of an older generation beside them are ignored by readers, but are not ours to keep.
      await this.writes.deleteOthers(clients, existing);
      if (this.doubts === doubtsBefore) this.publishedKey = key;
      return;
    }
    // Readers use only a pool's highest generation: stay above anything on the server.
    const highest = Math.max(0, ...existing.map((s) => s.spec?.pool?.generation ?? 0));
    const generation = Math.max(this.generation, highest) + 1;
    const slices = this.desired.atGeneration(generation);
    await this.writes.publish(clients, slices, existing, key);
    this.generation = generation;
    this.publishedDevices = devices.length;
    // A change seen meanwhile (the kubelet deleting slices) leaves it in doubt until the next run.
    if (this.doubts === doubtsBefore) this.publishedKey = key;
    this.logger.info(
      { generation, slices: slices.length, devices: devices.length, replaced: existing.length },
      'Published the ResourceSlices of this node',
    );
  }

  private succeeded(): void {
    const wasRetrying = this.state === 'retrying';
    if (wasRetrying) {
      this.logger.info({ failedAttempts: this.consecutiveFailures }, 'ResourceSlice publishing resumed');
    }
    this.consecutiveFailures = 0;
    this.lastLoggedKind = null;
    this.lastError = undefined;
    if (this.desired.devices !== null && this.publishedKey === this.desired.key) this.setState('published');
    else if (wasRetrying) this.setState('starting');
    // Watch from the resourceVersion of the list just made, so nothing in between is missed.
    this.watch.start();
    if (this.isSynced()) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w.resolve();
    }
  }

  private failed(err: unknown): void {
    const detail: ClassifiedApiError =
      err instanceof RequestFailure ? err.detail : { kind: 'clientError', operation: 'publish', message: (err as Error)?.message ?? String(err) };
    this.consecutiveFailures += 1;
    this.lastError = `${detail.operation}: ${detail.message}`;
    const delay = this.backoffDelay(this.consecutiveFailures);
    if (this.state !== 'retrying' || detail.kind !== this.lastLoggedKind) {
      this.logger.warn(
        { errorKind: detail.kind, operation: detail.operation, statusCode: detail.statusCode, err: detail.message, retryInMs: delay },
        `${STATE_MESSAGES[detail.kind]}; ResourceSlice publishing ${this.state === 'retrying' ? 'still ' : ''}retrying`,
      );
      this.lastLoggedKind = detail.kind;
    }
    this.setState('retrying');
    if (detail.kind === 'config') this.api.clients = null;
    // Whatever arrived meanwhile goes out with the retry.
    this.rerun = false;
    this.inBackoff = true;
    this.arm(delay);
  }

  /** Exponential from retryMinMs, capped at retryMaxMs, with 20 % jitter either way. */
  private backoffDelay(failures: number): number {
    const base = Math.min(this.retryMaxMs, this.retryMinMs * 2 ** Math.max(0, Math.min(30, failures - 1)));
    const spread = base * 0.2 * (this.random() * 2 - 1);
    return Math.max(0, Math.min(this.retryMaxMs, Math.round(base + spread)));
  }

  private setState(state: PublisherState): void {
    if (this.state === 'stopped') return;
    this.state = state;
  }

  /** The Node's uid for the ownerReference. Publishing goes on without it when the Node cannot be read. */
  private async readNode(clients: Clients): Promise<void> {
    try {
      const node = await this.api.call('getNode', (o) => clients.core.readNode({ name: this.nodeName }, o));
      this.nodeUid = node.metadata?.uid;
      this.nodeReadDue = false;
      this.nodeProblemLogged = false;
    } catch (err) {
      if (!(err instanceof RequestFailure)) throw err;
      // No answer at all: the whole attempt waits for the server.
      if (err.detail.kind === 'unreachable' || err.detail.kind === 'timeout' || err.detail.kind === 'config') throw err;
      this.nodeReadDue = false;
      if (!this.nodeProblemLogged) {
        this.logger.warn(
          { errorKind: err.detail.kind, statusCode: err.detail.statusCode, err: err.detail.message },
          'Could not read the Node; publishing ResourceSlices without an ownerReference and trying again at the next resync',
        );
        this.nodeProblemLogged = true;
      }
    }
  }
}
