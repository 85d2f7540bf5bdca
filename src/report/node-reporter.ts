// Tells the Kubernetes API what the plugin sees on this node: a Node condition
// of our own type, Events for device transitions and labels for capabilities.
// The API server is a best-effort audience: the plugin's job is serving the
// kubelet, so nothing here ever throws into the caller or blocks it. One worker
// sends the latest desired state; failures back off exponentially (with jitter)
// and are logged once per change of state, not per attempt.
//
// The parts: the condition (node-condition.ts), the Events and their aggregation (node-events.ts),
// the labels (node-labels.ts), the requests and their classification (reporter-requests.ts,
// api-errors.ts) and the backoff (reporter-backoff.ts). This file holds the worker that sends them.
import type { CoreV1Api, KubeConfig, V1Node } from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ApiErrorKind } from './api-errors.js';
import { NodeConditionReport } from './node-condition.js';
import { NodeEvents } from './node-events.js';
import { NodeLabelsReport } from './node-labels.js';
import { CONDITION_TYPE, transitionsBetween, type DeviceTransition } from './node-report.js';
import { backoffDelay, backoffWithDefaults, TRANSIENT_MESSAGES, type BackoffSettings } from './reporter-backoff.js';
import { isNotFound, ReporterRequests, RequestFailure, Stopped, type ReporterError } from './reporter-requests.js';
import type { NodeCapabilities, NodeSnapshot } from './snapshot.js';

export type { ApiErrorKind } from './api-errors.js';
export type { BackoffSettings } from './reporter-backoff.js';
export { loadKubeConfig, REPORTING_COMPONENT, type ReporterError } from './reporter-requests.js';

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

export class NodeReporter {
  private readonly logger: Logger;
  private readonly nodeName: string;
  private readonly eventNamespace: string;
  private readonly heartbeatIntervalMs: number;
  private readonly backoff: Required<BackoffSettings>;
  private readonly now: () => Date;
  private readonly random: () => number;
  private readonly options: NodeReporterOptions;
  private readonly requests: ReporterRequests;

  private snapshot: NodeSnapshot | null = null;
  private capabilities: NodeCapabilities = {};
  private readonly condition: NodeConditionReport;
  private readonly labels: NodeLabelsReport;
  private readonly events: NodeEvents;

  // What the node looked like when we read it.
  private nodeRead = false;
  private nodeUid: string | undefined;

  private reportingState: ReportingState = 'pending';
  private stateSince: Date;
  private lastError: ReporterError | null = null;
  private lastLoggedKind: ApiErrorKind | null = null;
  private lastSuccessAt: Date | null = null;
  private consecutiveFailures = 0;
  private pausedAt: Date | null = null;
  private droppedLogged = 0;

  private timer: NodeJS.Timeout | null = null;
  private timerAt = 0;
  private inBackoff = false;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private rerun = false;
  private stopped = false;

  constructor(options: NodeReporterOptions) {
    this.options = options;
    this.nodeName = options.nodeName;
    this.logger = (options.logger ?? silentLogger()).child({ room: 'report', node: options.nodeName });
    this.eventNamespace = options.eventNamespace ?? 'default';
    this.requests = new ReporterRequests(options.kubeConfig, options.requestTimeoutMs ?? 10_000);
    this.backoff = backoffWithDefaults(options.backoff);
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 300_000;
    this.now = options.now ?? (() => new Date());
    this.random = options.random ?? Math.random;
    this.condition = new NodeConditionReport(options.conditionType ?? CONDITION_TYPE, this.nodeName, this.now);
    this.labels = new NodeLabelsReport(this.nodeName);
    this.events = new NodeEvents({
      nodeName: this.nodeName,
      namespace: this.eventNamespace,
      coalesceMs: options.eventCoalesceMs ?? 1000,
      maxPerBurst: options.maxEventsPerBurst ?? 10,
      aggregateWindowMs: options.eventAggregateWindowMs ?? 600_000,
      maxPending: options.maxPendingEvents ?? 200,
      now: this.now,
    });
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
      for (const transition of transitions) this.events.enqueue(transition);
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
      this.events.enqueue(transition);
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
      pendingEvents: this.events.pending,
      droppedEvents: this.events.dropped,
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
    this.requests.stop();
    await this.running?.catch(() => undefined);
    this.setState('stopped');
  }

  // ---- desired state -------------------------------------------------------------------------

  // ---- desired state -------------------------------------------------------------------------

  private updateDesired(): void {
    const snapshot = this.snapshot;
    if (!snapshot) return;
    this.condition.update(snapshot);
    const deviceCount = snapshot.resources.reduce((n, r) => n + r.devices.length, 0);
    this.labels.update(this.capabilities, deviceCount);
  }

  private isSynced(): boolean {
    return this.snapshot !== null && this.condition.synced && this.labels.synced && this.events.pending === 0;
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
    } else if (this.events.pending > 0) {
      this.arm(Math.max(0, (this.events.dueAt ?? 0) - Date.now()));
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
    const api = this.requests.client();
    if (!this.nodeRead) await this.readNode(api);
    if (!this.condition.synced && (await this.condition.write(api, this.requests).catch(this.nodeLost))) this.scheduleHeartbeat();
    if (!this.labels.synced) await this.labels.write(api, this.requests).catch(this.nodeLost);
    if (this.events.pending > 0) {
      const wait = (this.events.dueAt ?? 0) - Date.now();
      // After a failure the queue goes out with the first successful attempt.
      if (wait <= 0 || this.consecutiveFailures > 0) await this.events.write(api, this.requests, this.nodeUid);
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
    if (this.events.dropped > this.droppedLogged) {
      this.logger.warn(
        { droppedEvents: this.events.dropped - this.droppedLogged },
        'Dropped node events while the Kubernetes API was unavailable; the Node condition still shows the current state',
      );
      this.droppedLogged = this.events.dropped;
    }
    if (this.condition.synced && this.labels.synced) {
      if (this.reportingState === 'pending') {
        this.logger.info(
          { conditionType: this.condition.conditionType, eventNamespace: this.eventNamespace },
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
    if (error.kind === 'config') this.requests.dropClient();
    // Whatever was reported meanwhile goes out with the retry.
    this.rerun = false;
    this.inBackoff = true;
    this.arm(delay);
  }

  /** Exponential, capped, with jitter either way (capped again). */
  backoffDelay(failures: number): number {
    return backoffDelay(this.backoff, failures, this.random);
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
      this.condition.heartbeat();
      this.schedule(0);
    }, this.heartbeatIntervalMs);
    this.heartbeatTimer.unref?.();
  }

  // ---- requests --------------------------------------------------------------------------------

  private async readNode(api: CoreV1Api): Promise<void> {
    const node: V1Node = await this.requests.call('getNode', (o) => api.readNode({ name: this.nodeName }, o));
    this.nodeUid = node.metadata?.uid;
    this.labels.adopt(node);
    this.condition.adopt(node);
    this.nodeRead = true;
  }

  /** A node the API server no longer knows is read again before the next write. */
  private readonly nodeLost = (err: unknown): never => {
    if (isNotFound(err)) this.nodeRead = false;
    throw err;
  };
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
