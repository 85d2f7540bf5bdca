// Keeps this node's DRA pool on the API server: the ResourceSlices that
// buildSlices describes, under deterministic names, replacing whatever an
// earlier run left. The kubelet deletes a node's slices when it starts, so a
// watch (and a periodic resync as a safety net) notices slices vanishing or
// being changed by someone else and publishes again. Like the node reporter,
// the API server is a best-effort audience here: nothing throws into the
// caller, failures back off exponentially with jitter and are logged once per
// change of state. @kubernetes/client-node is loaded on first use only.
import type { KubeConfig, V1ResourceSlice } from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ApiErrorKind, ClassifiedApiError } from '../report/api-errors.js';
import { eachLimited, fromClientSlice, RequestFailure, SliceApi, Stopped, toClientSlice, watchResourceSlices, type Clients, type WatchEvent } from './slice-api.js';
import { buildSlices, sameSliceContent, sliceFingerprint, type PublishedDevice, type ResourceSlice, type SliceContext } from './slices.js';

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
  /** Updates (and watch events) within this window go out as one publish; default 25 ms. */
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

/** How often a write is retried at once after a 409 before the attempt counts as failed. */
const CONFLICT_RETRIES = 3;
/** Slices written at the same time: a large pool comes back quickly after the kubelet deleted it. */
const WRITE_CONCURRENCY = 4;

interface PublishedSlice {
  slice: ResourceSlice;
  resourceVersion: string | undefined;
  key: string;
  /** sliceFingerprint(slice), kept to compare watch events cheaply. */
  fingerprint: string;
}

export class SlicePublisher {
  private readonly driver: string;
  private readonly nodeName: string;
  private readonly platform: 'powernv' | 'pseries' | null;
  private readonly logger: Logger;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;
  private readonly resyncMs: number;
  private readonly requestTimeoutMs: number;
  private readonly coalesceMs: number;
  private readonly random: () => number;
  private readonly api: SliceApi;

  // What update() last accepted: the devices, their slices at generation 0 (built
  // with the Node uid known then) and the content key of those slices.
  private devices: PublishedDevice[] | null = null;
  private base: ResourceSlice[] = [];
  private baseNodeUid: string | undefined;
  private desiredKey: string | null = null;
  /** Key of what the server holds as far as we know; null when that is in doubt. */
  private publishedKey: string | null = null;
  /** The slices of the last publish, by name: what we wrote, the resourceVersion the server gave it, the content key. */
  private published = new Map<string, PublishedSlice>();
  /** Counts doubts: a run that saw one arrive while it ran must not claim the server is in sync. */
  private doubts = 0;
  /** Fingerprints of the slices being written right now: their watch events may come before the server's answers. */
  private writing = new Map<string, string>();
  private generation = 0;
  private publishedDevices = 0;

  private nodeUid: string | undefined;
  private nodeReadDue = true;
  private nodeProblemLogged = false;

  private state: PublisherState = 'starting';
  private lastError: string | undefined;
  private lastLoggedKind: ApiErrorKind | null = null;
  private lastBuildError: string | undefined;
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

  // The watch.
  /** Set while a watch request is open (or being opened). */
  private watchAbort: AbortController | null = null;
  private watchTimer: NodeJS.Timeout | null = null;
  private watchFailures = 0;
  private watchEvents = 0;
  /** resourceVersion to watch from: of the last list, then of each event seen. */
  private listResourceVersion: string | undefined;

  constructor(options: SlicePublisherOptions) {
    this.driver = options.driver;
    this.nodeName = options.nodeName;
    this.platform = options.platform;
    this.logger = (options.logger ?? silentLogger()).child({ room: 'dra', driver: options.driver, node: options.nodeName });
    this.retryMinMs = options.retryMinMs ?? 500;
    this.retryMaxMs = Math.max(this.retryMinMs, options.retryMaxMs ?? 30_000);
    this.resyncMs = options.resyncMs ?? 60_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.api = new SliceApi(options.kubeConfig, this.requestTimeoutMs);
    this.coalesceMs = options.coalesceMs ?? 25;
    this.random = options.random ?? Math.random;
    // Check the names now: a wrong driver or node name is a configuration error, not an API failure.
    buildSlices(this.context(0), []);
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
    let copy: PublishedDevice[];
    let base: ResourceSlice[];
    try {
      copy = structuredClone(devices);
      base = buildSlices(this.context(0), copy);
    } catch (err) {
      const message = (err as Error).message;
      this.lastError = message;
      if (message !== this.lastBuildError) {
        this.logger.error({ err: message }, 'Could not describe the devices as ResourceSlices; keeping the previous ones');
        this.lastBuildError = message;
      }
      return;
    }
    this.lastBuildError = undefined;
    const key = JSON.stringify(base);
    if (key === this.desiredKey) return;
    this.devices = copy;
    this.base = base;
    this.baseNodeUid = this.nodeUid;
    this.desiredKey = key;
    if (this.started) this.schedule(this.coalesceMs);
  }

