// The node's Events for device transitions: queued and coalesced (a burst becomes one write per
// kind, a large burst one summary per reason and resource), bounded while the API is unavailable,
// and aggregated into series (a repeat within the window increments the count of the Event).
import { randomBytes } from 'node:crypto';
import { PatchStrategy, type CoreV1Api, type CoreV1Event } from '@kubernetes/client-node';
import { summaryMessage, truncate, MAX_EVENT_MESSAGE, type DeviceTransition, type EventReason } from './node-report.js';
import { isNotFound, REPORTING_COMPONENT, type ReporterRequests } from './reporter-requests.js';

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

export interface NodeEventsOptions {
  nodeName: string;
  namespace: string;
  coalesceMs: number;
  maxPerBurst: number;
  aggregateWindowMs: number;
  maxPending: number;
  now: () => Date;
}

export class NodeEvents {
  private readonly queue = new Map<string, PendingEvent>();
  private readonly series = new Map<string, EventSeries>();
  /** When the queued events are due (Date.now() milliseconds), or null when none waits. */
  dueAt: number | null = null;
  /** Events dropped because the queue overflowed. */
  dropped = 0;

  constructor(private readonly options: NodeEventsOptions) {}

  /** Events waiting to be written. */
  get pending(): number {
    return this.queue.size;
  }

  enqueue(transition: DeviceTransition): void {
    const key = `${transition.type}|${transition.reason}|${transition.message}`;
    const at = this.options.now();
    const existing = this.queue.get(key);
    if (existing) {
      existing.count += 1;
      existing.last = at;
    } else {
      if (this.queue.size >= this.options.maxPending) {
        const oldest = this.queue.keys().next();
        if (!oldest.done) {
          this.queue.delete(oldest.value);
          this.dropped += 1;
        }
      }
      this.queue.set(key, { key, ...transition, count: 1, first: at, last: at });
    }
    if (this.dueAt === null) this.dueAt = Date.now() + this.options.coalesceMs;
  }

  /** Writes queued events, oldest first; a burst is summarised per reason and resource. */
  async write(api: CoreV1Api, requests: ReporterRequests, nodeUid: string | undefined): Promise<void> {
    this.dueAt = null;
    let batch = [...this.queue.values()];
    if (batch.length > this.options.maxPerBurst) batch = this.summarise(batch);
    for (const pending of batch) {
      await this.writeEvent(api, requests, nodeUid, pending);
      this.queue.delete(pending.key);
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
    this.queue.clear();
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
      this.queue.set(merged.key, merged);
      out.push(merged);
    }
    return out;
  }

  private async writeEvent(api: CoreV1Api, requests: ReporterRequests, nodeUid: string | undefined, pending: PendingEvent): Promise<void> {
    const { nodeName, namespace } = this.options;
    const series = this.series.get(pending.key);
    const fresh = series && pending.first.getTime() - series.lastTimestamp.getTime() <= this.options.aggregateWindowMs;
    if (series && fresh) {
      const count = series.count + pending.count;
      try {
        await requests.call(
          'patchEvent',
          (o) =>
            api.patchNamespacedEvent(
              {
                name: series.name,
                namespace,
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
        if (!isNotFound(err)) throw err;
        this.series.delete(pending.key);
      }
    }
    const name = `${nodeName}.${Date.now().toString(16)}${randomBytes(4).toString('hex')}`;
    const event: CoreV1Event = {
      metadata: { name, namespace },
      involvedObject: {
        apiVersion: 'v1',
        kind: 'Node',
        name: nodeName,
        ...(nodeUid ? { uid: nodeUid } : {}),
      },
      reason: pending.reason,
      message: truncate(pending.message, MAX_EVENT_MESSAGE),
      type: pending.type,
      count: pending.count,
      firstTimestamp: pending.first,
      lastTimestamp: pending.last,
      source: { component: REPORTING_COMPONENT, host: nodeName },
      reportingComponent: REPORTING_COMPONENT,
      reportingInstance: nodeName,
    };
    await requests.call('createEvent', (o) => api.createNamespacedEvent({ namespace, body: event }, o));
    this.touchSeries(pending.key, { name, count: pending.count, firstTimestamp: pending.first, lastTimestamp: pending.last });
  }

  /** Remembers a series, keeping the most recent few hundred. */
  private touchSeries(key: string, series: EventSeries): void {
    this.series.delete(key);
    this.series.set(key, series);
    while (this.series.size > 256) {
      const oldest = this.series.keys().next();
      if (oldest.done) break;
      this.series.delete(oldest.value);
    }
  }
}
