// Tells the Kubernetes API what the plugin sees on this node: a Node condition
// of our own type, Events for device transitions and labels for capabilities.
// The API server is a best-effort audience: the plugin's job is serving the
// kubelet, so nothing here ever throws into the caller or blocks it. One worker
// sends the latest desired state; failures back off exponentially (with jitter)
// and are logged once per change of state, not per attempt.
import { randomBytes } from 'node:crypto';
import {
  CoreV1Api,
  KubeConfig,
  Observable,
  PatchStrategy,
  type ConfigurationOptions,
  type CoreV1Event,
  type ObservableMiddleware,
  type RequestContext,
  type ResponseContext,
  type V1Node,
} from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { classifyApiError, type ApiErrorKind } from './api-errors.js';
import type { NodeCapabilities, NodeSnapshot } from './snapshot.js';
import {
  CONDITION_TYPE,
  LABEL_PREFIX,
  conditionFor,
  labelsFor,
  summaryMessage,
  transitionsBetween,
  truncate,
  MAX_EVENT_MESSAGE,
  type ConditionState,
  type DeviceTransition,
  type EventReason,
} from './node-report.js';

export const REPORTING_COMPONENT = 'power-vfio-device-plugin';

export type { ApiErrorKind } from './api-errors.js';

export interface ReporterError {
  kind: ApiErrorKind;
  /** The request that failed: `getNode`, `patchNodeStatus`, `patchNodeLabels`, `createEvent`, `patchEvent`, `loadConfig`. */
  operation: string;
  /** HTTP status when the server answered. */
  statusCode?: number;
  message: string;
  at: Date;
}

/** `pending`: nothing confirmed yet; `ok`: the node shows our latest state; `degraded`: retrying; `stopped`. */
export type ReportingState = 'pending' | 'ok' | 'degraded' | 'stopped';

export interface ReporterStatus {
  state: ReportingState;
  /** Since when the state holds. */
  since: Date;
  lastError: ReporterError | null;
  lastSuccessAt: Date | null;
  /** Attempts that failed since the last success. */
  consecutiveFailures: number;
  /** Events waiting to be written. */
  pendingEvents: number;
  /** Events dropped because the queue overflowed while the API was unavailable. */
  droppedEvents: number;
  /** The node shows the latest snapshot (condition and labels) and no event is waiting. */
  synced: boolean;
}

export interface BackoffSettings {
  /** First retry delay; default 1000 ms. */
  initialMs?: number;
  /** Largest retry delay; default 60 000 ms. */
  maxMs?: number;
  /** Growth per failure; default 2. */
  factor?: number;
  /** Fraction of the delay randomised either way; default 0.2. */
  jitter?: number;
}

export interface NodeReporterOptions {
  /** A KubeConfig, or a factory called lazily (and again after it fails), for example `loadKubeConfig`. */
  kubeConfig: KubeConfig | (() => KubeConfig);
  /** This node's name (the downward API's spec.nodeName). */
  nodeName: string;
  logger?: Logger;
  /** Namespace for the Node's Events; the kubelet uses `default` for Node events. */
  eventNamespace?: string;
  /** Condition type; default `PowerVfioDevicePluginHealthy`. */
  conditionType?: string;
  /** Deadline of each API request; default 10 000 ms. */
  requestTimeoutMs?: number;
  backoff?: BackoffSettings;
  /** Rewrites the condition this often with a new lastHeartbeatTime; 0 turns it off. Default 300 000 ms. */
  heartbeatIntervalMs?: number;
  /** Transitions within this window go out together (a burst becomes one write per kind); default 1000 ms. */
  eventCoalesceMs?: number;
  /** More distinct events than this in one window are summarised per reason and resource; default 10. */
  maxEventsPerBurst?: number;
  /** A repeat of the same event within this window increments its count instead of creating one; default 10 min. */
  eventAggregateWindowMs?: number;
  /** Most events kept while the API is unavailable (oldest dropped); default 200. */
  maxPendingEvents?: number;
  /** The clock, for tests. */
  now?: () => Date;
  /** Random numbers in [0, 1), for the jitter; tests pin it. */
  random?: () => number;
  /** Told whenever `status().state` changes (for metrics). */
  onStateChange?: (status: ReporterStatus) => void;
  /** Told about each failed request (for metrics). */
  onRequestError?: (error: ReporterError) => void;
}

