// The handoff mode as the daemon runs it: the manager plus the PodResources
// poller that tells it which group sets no pod holds any more.
import type { Logger } from '../log.js';
import type { ResourceConfig } from '../config/schema.js';
import type { IommuGroup } from '../topology/types.js';
import type { AllocationExtra } from '../prepare/types.js';
import { PodResourcesClient, PodResourcesPoller } from '../kubelet/pod-resources.js';
import { HandoffManager, type HandoffManagerOptions } from './manager.js';

export { DEFAULT_HANDOFF_HOST_DIR, DEFAULT_HANDOFF_CONTAINER_DIR } from './paths.js';

export interface HandoffServiceOptions extends HandoffManagerOptions {
  /** The kubelet's PodResources socket; null turns PodResources-driven release off. */
  podResourcesSocket: string | null;
  podResourcesIntervalMs?: number;
  podResourcesMaxBackoffMs?: number;
}

export class HandoffService {
  readonly manager: HandoffManager;
  readonly poller: PodResourcesPoller | null;
  private readonly client: PodResourcesClient | null;
  private readonly logger: Logger | undefined;

  constructor(options: HandoffServiceOptions) {
    this.manager = new HandoffManager(options);
    this.logger = options.logger;
    this.client = options.podResourcesSocket ? new PodResourcesClient(options.podResourcesSocket) : null;
    this.poller = this.client
      ? new PodResourcesPoller({
          client: this.client,
          onSnapshot: (snapshot) => this.manager.reconcile(snapshot),
          ...(options.podResourcesIntervalMs !== undefined ? { intervalMs: options.podResourcesIntervalMs } : {}),
          ...(options.podResourcesMaxBackoffMs !== undefined ? { maxBackoffMs: options.podResourcesMaxBackoffMs } : {}),
          ...(options.logger ? { logger: options.logger } : {}),
        })
      : null;
  }

  /** Adopts directories of a previous run, then starts polling PodResources. */
  async start(): Promise<void> {
    await this.manager.start();
    this.poller?.start();
    this.logger?.info({ podResources: this.client?.socketPath ?? null }, 'Handoff mode started');
  }

  /** Allocate's additions for the containers of one request. */
  async extendAllocation(resource: ResourceConfig, containers: IommuGroup[][]): Promise<AllocationExtra[]> {
    const extras: AllocationExtra[] = [];
    for (const groups of containers) extras.push(await this.manager.allocate(resource, groups));
    return extras;
  }

  preStart(resource: ResourceConfig, groups: IommuGroup[]): Promise<void> {
    return this.manager.preStart(resource, groups);
  }

  /** Done with a group set (a DRA claim was unprepared): release it and remove its directories. */
  release(resourceName: string, groups: readonly number[]): Promise<void> {
    return this.manager.forget(resourceName, groups, 'its claim was unprepared');
  }

  /** Releases every unclaimed preparation and closes every socket. */
  async stop(): Promise<void> {
    await this.poller?.stop();
    this.client?.close();
    await this.manager.stop();
  }
}