  /** Stops the watch, timers and requests in flight; the slices stay (a restarted driver replaces them). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clearTimer();
    if (this.resyncTimer) clearTimeout(this.resyncTimer);
    this.resyncTimer = null;
    this.stopWatch();
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
      slices: this.published.size,
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
      timers: [this.timer, this.resyncTimer, this.watchTimer].filter((t) => t !== null).length,
      watching: this.watchAbort !== null,
      requests: this.api.requests,
      running: this.running !== null,
      watchEvents: this.watchEvents,
    };
  }

  // ---- desired state ---------------------------------------------------------------------------

  private context(generation: number): SliceContext {
    return {
      driver: this.driver,
      nodeName: this.nodeName,
      platform: this.platform,
      generation,
      ...(this.nodeUid ? { nodeUid: this.nodeUid } : {}),
    };
  }

  /** The desired slices at a generation (built and checked once per update). */
  private atGeneration(generation: number): ResourceSlice[] {
    return this.base.map((s) => ({ ...s, spec: { ...s.spec, pool: { ...s.spec.pool, generation } } }));
  }

  private isSynced(): boolean {
    return this.desiredKey !== null && this.publishedKey === this.desiredKey && this.state === 'published';
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
    const existing = await this.listOurs(clients);

    const devices = this.devices;
    if (devices === null) return;
    // The Node's uid may have become known since update(): it is part of the content.
    if (this.baseNodeUid !== this.nodeUid) {
      this.base = buildSlices(this.context(0), devices);
      this.baseNodeUid = this.nodeUid;
      this.desiredKey = JSON.stringify(this.base);
    }
    const key = this.desiredKey!;

    if (this.generation > 0 && this.matches(existing, this.atGeneration(this.generation), key)) {
      // Ours are intact; slices of an older generation beside them are ignored by readers, but are not ours to keep.
      await this.deleteOthers(clients, existing, new Set(this.published.keys()));
      if (this.doubts === doubtsBefore) this.publishedKey = key;
      return;
    }
    // Readers use only a pool's highest generation: stay above anything on the server.
    const highest = Math.max(0, ...existing.map((s) => s.spec?.pool?.generation ?? 0));
    const generation = Math.max(this.generation, highest) + 1;
    const slices = this.atGeneration(generation);
    await this.publish(clients, slices, existing, key);
    this.generation = generation;
    this.publishedDevices = devices.length;
    // A change seen meanwhile (the kubelet deleting slices) leaves it in doubt until the next run.
    if (this.doubts === doubtsBefore) this.publishedKey = key;
    this.logger.info(
      { generation, slices: slices.length, devices: devices.length, replaced: existing.length },
      'Published the ResourceSlices of this node',
    );
  }

  /**
   * True when the server holds every slice of `wanted`, each unchanged since we
   * wrote it or equal in content, and nothing else of this pool at the same or a
   * higher generation (readers would take that for the pool).
   */
  private matches(existing: V1ResourceSlice[], wanted: ResourceSlice[], key: string): boolean {
    const names = new Set(wanted.map((w) => w.metadata.name));
    const generation = wanted[0]?.spec.pool.generation ?? 0;
    if (existing.some((s) => !names.has(s.metadata?.name ?? '') && (s.spec?.pool?.generation ?? 0) >= generation)) return false;
    const byName = new Map(existing.map((s) => [s.metadata?.name ?? '', s]));
    return wanted.every((want) => {
      const have = byName.get(want.metadata.name);
      if (!have) return false;
      const ours = this.published.get(want.metadata.name);
      // Untouched since we wrote it, from the same content: no need to compare it field by field.
      if (
        ours?.resourceVersion !== undefined &&
        have.metadata?.resourceVersion === ours.resourceVersion &&
        ours.key === key &&
        ours.slice.spec.pool.generation === want.spec.pool.generation
      ) {
        return true;
      }
      return sameSliceContent(fromClientSlice(have), want);
    });
  }