/** In-cluster configuration, or a kubeconfig file when a path is given. Throws when neither is usable. */
export function loadKubeConfig(kubeconfigPath?: string): KubeConfig {
  const kc = new KubeConfig();
  if (kubeconfigPath) {
    kc.loadFromFile(kubeconfigPath);
    if (!kc.getCurrentCluster()) throw new Error(`the kubeconfig ${kubeconfigPath} names no current cluster`);
    return kc;
  }
  // loadFromCluster does not check this itself and would aim at https://undefined:undefined.
  if (!process.env['KUBERNETES_SERVICE_HOST'] || !process.env['KUBERNETES_SERVICE_PORT']) {
    throw new Error('not running in a cluster (KUBERNETES_SERVICE_HOST is unset); pass --kubeconfig');
  }
  kc.loadFromCluster();
  return kc;
}

interface PendingEvent {
  key: string;
  type: 'Normal' | 'Warning';
  reason: EventReason;
  message: string;
  resource?: string;
  device?: string;
  count: number;
  first: Date;
  last: Date;
}

interface EventSeries {
  name: string;
  count: number;
  firstTimestamp: Date;
  lastTimestamp: Date;
}

class RequestFailure extends Error {
  constructor(readonly detail: Omit<ReporterError, 'at'>) {
    super(detail.message);
  }
}

class Stopped extends Error {}

const TRANSIENT_MESSAGES: Record<ApiErrorKind, string> = {
  unreachable: 'Kubernetes API unreachable',
  timeout: 'Kubernetes API did not answer in time',
  unauthorized: 'Kubernetes API rejected our credentials',
  forbidden: 'Kubernetes API forbids node reporting; check the ClusterRole (nodes get/patch, nodes/status patch, events create/patch)',
  notFound: 'Kubernetes API does not know this node; check the node name (NODE_NAME from spec.nodeName)',
  conflict: 'Kubernetes API reported a conflict',
  throttled: 'Kubernetes API is throttling us',
  serverError: 'Kubernetes API failed with a server error',
  clientError: 'Kubernetes API refused a request',
  config: 'Kubernetes API configuration is unusable',
};

export class NodeReporter {
  private readonly logger: Logger;
  private readonly nodeName: string;
  private readonly eventNamespace: string;
  private readonly conditionType: string;
  private readonly requestTimeoutMs: number;
  private readonly backoff: Required<BackoffSettings>;
  private readonly heartbeatIntervalMs: number;
  private readonly eventCoalesceMs: number;
  private readonly maxEventsPerBurst: number;
  private readonly eventAggregateWindowMs: number;
  private readonly maxPendingEvents: number;
  private readonly now: () => Date;
  private readonly random: () => number;
  private readonly options: NodeReporterOptions;

  private api: CoreV1Api | null = null;
  private snapshot: NodeSnapshot | null = null;
  private capabilities: NodeCapabilities = {};

  // Desired state, versioned so a change made while a request is in flight is sent again.
  private condition: ConditionState | null = null;
  private transitionAt: Date | null = null;
  private conditionVersion = 0;
  private conditionSent = 0;
  private labels: Record<string, string> | null = null;
  private labelsVersion = 0;
  private labelsSent = 0;

  // What the node looked like when we read it.
  private nodeRead = false;
  private nodeUid: string | undefined;
  /** Labels under our prefix on the node, to remove the ones we no longer want. */
  private ownedLabels = new Set<string>();
  private transitionAdopted = false;

  private readonly eventQueue = new Map<string, PendingEvent>();
  private readonly eventSeries = new Map<string, EventSeries>();
  private eventsDueAt: number | null = null;
  private droppedEvents = 0;
  private droppedLogged = 0;

