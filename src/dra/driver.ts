// The DRA front end: a kubelet plugin over the shared inventory. It serves the
// DRA service (before the registration socket appears, so the kubelet's dial
// back always finds it), registers through the plugin registry, publishes the
// node's pool as ResourceSlices and streams device health. It owns no devices
// of its own: every group comes from the inventory, every preparation from the
// preparer the device plugin front end uses too.
import { watch, type FSWatcher } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ResourceConfig } from '../config/schema.js';
import type { AdvertisedDevice } from '../inventory/advertised.js';
import type { InventoryState } from '../inventory/inventory.js';
import { ClaimSpecDirectory } from '../cdi/claim-specs.js';
import { CHECKPOINT_NAME, DRA_SOCKET_NAME, registrationSocketName } from './constants.js';
import { Checkpoint } from './checkpoint.js';
import { ClaimState, type ClaimPreparation, type ClaimSource, type PrepareResult } from './claim-state.js';
import type { ManagedBinding } from './claim-rebinding.js';
import type { ClaimRef } from './claim-allocation.js';
import { deviceNameOf } from './device-name.js';
import { HealthStream } from './health-stream.js';
import { DraPluginServer } from './plugin-server.js';
import { DraRegistration, type RegistrationStatusReport } from './registration.js';
import type { IommuVerification, PublishedDevice } from './slices.js';

/** What the driver needs of the slice publisher. */
export interface SlicePublishing {
  start(): Promise<void>;
  update(devices: PublishedDevice[]): void;
  stop(): Promise<void>;
}

export interface DraDriverOptions {
  driver: string;
  /** This node: the pool's name. */
  nodeName: string;
  /** The kubelet's plugin registry directory. */
  registryDir: string;
  /** The driver's own directory (service socket, checkpoint). */
  driverDir: string;
  cdiSpecDir: string;
  resources: readonly ResourceConfig[];
  preparation: ClaimPreparation;
  /** Reads a claim from the API server. */
  claims: ClaimSource;
  /** Publishes the pool; null runs without the API (tests of the kubelet side). */
  slices: SlicePublishing | null;
  /** What the last verification of a group learned, for the device attributes. */
  verification?: (group: number) => IommuVerification | undefined;
  /** Moves groups of managed resources between host drivers and vfio-pci. */
  binding?: ManagedBinding;
  /** A group moved between drivers (rescan the topology now rather than at the next poll). */
  onRebound?: () => void;
  /** A rebinding failed: the daemon makes it a Node Event. */
  onRebindFailure?: (failure: { group: number; resource: string; device: string; message: string }) => void;
  logger?: Logger;
  /** How often the sockets are checked when no directory event came (default 1 s). */
  checkIntervalMs?: number;
  healthResendMs?: number;
}

export interface DraStatus {
  registration: RegistrationStatusReport;
  serving: boolean;
  preparedClaims: number;
  healthStreams: number;
}

export class DraDriver {
  private readonly logger: Logger;
  readonly health: HealthStream;
  readonly claims: ClaimState;
  readonly server: DraPluginServer;
  readonly registration: DraRegistration;
  private devices = new Map<string, { resource: ResourceConfig; device: AdvertisedDevice }>();
  private lastState: InventoryState | null = null;
  private watcher: FSWatcher | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private checking: Promise<void> | null = null;
  private stopped = false;
  private started = false;