  /** Writes every slice of the new generation, then deletes the rest, so two generations overlap only briefly. */
  private async publish(clients: Clients, slices: ResourceSlice[], existing: V1ResourceSlice[], key: string): Promise<void> {
    const existingByName = new Map(existing.map((s) => [s.metadata?.name ?? '', s]));
    const written = new Map<string, PublishedSlice>();
    const fingerprints = new Map(slices.map((s) => [s.metadata.name, sliceFingerprint(s)]));
    this.writing = fingerprints;
    await eachLimited(slices, WRITE_CONCURRENCY, async (slice) => {
      const current = existingByName.get(slice.metadata.name);
      const stored = await this.write(clients, slice, current?.metadata?.resourceVersion, current !== undefined);
      const entry = { slice, resourceVersion: stored.metadata?.resourceVersion, key, fingerprint: fingerprints.get(slice.metadata.name)! };
      written.set(slice.metadata.name, entry);
      // Partial progress counts: a retry compares against what is already there.
      this.published.set(slice.metadata.name, entry);
    }).finally(() => {
      this.writing = new Map();
    });
    this.published = written;
    await this.deleteOthers(clients, existing, new Set(written.keys()));
  }

  /** Deletes every listed slice of this node and driver that is not one of `keep`. */
  private async deleteOthers(clients: Clients, existing: V1ResourceSlice[], keep: Set<string>): Promise<void> {
    for (const old of existing) {
      const name = old.metadata?.name;
      if (!name || keep.has(name)) continue;
      this.logger.debug({ slice: name, generation: old.spec?.pool?.generation }, 'Deleting a ResourceSlice this pool no longer has');
      await this.api.call('deleteResourceSlice', (o) => clients.resource.deleteResourceSlice({ name }, o)).catch((err: unknown) => {
        // Gone already (the kubelet, or an earlier attempt): that is what we wanted.
        if (err instanceof RequestFailure && err.detail.kind === 'notFound') return;
        throw err;
      });
    }
  }

  /** Creates or replaces one slice; a 409 re-reads it and tries again, a 404 on replace creates it. */
  private async write(clients: Clients, slice: ResourceSlice, resourceVersion: string | undefined, exists: boolean): Promise<V1ResourceSlice> {
    const name = slice.metadata.name;
    let rv = resourceVersion;
    let present = exists;
    for (let attempt = 0; ; attempt++) {
      try {
        if (present) {
          const body = toClientSlice({ ...slice, metadata: { ...slice.metadata, ...(rv !== undefined ? { resourceVersion: rv } : {}) } });
          return await this.api.call('replaceResourceSlice', (o) => clients.resource.replaceResourceSlice({ name, body }, o));
        }
        return await this.api.call('createResourceSlice', (o) => clients.resource.createResourceSlice({ body: toClientSlice(slice) }, o));
      } catch (err) {
        if (!(err instanceof RequestFailure) || attempt >= CONFLICT_RETRIES) throw err;
        if (err.detail.kind === 'conflict') {
          // Stale resourceVersion, or it exists already: take the server's version and replace it.
          try {
            const current = await this.api.call('getResourceSlice', (o) => clients.resource.readResourceSlice({ name }, o));
            rv = current.metadata?.resourceVersion;
            present = true;
          } catch (readErr) {
            if (!(readErr instanceof RequestFailure && readErr.detail.kind === 'notFound')) throw readErr;
            present = false;
          }
        } else if (err.detail.kind === 'notFound' && present) {
          // Deleted since we listed.
          present = false;
        } else {
          throw err;
        }
      }
    }
  }