  private reportingState: ReportingState = 'pending';
  private stateSince: Date;
  private lastError: ReporterError | null = null;
  private lastLoggedKind: ApiErrorKind | null = null;
  private lastSuccessAt: Date | null = null;
  private consecutiveFailures = 0;
  private pausedAt: Date | null = null;

  private timer: NodeJS.Timeout | null = null;
  private timerAt = 0;
  private inBackoff = false;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private rerun = false;
  private stopped = false;
  private readonly inFlight = new Set<AbortController>();

  constructor(options: NodeReporterOptions) {
    this.options = options;
    this.nodeName = options.nodeName;
    this.logger = (options.logger ?? silentLogger()).child({ room: 'report', node: options.nodeName });
    this.eventNamespace = options.eventNamespace ?? 'default';
    this.conditionType = options.conditionType ?? CONDITION_TYPE;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.backoff = {
      initialMs: options.backoff?.initialMs ?? 1000,
      maxMs: options.backoff?.maxMs ?? 60_000,
      factor: options.backoff?.factor ?? 2,
      jitter: options.backoff?.jitter ?? 0.2,
    };
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 300_000;
    this.eventCoalesceMs = options.eventCoalesceMs ?? 1000;
    this.maxEventsPerBurst = options.maxEventsPerBurst ?? 10;
    this.eventAggregateWindowMs = options.eventAggregateWindowMs ?? 600_000;
    this.maxPendingEvents = options.maxPendingEvents ?? 200;
    this.now = options.now ?? (() => new Date());
    this.random = options.random ?? Math.random;
    this.stateSince = this.now();
  }

