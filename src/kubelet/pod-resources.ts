// A client of the kubelet's PodResources API (v1 List over its unix socket):
// which containers hold which devices. Polled gently: one List at a time, at
// most one per interval (the kubelet allows about 100 qps with a burst of 10),
// and on failures the interval doubles up to a ceiling.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { podResourcesProto } from './proto.js';
import type { PodResourcesListerClient } from '../generated/v1/PodResourcesLister.js';
import type { ListPodResourcesResponse__Output } from '../generated/v1/ListPodResourcesResponse.js';

/** Device IDs held per resource, when the listing was asked for. */
export interface DevicesInUseSnapshot {
  takenAtMs: number;
  byResource: Map<string, Set<string>>;
  /**
   * Per resource, the device ID set of each container holding some, as its IDs
   * sorted (numerically when all are numbers, as IOMMU group IDs are) and
   * joined by ",".
   */
  groupSets: Map<string, Set<string>>;
}

/** The key of a device ID set: sorted numerically when every ID is a number, else as strings. */
export function deviceSetKey(ids: readonly string[]): string {
  const numeric = ids.every((id) => /^\d+$/.test(id));
  return [...new Set(ids)].sort(numeric ? (a, b) => Number(a) - Number(b) : undefined).map((id) => (numeric ? String(Number(id)) : id)).join(',');
}

export function devicesInUse(response: ListPodResourcesResponse__Output, takenAtMs: number): DevicesInUseSnapshot {
  const byResource = new Map<string, Set<string>>();
  const groupSets = new Map<string, Set<string>>();
  for (const pod of response.pod_resources ?? []) {
    for (const container of pod.containers ?? []) {
      // A container may list one resource in several entries: one set per container and resource.
      const perResource = new Map<string, string[]>();
      for (const devices of container.devices ?? []) {
        let set = byResource.get(devices.resource_name);
        if (!set) byResource.set(devices.resource_name, (set = new Set()));
        for (const id of devices.device_ids ?? []) set.add(id);
        const ids = perResource.get(devices.resource_name) ?? [];
        ids.push(...(devices.device_ids ?? []));
        perResource.set(devices.resource_name, ids);
      }
      for (const [resource, ids] of perResource) {
        if (ids.length === 0) continue;
        let sets = groupSets.get(resource);
        if (!sets) groupSets.set(resource, (sets = new Set()));
        sets.add(deviceSetKey(ids));
      }
    }
  }
  return { takenAtMs, byResource, groupSets };
}

export class PodResourcesClient {
  private client: PodResourcesListerClient | null = null;

  constructor(
    readonly socketPath: string,
    private readonly timeoutMs = 5000,
  ) {}

  private lister(): PodResourcesListerClient {
    this.client ??= new (podResourcesProto().v1.PodResourcesLister)(`unix:${this.socketPath}`, grpc.credentials.createInsecure(), {
      // The kubelet is local: fail fast rather than queue while it restarts.
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 5000,
    });
    return this.client;
  }

  /** One List call. */
  list(): Promise<ListPodResourcesResponse__Output> {
    const client = this.lister();
    return new Promise((resolve, reject) => {
      client.List({}, { deadline: Date.now() + this.timeoutMs }, (err, response) => {
        if (err || !response) reject(err ?? new Error('PodResources List returned nothing'));
        else resolve(response);
      });
    });
  }

  close(): void {
    this.client?.close();
    this.client = null;
  }
}

export interface PodResourcesPollerOptions {
  client: Pick<PodResourcesClient, 'list'>;
  onSnapshot: (snapshot: DevicesInUseSnapshot) => Promise<void> | void;
  /** Between successful polls (default 10 s). */
  intervalMs?: number;
  /** Ceiling of the backoff after failures (default 60 s). */
  maxBackoffMs?: number;
  logger?: Logger;
  now?: () => number;
}

/** Polls List and hands each listing on; never two calls at once. */
export class PodResourcesPoller {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = true;
  private failures = 0;
  private readonly logger: Logger;
  /** Successful polls so far (tests). */
  polls = 0;
  /** Listings whose handler threw (tests). */
  reconcileFailures = 0;

  constructor(private readonly options: PodResourcesPollerOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'pod-resources' });
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.pollNow();
    }, ms);
    this.timer.unref();
  }

  /** Polls now unless a poll is running (then waits for that one). */
  pollNow(): Promise<void> {
    if (this.running) return this.running;
    this.running = this.poll().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async poll(): Promise<void> {
    const interval = this.options.intervalMs ?? 10_000;
    const now = this.options.now ?? Date.now;
    const takenAtMs = now();
    let response: ListPodResourcesResponse__Output;
    try {
      response = await this.options.client.list();
    } catch (err) {
      this.failures += 1;
      const backoff = Math.min(interval * 2 ** Math.min(this.failures, 10), this.options.maxBackoffMs ?? 60_000);
      const fields = { failures: this.failures, retryInMs: backoff, err: (err as Error).message };
      // No socket at all is a kubelet not up yet (or none, on the simulated node): expected, not a fault.
      const absent = /\bENOENT\b/.test(fields.err);
      if (this.failures === 1 && absent) this.logger.info(fields, 'Waiting for the kubelet: no PodResources socket yet; unclaimed handoffs are released by their timeout meanwhile');
      else if (this.failures === 1) this.logger.warn(fields, 'PodResources List failed; unclaimed handoffs are released by their timeout meanwhile');
      else this.logger.debug(fields, 'PodResources List failed again');
      this.schedule(backoff);
      return;
    }
    if (this.failures > 0) this.logger.info({ failures: this.failures }, 'PodResources answers again');
    this.failures = 0;
    this.polls += 1;
    try {
      await this.options.onSnapshot(devicesInUse(response, takenAtMs));
    } catch (err) {
      // The kubelet answered; acting on the answer failed. Not a List failure: no backoff.
      this.reconcileFailures += 1;
      this.logger.error({ err: (err as Error).message }, 'Acting on a PodResources listing failed; trying again at the next poll');
    }
    this.schedule(interval);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running?.catch(() => undefined);
  }
}