  constructor(private readonly options: DraDriverOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'dra', driver: options.driver });
    this.health = new HealthStream({ logger: options.logger ?? silentLogger(), ...(options.healthResendMs ? { resendMs: options.healthResendMs } : {}) });
    this.claims = new ClaimState({
      driver: options.driver,
      pool: options.nodeName,
      checkpoint: new Checkpoint(options.driverDir, CHECKPOINT_NAME, options.driver),
      cdi: new ClaimSpecDirectory(options.cdiSpecDir, options.driver),
      claims: options.claims,
      lookup: (name) => this.devices.get(name),
      preparation: options.preparation,
      ...(options.binding ? { binding: options.binding } : {}),
      rebinding: {
        changed: () => {
          this.refresh();
          this.options.onRebound?.();
        },
        failed: (group, resource, message) => {
          const device = [...this.devices].find(([, d]) => d.device.group.id === group)?.[0] ?? `group-${group}`;
          this.options.onRebindFailure?.({ group, resource, device, message });
        },
      },
      logger: options.logger ?? silentLogger(),
    });
    const socketPath = join(options.driverDir, DRA_SOCKET_NAME);
    this.server = new DraPluginServer({
      socketPath,
      claims: {
        prepare: (ref: ClaimRef): Promise<PrepareResult> => this.claims.prepare(ref),
        unprepare: (ref: ClaimRef) => this.claims.unprepare(ref),
      },
      health: this.health,
      logger: options.logger ?? silentLogger(),
    });
    this.registration = new DraRegistration({
      socketPath: join(options.registryDir, registrationSocketName(options.driver)),
      driver: options.driver,
      endpoint: socketPath,
      logger: options.logger ?? silentLogger(),
    });
  }

  /** Offers an inventory state: device lookup for prepare, the health stream, the published pool. */
  apply(state: InventoryState): void {
    this.lastState = state;
    const devices = new Map<string, { resource: ResourceConfig; device: AdvertisedDevice }>();
    const published: PublishedDevice[] = [];
    const rebinding = this.claims.rebinding();
    for (const resource of this.options.resources) {
      for (const device of state.byResource.get(resource.name) ?? []) {
        const name = deviceNameOf(device.group);
        if (devices.has(name)) {
          // Two groups whose first endpoints share an address cannot happen on one node; never publish a duplicate name.
          this.logger.error({ device: name, group: device.group.id }, 'Two IOMMU groups map to one device name; publishing the first');
          continue;
        }
        devices.set(name, { resource, device });
        const verification = this.options.verification?.(device.group.id);
        const managed = resource.binding?.mode === 'managed';
        const moving = rebinding.moving.get(device.group.id);
        const failure = rebinding.failed.get(device.group.id);
        published.push({
          resource: resource.name,
          device,
          ...(verification ? { verification } : {}),
          ...(managed ? { binding: 'managed' as const } : {}),
          ...(moving ? { rebinding: moving } : {}),
          ...(failure !== undefined ? { rebindFailure: failure } : {}),
        });
      }
    }
    this.devices = devices;
    this.health.set(
      [...devices].map(([name, { device }]) => ({
        pool: this.options.nodeName,
        device: name,
        healthy: device.healthy,
        message: device.healthy ? '' : (device.reason ?? 'unhealthy'),
      })),
    );
    this.options.slices?.update(published);
  }

  /** Publishes again with what verifications learned since (new attributes). */
  refresh(): void {
    if (this.lastState) this.apply(this.lastState);
  }

  /**
   * Restores prepared claims, serves the DRA service, then the registration
   * socket, then starts publishing. Returns once the kubelet can find us;
   * publishing goes on in the background (API errors are retried there).
   */
  async start(): Promise<void> {
    if (this.stopped) return;
    await mkdir(this.options.driverDir, { recursive: true, mode: 0o750 });
    await mkdir(this.options.registryDir, { recursive: true });
    await this.claims.start();
    if (this.stopped) return;
    await this.server.start();
    if (this.stopped) return;
    await this.registration.start();
    this.started = true;
    this.logger.info({ registration: this.registration.socketPath, service: this.server.socketPath }, 'Serving the DRA kubelet plugin');
    this.startWatching();
    this.pollTimer = setInterval(() => this.scheduleCheck(), this.options.checkIntervalMs ?? 1000);
    this.pollTimer.unref();
    await this.options.slices?.start();
  }

  private startWatching(): void {
    if (this.watcher || this.stopped) return;
    try {
      this.watcher = watch(this.options.registryDir, { persistent: false }, () => this.scheduleCheck());
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = null;
      });
    } catch (err) {
      this.logger.warn({ dir: this.options.registryDir, err: (err as Error).message }, 'Cannot watch the plugin registry directory; checking it periodically');
    }
  }

  /** Serves a socket again when someone removed it (a kubelet cleaning up, an operator). */
  private scheduleCheck(): void {
    if (this.stopped || !this.started || this.checking) return;
    this.checking = this.check()
      .catch((err: unknown) => this.logger.error({ err: (err as Error).message }, 'Socket check failed'))
      .finally(() => {
        this.checking = null;
      });
  }

  private async check(): Promise<void> {
    if (!this.watcher) this.startWatching();
    if (!(await this.server.socketPresent()) && !this.stopped) {
      this.logger.warn({ socket: this.server.socketPath }, 'The DRA service socket was removed; serving it again');
      await this.server.stop();
      if (!this.stopped) await this.server.start();
    }
    if (!(await this.registration.socketPresent()) && !this.stopped) {
      this.logger.warn({ socket: this.registration.socketPath }, 'The registration socket was removed; serving it again so the kubelet registers the driver');
      await this.registration.restart();
    }
  }

  /** Checks the sockets now, after any check under way (tests). */
  async checkNow(): Promise<void> {
    await this.checking;
    this.scheduleCheck();
    await this.checking;
  }

  readiness(): { name: string; registered: boolean }[] {
    return [{ name: this.options.driver, registered: this.registration.report().registered }];
  }

  status(): DraStatus {
    return {
      registration: this.registration.report(),
      serving: this.server.running,
      preparedClaims: this.claims.prepared().size,
      healthStreams: this.health.streams,
    };
  }

  /**
   * Stops answering the kubelet: the registration socket first (the kubelet
   * deregisters us), then the service after calls in flight finished. Prepared
   * claims stay in the checkpoint; slices stay for the next run to replace.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    await this.checking;
    await this.registration.stop();
    this.health.close();
    await this.server.stop();
    await this.claims.idle();
    await this.options.slices?.stop();
  }
}