  private succeeded(): void {
    const wasRetrying = this.state === 'retrying';
    if (wasRetrying) {
      this.logger.info({ failedAttempts: this.consecutiveFailures }, 'ResourceSlice publishing resumed');
    }
    this.consecutiveFailures = 0;
    this.lastLoggedKind = null;
    this.lastError = undefined;
    if (this.devices !== null && this.publishedKey === this.desiredKey) this.setState('published');
    else if (wasRetrying) this.setState('starting');
    // Watch from the resourceVersion of the list just made, so nothing in between is missed.
    if (!this.watchAbort && !this.watchTimer) this.startWatch();
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

  // ---- requests --------------------------------------------------------------------------------

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

  /** Every slice of this node and driver, whoever wrote it; the field selector is checked again here. */
  private async listOurs(clients: Clients): Promise<V1ResourceSlice[]> {
    const list = await this.api.call('listResourceSlices', (o) =>
      clients.resource.listResourceSlice({ fieldSelector: this.fieldSelector() }, o),
    );
    this.listResourceVersion = list.metadata?.resourceVersion;
    return (list.items ?? []).filter((s) => s.spec?.nodeName === this.nodeName && s.spec?.driver === this.driver);
  }

  private fieldSelector(): string {
    return `spec.nodeName=${this.nodeName},spec.driver=${this.driver}`;
  }

  // ---- the watch -------------------------------------------------------------------------------

  private startWatch(): void {
    if (this.stopped || this.watchAbort || this.watchTimer) return;
    const clients = this.api.clients;
    const cluster = clients?.kc.getCurrentCluster();
    if (!clients || !cluster) return;
    const abort = new AbortController();
    this.watchAbort = abort;
    const startedAt = Date.now();
    // The server ends the watch after timeoutSeconds; spread them so many nodes do not reconnect together.
    const timeoutSeconds = 240 + Math.floor(this.random() * 120);
    watchResourceSlices(
      {
        clients,
        server: cluster.server,
        fieldSelector: this.fieldSelector(),
        fromVersion: this.listResourceVersion,
        timeoutSeconds,
        requestTimeoutMs: this.requestTimeoutMs,
        abort,
      },
      {
        stopped: () => this.stopped,
        onEvent: (event) => this.onWatchEvent(event),
        onError: () => {
          // 410 Gone: our resourceVersion is too old; list again and watch from there.
          this.listResourceVersion = undefined;
        },
        onEnd: (err) => {
          if (this.watchAbort === abort) this.watchAbort = null;
          abort.abort();
          if (this.stopped) return;
          // A watch that lived (the server ends each one after timeoutSeconds) is restarted at once; quick failures back off.
          this.watchEnded(err, Date.now() - startedAt >= 1000);
        },
      },
    );
  }

  private stopWatch(): void {
    if (this.watchTimer) clearTimeout(this.watchTimer);
    this.watchTimer = null;
    const abort = this.watchAbort;
    this.watchAbort = null;
    abort?.abort();
  }

  /** Restarts the watch after a backoff; a watch that lived and delivered resets it. What it may have missed is listed first. */
  private watchEnded(err: Error | undefined, healthy: boolean): void {
    if (healthy) this.watchFailures = 0;
    else this.watchFailures += 1;
    const delay = this.watchFailures === 0 ? 0 : this.backoffDelay(this.watchFailures);
    if (err && this.watchFailures === 1) {
      this.logger.info({ err: err.message, retryInMs: delay }, 'ResourceSlice watch ended; watching again after a list');
    }
    this.watchTimer = setTimeout(() => {
      this.watchTimer = null;
      // The run lists (catching up on what the watch missed) and then starts the watch again.
      this.doubt('the watch restarted');
    }, delay);
    this.watchTimer.unref?.();
  }

  private onWatchEvent(event: WatchEvent): void {
    this.watchEvents += 1;
    const object = event.object;
    if (!object) return;
    const metadata = (object['metadata'] ?? {}) as { name?: string; resourceVersion?: string };
    if (metadata.resourceVersion) this.listResourceVersion = metadata.resourceVersion;
    if (event.type === 'BOOKMARK') return;
    const spec = (object['spec'] ?? {}) as { nodeName?: string; driver?: string };
    if (spec.nodeName !== this.nodeName || spec.driver !== this.driver || !metadata.name) return;
    const ours = this.published.get(metadata.name);
    if (event.type === 'DELETED') {
      // Slices we delete are never in `published`; one of ours vanishing (the kubelet at its start) is.
      if (ours) this.doubt(`ResourceSlice ${metadata.name} was deleted`);
      return;
    }
    if (ours && metadata.resourceVersion !== undefined && metadata.resourceVersion === ours.resourceVersion) return;
    const fingerprint = sliceFingerprint(object as unknown as ResourceSlice);
    if (fingerprint === this.writing.get(metadata.name)) return;
    if (ours) {
      if (fingerprint === ours.fingerprint) return;
      this.doubt(`ResourceSlice ${metadata.name} was changed`);
    } else {
      // A slice of our pool we did not write: someone else's, or left by an earlier run.
      this.doubt(`ResourceSlice ${metadata.name} appeared`);
    }
  }
}