  /**
   * The plugin's current view of the node; call whenever health, the device
   * set, conflicts or capabilities change. Returns at once; never throws.
   */
  report(snapshot: NodeSnapshot): void {
    if (this.stopped) return;
    try {
      const copy = structuredClone(snapshot);
      checkSnapshot(copy);
      const transitions = transitionsBetween(this.snapshot, copy);
      if (copy.capabilities) this.capabilities = { ...this.capabilities, ...copy.capabilities };
      this.snapshot = copy;
      for (const transition of transitions) this.enqueueEvent(transition);
      this.updateDesired();
      this.schedule(0);
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'Could not take a node report; keeping the previous one');
    }
  }

  /** Records an Event that no snapshot shows (a rebinding that failed). Returns at once; never throws. */
  event(transition: DeviceTransition): void {
    if (this.stopped) return;
    try {
      this.enqueueEvent(transition);
      this.schedule(0);
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'Could not record an event');
    }
  }

  /** Merges capabilities (the VFIO layer may learn them after discovery). Never throws. */
  setCapabilities(capabilities: NodeCapabilities): void {
    if (this.stopped) return;
    try {
      this.capabilities = { ...this.capabilities, ...structuredClone(capabilities) };
      if (this.snapshot) {
        this.updateDesired();
        this.schedule(0);
      }
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'Could not take node capabilities');
    }
  }

  status(): ReporterStatus {
    return {
      state: this.reportingState,
      since: this.stateSince,
      lastError: this.lastError,
      lastSuccessAt: this.lastSuccessAt,
      consecutiveFailures: this.consecutiveFailures,
      pendingEvents: this.eventQueue.size,
      droppedEvents: this.droppedEvents,
      synced: this.isSynced(),
    };
  }

  /** Cancels timers and in-flight requests; later reports are ignored. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clearTimer();
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = null;
    for (const controller of this.inFlight) controller.abort(new Stopped('node reporter stopped'));
    await this.running?.catch(() => undefined);
    this.setState('stopped');
  }

  // ---- desired state -------------------------------------------------------------------------

  private updateDesired(): void {
    const snapshot = this.snapshot;
    if (!snapshot) return;
    const next = conditionFor(snapshot);
    const current = this.condition;
    if (!current || current.status !== next.status) {
      this.transitionAt = this.now();
      // A transition of our own overrides whatever time the node showed.
      if (current) this.transitionAdopted = true;
    }
    if (!current || current.status !== next.status || current.reason !== next.reason || current.message !== next.message) {
      this.condition = next;
      this.conditionVersion += 1;
    }
    const deviceCount = snapshot.resources.reduce((n, r) => n + r.devices.length, 0);
    const labels = labelsFor(this.capabilities, deviceCount);
    if (JSON.stringify(labels) !== JSON.stringify(this.labels)) {
      this.labels = labels;
      this.labelsVersion += 1;
    }
  }

  private enqueueEvent(transition: DeviceTransition): void {
    const key = `${transition.type}|${transition.reason}|${transition.message}`;
    const at = this.now();
    const existing = this.eventQueue.get(key);
    if (existing) {
      existing.count += 1;
      existing.last = at;
    } else {
      if (this.eventQueue.size >= this.maxPendingEvents) {
        const oldest = this.eventQueue.keys().next();
        if (!oldest.done) {
          this.eventQueue.delete(oldest.value);
          this.droppedEvents += 1;
        }
      }
      this.eventQueue.set(key, { key, ...transition, count: 1, first: at, last: at });
    }
    if (this.eventsDueAt === null) this.eventsDueAt = Date.now() + this.eventCoalesceMs;
  }

  private isSynced(): boolean {
    return (
      this.snapshot !== null &&
      this.conditionSent === this.conditionVersion &&
      this.labelsSent === this.labelsVersion &&
      this.eventQueue.size === 0
    );
  }

  // ---- the worker ------------------------------------------------------------------------------

  /** Runs the worker after `delayMs`, unless it runs already (then once more after) or we are backing off. */
  private schedule(delayMs: number): void {
    if (this.stopped) return;
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

  private afterRun(): void {
    if (this.stopped || this.inBackoff) return;
    if (this.rerun) {
      this.rerun = false;
      this.arm(0);
    } else if (this.eventQueue.size > 0) {
      this.arm(Math.max(0, (this.eventsDueAt ?? 0) - Date.now()));
    }
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private async run(): Promise<void> {
    if (this.stopped || !this.snapshot) return;
    try {
      await this.syncOnce();
      this.succeeded();
    } catch (err) {
      if (this.stopped || err instanceof Stopped) return;
      this.failed(err);
    }
  }

  private async syncOnce(): Promise<void> {
    const api = this.client();
    if (!this.nodeRead) await this.readNode(api);
    if (this.conditionSent !== this.conditionVersion) await this.writeCondition(api);
    if (this.labelsSent !== this.labelsVersion) await this.writeLabels(api);
    if (this.eventQueue.size > 0) {
      const wait = (this.eventsDueAt ?? 0) - Date.now();
      // After a failure the queue goes out with the first successful attempt.
      if (wait <= 0 || this.consecutiveFailures > 0) await this.writeEvents(api);
    }
  }

  private succeeded(): void {
    const wasDegraded = this.reportingState === 'degraded';
    const failures = this.consecutiveFailures;
    this.consecutiveFailures = 0;
    this.lastSuccessAt = this.now();
    if (wasDegraded) {
      const pausedForMs = this.pausedAt ? this.now().getTime() - this.pausedAt.getTime() : undefined;
      this.logger.info({ failedAttempts: failures, pausedForMs }, 'Node reporting resumed');
      this.lastLoggedKind = null;
      this.pausedAt = null;
    }
    if (this.droppedEvents > this.droppedLogged) {
      this.logger.warn(
        { droppedEvents: this.droppedEvents - this.droppedLogged },
        'Dropped node events while the Kubernetes API was unavailable; the Node condition still shows the current state',
      );
      this.droppedLogged = this.droppedEvents;
    }
    if (this.conditionSent === this.conditionVersion && this.labelsSent === this.labelsVersion) {
      if (this.reportingState === 'pending') {
        this.logger.info(
          { conditionType: this.conditionType, eventNamespace: this.eventNamespace },
          'Reporting node health to the Kubernetes API',
        );
      }
      this.setState('ok');
    }
  }

  private failed(err: unknown): void {
    const detail =
      err instanceof RequestFailure
        ? err.detail
        : { kind: 'clientError' as const, operation: 'report', message: (err as Error)?.message ?? String(err) };
    const error: ReporterError = { ...detail, at: this.now() };
    this.lastError = error;
    this.consecutiveFailures += 1;
    this.options.onRequestError?.(error);
    const delay = this.backoffDelay(this.consecutiveFailures);
    if (this.reportingState !== 'degraded') {
      this.pausedAt = this.now();
      this.logger.warn(
        { errorKind: error.kind, operation: error.operation, statusCode: error.statusCode, err: error.message, retryInMs: delay },
        `${TRANSIENT_MESSAGES[error.kind]}; node reporting paused`,
      );
      this.lastLoggedKind = error.kind;
      this.setState('degraded');
    } else if (error.kind !== this.lastLoggedKind) {
      this.logger.warn(
        { errorKind: error.kind, operation: error.operation, statusCode: error.statusCode, err: error.message, retryInMs: delay },
        `${TRANSIENT_MESSAGES[error.kind]}; node reporting still paused`,
      );
      this.lastLoggedKind = error.kind;
    }
    if (error.kind === 'config') this.api = null;
    // Whatever was reported meanwhile goes out with the retry.
    this.rerun = false;
    this.inBackoff = true;
    this.arm(delay);
  }

  /** Exponential, capped, with jitter either way (capped again). */
  backoffDelay(failures: number): number {
    const { initialMs, maxMs, factor, jitter } = this.backoff;
    const base = Math.min(maxMs, initialMs * factor ** Math.max(0, failures - 1));
    const spread = base * jitter * (this.random() * 2 - 1);
    return Math.max(0, Math.min(maxMs, Math.round(base + spread)));
  }

  private setState(state: ReportingState): void {
    if (state === this.reportingState) return;
    this.reportingState = state;
    this.stateSince = this.now();
    try {
      this.options.onStateChange?.(this.status());
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, 'Node reporting state hook failed');
    }
  }

  private scheduleHeartbeat(): void {
    if (this.heartbeatIntervalMs <= 0 || this.stopped) return;
    if (this.heartbeatTimer) clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = setTimeout(() => {
      this.heartbeatTimer = null;
      this.conditionVersion += 1;
      this.schedule(0);
    }, this.heartbeatIntervalMs);
    this.heartbeatTimer.unref?.();
  }

  // ---- requests --------------------------------------------------------------------------------

  private client(): CoreV1Api {
    if (this.api) return this.api;
    try {
      const source = this.options.kubeConfig;
      const kc = typeof source === 'function' ? source() : source;
      this.api = kc.makeApiClient(CoreV1Api);
      return this.api;
    } catch (err) {
      throw new RequestFailure({ kind: 'config', operation: 'loadConfig', message: (err as Error).message });
    }
  }

  /** One request with a deadline, cancellable by stop(), an optional patch content type, errors classified. */
  private async call<T>(operation: string, send: (options: ConfigurationOptions) => Promise<T>, contentType?: string): Promise<T> {
    if (this.stopped) throw new Stopped('node reporter stopped');
    const controller = new AbortController();
    this.inFlight.add(controller);
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error(`no answer within ${this.requestTimeoutMs} ms`));
    }, this.requestTimeoutMs);
    const middleware: ObservableMiddleware = {
      pre: (context: RequestContext) => {
        if (contentType) context.setHeaderParam('Content-Type', contentType);
        context.setSignal(controller.signal);
        return new Observable(Promise.resolve(context));
      },
      post: (context: ResponseContext) => new Observable(Promise.resolve(context)),
    };
    try {
      return await send({ middleware: [middleware], middlewareMergeStrategy: 'append' });
    } catch (err) {
      if (this.stopped) throw new Stopped('node reporter stopped');
      throw new RequestFailure(classify(operation, err, timedOut, this.requestTimeoutMs));
    } finally {
      clearTimeout(deadline);
      this.inFlight.delete(controller);
    }
  }

  private async readNode(api: CoreV1Api): Promise<void> {
    const node: V1Node = await this.call('getNode', (o) => api.readNode({ name: this.nodeName }, o));
    this.nodeUid = node.metadata?.uid;
    this.ownedLabels = new Set(Object.keys(node.metadata?.labels ?? {}).filter((k) => k.startsWith(LABEL_PREFIX)));
    const existing = node.status?.conditions?.find((c) => c.type === this.conditionType);
    // After a plugin restart the condition keeps its transition time when the status did not change.
    if (!this.transitionAdopted && existing && this.condition && existing.status === this.condition.status && existing.lastTransitionTime) {
      const at = new Date(existing.lastTransitionTime);
      if (!Number.isNaN(at.getTime())) this.transitionAt = at;
    }
    this.transitionAdopted = true;
    this.nodeRead = true;
    // Labels we own that are not wanted must go, even if our wish did not change.
    this.labelsSent = -1;
  }

  private async writeCondition(api: CoreV1Api): Promise<void> {
    const condition = this.condition;
    if (!condition) return;
    const version = this.conditionVersion;
    const body = {
      status: {
        conditions: [
          {
            type: this.conditionType,
            status: condition.status,
            reason: condition.reason,
            message: condition.message,
            lastHeartbeatTime: this.now().toISOString(),
            lastTransitionTime: (this.transitionAt ?? this.now()).toISOString(),
          },
        ],
      },
    };
    await this.call(
      'patchNodeStatus',
      (o) => api.patchNodeStatus({ name: this.nodeName, body, fieldManager: REPORTING_COMPONENT }, o),
      PatchStrategy.StrategicMergePatch,
    ).catch((err: unknown) => {
      if (err instanceof RequestFailure && err.detail.kind === 'notFound') this.nodeRead = false;
      throw err;
    });
    this.conditionSent = version;
    this.scheduleHeartbeat();
  }

  private async writeLabels(api: CoreV1Api): Promise<void> {
    const desired = this.labels;
    if (!desired) return;
    const version = this.labelsVersion;
    const patch: Record<string, string | null> = { ...desired };
    for (const key of this.ownedLabels) if (!(key in desired)) patch[key] = null;
    await this.call(
      'patchNodeLabels',
      (o) => api.patchNode({ name: this.nodeName, body: { metadata: { labels: patch } }, fieldManager: REPORTING_COMPONENT }, o),
      PatchStrategy.MergePatch,
    ).catch((err: unknown) => {
      if (err instanceof RequestFailure && err.detail.kind === 'notFound') this.nodeRead = false;
      throw err;
    });
    this.ownedLabels = new Set(Object.keys(desired));
    this.labelsSent = version;
  }

  /** Writes queued events, oldest first; a burst is summarised per reason and resource. */
  private async writeEvents(api: CoreV1Api): Promise<void> {
    this.eventsDueAt = null;
    let batch = [...this.eventQueue.values()];
    if (batch.length > this.maxEventsPerBurst) batch = this.summarise(batch);
    for (const pending of batch) {
      await this.writeEvent(api, pending);
      this.eventQueue.delete(pending.key);
    }
  }

  /** Replaces the queue by one event per (type, reason, resource). */
  private summarise(batch: PendingEvent[]): PendingEvent[] {
    const groups = new Map<string, PendingEvent[]>();
    for (const p of batch) {
      const key = `${p.type}|${p.reason}|${p.resource ?? ''}`;
      const list = groups.get(key) ?? [];
      list.push(p);
      groups.set(key, list);
    }
    this.eventQueue.clear();
    const out: PendingEvent[] = [];
    for (const list of groups.values()) {
      const first = list[0];
      if (!first) continue;
      const merged: PendingEvent =
        list.length === 1
          ? first
          : {
              ...first,
              message: summaryMessage(first.reason, first.resource, [...new Set(list.map((p) => p.device ?? '?'))]),
              count: list.reduce((n, p) => n + p.count, 0),
              first: new Date(Math.min(...list.map((p) => p.first.getTime()))),
              last: new Date(Math.max(...list.map((p) => p.last.getTime()))),
            };
      merged.key = `${merged.type}|${merged.reason}|${merged.message}`;
      this.eventQueue.set(merged.key, merged);
      out.push(merged);
    }
    return out;
  }

  private async writeEvent(api: CoreV1Api, pending: PendingEvent): Promise<void> {
    const series = this.eventSeries.get(pending.key);
    const fresh = series && pending.first.getTime() - series.lastTimestamp.getTime() <= this.eventAggregateWindowMs;
    if (series && fresh) {
      const count = series.count + pending.count;
      try {
        await this.call(
          'patchEvent',
          (o) =>
            api.patchNamespacedEvent(
              {
                name: series.name,
                namespace: this.eventNamespace,
                body: { count, lastTimestamp: pending.last.toISOString(), message: pending.message },
              },
              o,
            ),
          PatchStrategy.MergePatch,
        );
        series.count = count;
        series.lastTimestamp = pending.last;
        this.touchSeries(pending.key, series);
        return;
      } catch (err) {
        // The event expired (TTL) or was deleted: start a new series.
        if (!(err instanceof RequestFailure && err.detail.kind === 'notFound')) throw err;
        this.eventSeries.delete(pending.key);
      }
    }
    const name = `${this.nodeName}.${Date.now().toString(16)}${randomBytes(4).toString('hex')}`;
    const event: CoreV1Event = {
      metadata: { name, namespace: this.eventNamespace },
      involvedObject: {
        apiVersion: 'v1',
        kind: 'Node',
        name: this.nodeName,
        ...(this.nodeUid ? { uid: this.nodeUid } : {}),
      },
      reason: pending.reason,
      message: truncate(pending.message, MAX_EVENT_MESSAGE),
      type: pending.type,
      count: pending.count,
      firstTimestamp: pending.first,
      lastTimestamp: pending.last,
      source: { component: REPORTING_COMPONENT, host: this.nodeName },
      reportingComponent: REPORTING_COMPONENT,
      reportingInstance: this.nodeName,
    };
    await this.call('createEvent', (o) => api.createNamespacedEvent({ namespace: this.eventNamespace, body: event }, o));
    this.touchSeries(pending.key, { name, count: pending.count, firstTimestamp: pending.first, lastTimestamp: pending.last });
  }

  /** Remembers a series, keeping the most recent few hundred. */
  private touchSeries(key: string, series: EventSeries): void {
    this.eventSeries.delete(key);
    this.eventSeries.set(key, series);
    while (this.eventSeries.size > 256) {
      const oldest = this.eventSeries.keys().next();
      if (oldest.done) break;
      this.eventSeries.delete(oldest.value);
    }
  }
}

/** Throws on a snapshot the reporter cannot use, before anything of it is taken. */
function checkSnapshot(snapshot: NodeSnapshot): void {
  if (typeof snapshot !== 'object' || snapshot === null || !Array.isArray(snapshot.resources)) {
    throw new Error('a node snapshot needs a resources array');
  }
  for (const resource of snapshot.resources) {
    if (typeof resource?.name !== 'string' || !Array.isArray(resource.devices)) {
      throw new Error('each resource of a node snapshot needs a name and a devices array');
    }
    for (const device of resource.devices) {
      if (typeof device?.id !== 'string' || typeof device.healthy !== 'boolean') {
        throw new Error(`a device of resource ${resource.name} needs a string id and a boolean healthy`);
      }
    }
  }
  if (snapshot.conflicts !== undefined && !Array.isArray(snapshot.conflicts)) {
    throw new Error('the conflicts of a node snapshot must be an array');
  }
}

/** Sorts a failed request into what an operator can do about it. */
function classify(operation: string, err: unknown, timedOut: boolean, timeoutMs: number): Omit<ReporterError, 'at'> {
  return classifyApiError(operation, err, timedOut, timeoutMs);
}
