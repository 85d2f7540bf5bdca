// Keeps one DevicePlugin server per configured resource served and registered
// for as long as the plugin runs: across kubelet restarts (which delete our
// sockets), ended ListAndWatch streams and a kubelet that is not up yet.
import { watch, type FSWatcher } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ResourceConfig } from '../config/schema.js';
import type { SelectionConflict } from '../config/selection.js';
import type { IommuGroup, Topology } from '../topology/types.js';
import type { GroupHealth } from '../health/group-health.js';
import type { AdvertisedDevice } from '../inventory/advertised.js';
import { Inventory, type InventorySnapshot, type InventoryState } from '../inventory/inventory.js';
import type { AllocationExtra, Preparer } from '../prepare/types.js';
import { DevicePluginServer, type AllocationExtender, type PreStartHook } from './device-plugin-server.js';
import { registerWithKubelet } from './registration.js';
import { KUBELET_SOCKET_NAME } from './proto.js';
import { socketNameFor } from './socket-path.js';
import type { CdiSpecWriter } from '../cdi/spec-writer.js';

export interface PluginManagerOptions {
  /** The kubelet's device-plugins directory. */
  pluginDir: string;
  resources: readonly ResourceConfig[];
  preparer?: Preparer;
  logger?: Logger;
  /** How often to check the sockets when no watch event came (safety net). */
  checkIntervalMs?: number;
  /** First and largest delay between registration attempts. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Register deadline; the kubelet's own dial back allows 10 s. */
  registerTimeoutMs?: number;
  /** How long to wait for the kubelet's ListAndWatch after registering before registering again. */
  streamWatchdogMs?: number;
  /** When set, CDI specs are kept in step with the advertised groups and Allocate names CDI devices. */
  cdi?: CdiSpecWriter;
  /** Told on every successful registration, for metrics. */
  onRegistered?: (resource: string, reason: string) => void;
  /** Told once per new kubelet (a new kubelet.sock replaced the one we knew). */
  onKubeletRestart?: () => void;
  /** Additions to Allocate's answer for handoff resources (the per-allocation mount and env). */
  allocationExtender?: (resource: ResourceConfig, containers: IommuGroup[][]) => Promise<AllocationExtra[]>;
  /** A group's health; defaults to the stateless rules of group-health.ts. Ignored when `inventory` is given. */
  health?: (group: IommuGroup) => GroupHealth;
  /** The inventory shared with the rest of the daemon; a private one is made when absent. */
  inventory?: Inventory;
  /** Told after each successful Allocate with the groups of each container. */
  onAllocate?: (resource: string, containers: IommuGroup[][]) => void;
}

/** What the manager advertises now, per resource, for node reporting and metrics. */
export type AdvertisedSnapshot = InventorySnapshot;

/** A stream that ends within this time of its registration counts as flapping. */
const FLAP_WINDOW_MS = 30_000;

async function fileIdentity(path: string): Promise<string | null> {
  try {
    const s = await stat(path);
    return `${s.ino}:${s.ctimeMs}`;
  } catch {
    return null;
  }
}

class ResourceEndpoint {
  readonly server: DevicePluginServer;
  private generation = 0;
  private registeredKubelet: string | null = null;
  private failedKubelet: string | null = null;
  private running: Promise<void> | null = null;
  private pendingReason: string | null = null;
  private retryTimer: NodeJS.Timeout | null = null;
  private retryDelay: number;
  private closed = false;
  /** When the last registration succeeded, to tell a flapping stream from a long-lived one. */
  private registeredAt = 0;
  /** Delay before re-registering after a stream that ended soon after registration. */
  private flapDelay = 0;
  private flapTimer: NodeJS.Timeout | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  /** Aborted by close(): a Register call in flight is cancelled rather than waited out. */
  private readonly closing = new AbortController();
  registrations = 0;

  constructor(
    readonly resource: ResourceConfig,
    private readonly manager: PluginManager,
    private readonly opts: Required<Pick<PluginManagerOptions, 'pluginDir' | 'retryMinMs' | 'retryMaxMs' | 'registerTimeoutMs' | 'streamWatchdogMs'>> &
      Pick<PluginManagerOptions, 'onRegistered'>,
    preStart: PreStartHook | undefined,
    private readonly logger: Logger,
    cdi: boolean,
    onAllocate: ((containers: IommuGroup[][]) => void) | undefined,
    extend: AllocationExtender | undefined,
  ) {
    this.retryDelay = opts.retryMinMs;
    const socketName = socketNameFor(opts.pluginDir, resource.name);
    this.server = new DevicePluginServer({
      resourceName: resource.name,
      socketPath: join(opts.pluginDir, socketName),
      preStartRequired: resource.preparation.mode !== 'none',
      cdi,
      ...(preStart ? { preStart } : {}),
      ...(onAllocate ? { onAllocate } : {}),
      ...(extend ? { extendAllocation: extend } : {}),
      onStreamEnded: (tag) => this.streamEnded(tag),
      logger,
    });
  }

  get kubeletSocket(): string {
    return join(this.opts.pluginDir, KUBELET_SOCKET_NAME);
  }

  get registered(): boolean {
    return this.registeredKubelet !== null;
  }

  /** Serve (again if our socket went) and register (again); concurrent requests coalesce. */
  ensure(reason: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.running) {
      this.pendingReason = reason;
      return this.running;
    }
    this.running = this.run(reason).finally(() => {
      this.running = null;
      const next = this.pendingReason;
      this.pendingReason = null;
      if (next !== null && !this.closed) void this.ensure(next);
    });
    return this.running;
  }

  private async run(reason: string): Promise<void> {
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    let kubelet: string | null = null;
    try {
      // No directory yet (the kubelet creates it): nothing to serve in, nothing to report per resource.
      if (!(await this.manager.noteDirectory())) return this.retryQuietly();
      let served = false;
      if (!this.server.running || !(await this.server.socketPresent())) {
        await this.server.stop();
        if (this.closed) return;
        await this.server.start();
        served = true;
      }
      if (this.closed) return;
      kubelet = await fileIdentity(this.kubeletSocket);
      // A run queued behind one that already registered with this kubelet on this socket
      // (a kubelet restart ends the old stream and brings a new socket: two reasons, one
      // registration). An ended stream or the watchdog clears registeredKubelet first.
      if (!served && kubelet !== null && kubelet === this.registeredKubelet) {
        this.logger.debug({ reason }, 'Already registered with this kubelet; nothing to do');
        return;
      }
      // Serving, and the kubelet is not up: the manager says so once; its watch registers us when it comes.
      if (kubelet === null) {
        this.manager.noteWaiting('kubelet');
        return this.retryQuietly();
      }
      this.generation += 1;
      this.server.streamTag = this.generation;
      await registerWithKubelet({
        kubeletSocket: this.kubeletSocket,
        endpoint: basename(this.server.socketPath),
        resourceName: this.resource.name,
        options: {
          pre_start_required: this.resource.preparation.mode !== 'none',
          get_preferred_allocation_available: true,
        },
        timeoutMs: this.opts.registerTimeoutMs,
        signal: this.closing.signal,
      });
      this.registeredKubelet = kubelet;
      this.failedKubelet = null;
      this.registrations += 1;
      this.registeredAt = Date.now();
      this.retryDelay = this.opts.retryMinMs;
      this.manager.noteWaiting(null);
      this.logger.info({ reason, registrations: this.registrations }, 'Registered with the kubelet');
      this.opts.onRegistered?.(this.resource.name, reason);
      this.armWatchdog();
    } catch (err) {
      this.registeredKubelet = null;
      this.failedKubelet = kubelet;
      if (this.closed) return;
      const delay = this.retryDelay;
      this.retryDelay = Math.min(this.retryDelay * 2, this.opts.retryMaxMs);
      this.logger.warn({ reason, retryInMs: delay, err: (err as Error).message }, 'Registration failed; will retry');
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        void this.ensure('retry');
      }, delay);
    }
  }

  /** Tries again later without a warning: what is awaited was said once by the manager. */
  private retryQuietly(): void {
    this.registeredKubelet = null;
    this.failedKubelet = null;
    if (this.closed) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, this.opts.retryMaxMs);
    this.logger.debug({ retryInMs: delay }, 'Not registered yet; checking again');
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.ensure('retry');
    }, delay);
  }

  /** Compares what is on disk with what we registered with. */
  async check(): Promise<void> {
    if (this.closed || this.running) return;
    if (this.server.running) {
      const present = await this.server.socketPresent();
      if (this.closed || this.running) return;
      if (!present) {
        void this.ensure('our socket was removed (kubelet restart)');
        return;
      }
    }
    const kubelet = await fileIdentity(this.kubeletSocket);
    // A registration that started while we looked settles it; acting on what we
    // read before it would queue a second one right behind it.
    if (this.closed || this.running) return;
    // A kubelet socket we have not registered with, and have not just failed
    // against (that one is retried with backoff), is worth trying now.
    if (kubelet !== null && kubelet !== this.registeredKubelet && kubelet !== this.failedKubelet) {
      void this.ensure(this.registeredKubelet === null ? 'kubelet socket appeared' : 'a new kubelet socket appeared');
    }
  }

  /**
   * A registration the kubelet accepted but never followed with a
   * ListAndWatch (a kubelet that kept an old client, say) would leave our
   * devices unadvertised for good: register again if no stream came.
   */
  private armWatchdog(): void {
    if (this.watchdog) clearTimeout(this.watchdog);
    const generation = this.generation;
    this.watchdog = setTimeout(() => {
      this.watchdog = null;
      if (this.closed || generation !== this.generation || this.server.streamsWithTag(generation) > 0) return;
      this.logger.warn({ waitedMs: this.opts.streamWatchdogMs }, 'No ListAndWatch stream after registering; registering again');
      this.registeredKubelet = null;
      void this.ensure('no ListAndWatch stream after registration');
    }, this.opts.streamWatchdogMs);
    this.watchdog.unref();
  }

  private streamEnded(tag: number): void {
    if (this.closed || tag !== this.generation || this.server.streamsWithTag(tag) > 0) return;
    // The kubelet never reopens a stream by itself: register again so it does.
    // A stream that keeps ending soon after registration (another plugin
    // fighting for the socket, a kubelet in trouble) is retried with backoff.
    this.registeredKubelet = null;
    const flapping = Date.now() - this.registeredAt < FLAP_WINDOW_MS;
    const delay = flapping ? this.flapDelay : 0;
    this.flapDelay = flapping ? Math.min(Math.max(this.flapDelay * 2, this.opts.retryMinMs), this.opts.retryMaxMs) : 0;
    if (delay > 0) this.logger.warn({ retryInMs: delay }, 'ListAndWatch ended soon after registration; registering again after a pause');
    if (this.flapTimer) clearTimeout(this.flapTimer);
    this.flapTimer = setTimeout(() => {
      this.flapTimer = null;
      this.manager.scheduleCheck();
      void this.ensure('ListAndWatch stream ended');
    }, delay);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.closing.abort();
    if (this.flapTimer) clearTimeout(this.flapTimer);
    if (this.watchdog) clearTimeout(this.watchdog);
    this.flapTimer = null;
    this.watchdog = null;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    await this.running?.catch(() => undefined);
    await this.server.stop();
  }
}

export class PluginManager {
  private readonly logger: Logger;
  private readonly endpoints: ResourceEndpoint[];
  private readonly options: PluginManagerOptions;
  private watcher: FSWatcher | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private checkTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private kubeletIdentity: string | null = null;
  private readonly inventory: Inventory;
  private state: InventoryState;
  /** What registration waits for, said once per change. */
  private waiting: 'directory' | 'kubelet' | null = null;

  constructor(options: PluginManagerOptions) {
    this.options = options;
    this.logger = (options.logger ?? silentLogger()).child({ room: 'kubelet' });
    this.inventory =
      options.inventory ??
      new Inventory({ resources: options.resources, logger: options.logger ?? silentLogger(), ...(options.health ? { health: options.health } : {}) });
    this.state = this.inventory.current();
    const opts = {
      pluginDir: options.pluginDir,
      retryMinMs: options.retryMinMs ?? 250,
      retryMaxMs: options.retryMaxMs ?? 10_000,
      registerTimeoutMs: options.registerTimeoutMs ?? 15_000,
      streamWatchdogMs: options.streamWatchdogMs ?? 15_000,
      ...(options.onRegistered ? { onRegistered: options.onRegistered } : {}),
    };
    this.endpoints = options.resources.map((resource) => {
      const preparer = options.preparer;
      const hook: PreStartHook | undefined =
        preparer && resource.preparation.mode !== 'none' ? (groups) => preparer(resource, groups) : undefined;
      const onAllocate = options.onAllocate;
      return new ResourceEndpoint(
        resource,
        this,
        opts,
        hook,
        this.logger.child({ resource: resource.name }),
        options.cdi !== undefined,
        onAllocate ? (containers) => onAllocate(resource.name, containers) : undefined,
        options.allocationExtender && resource.preparation.mode === 'handoff'
          ? (containers) => options.allocationExtender!(resource, containers)
          : undefined,
      );
    });
  }

  /** The server of one resource (tests and reporting). */
  server(resource: string): DevicePluginServer | undefined {
    return this.endpoints.find((e) => e.resource.name === resource)?.server;
  }

  registrations(resource: string): number {
    return this.endpoints.find((e) => e.resource.name === resource)?.registrations ?? 0;
  }

  /** Last selection conflicts, for reporting. */
  get conflicts(): SelectionConflict[] {
    return [...this.state.conflicts];
  }

  /** Recomputes the inventory from a topology and advertises it (tests and callers without a shared inventory). */
  applyTopology(topology: Topology): void {
    this.apply(this.inventory.apply(topology));
  }

  /** Advertises an inventory state: streams get changes at once, CDI specs follow. */
  apply(state: InventoryState): void {
    this.state = state;
    for (const endpoint of this.endpoints) {
      endpoint.server.setDevices(state.byResource.get(endpoint.resource.name) ?? []);
    }
    if (this.options.cdi) {
      const byResource = new Map([...state.byResource].map(([r, devices]) => [r, devices.map((d) => d.group.id)]));
      this.options.cdi.update(byResource).catch((err: unknown) =>
        this.logger.error({ dir: this.options.cdi?.dir, err: (err as Error).message }, 'Cannot write the CDI specs'),
      );
    }
  }

  /** The devices each resource advertises now, and the selection conflicts. */
  snapshot(): AdvertisedSnapshot {
    return {
      resources: this.options.resources.map((r) => ({
        name: r.name,
        devices: (this.state.byResource.get(r.name) ?? []).map((d: AdvertisedDevice) => ({
          id: String(d.group.id),
          healthy: d.healthy,
          ...(d.reason ? { reason: d.reason } : {}),
        })),
      })),
      conflicts: [...this.state.conflicts],
    };
  }

  /** Checks the device-plugins directory exists; says once when it does not. */
  async noteDirectory(): Promise<boolean> {
    try {
      await stat(this.options.pluginDir);
      if (this.waiting === 'directory') this.noteWaiting(null);
      return true;
    } catch {
      this.noteWaiting('directory');
      return false;
    }
  }

  /** Logs what registration waits for once per change, instead of a warning per resource and retry. */
  noteWaiting(state: 'directory' | 'kubelet' | null): void {
    if (state === this.waiting) return;
    this.waiting = state;
    if (state === null) return;
    const dir = this.options.pluginDir;
    if (state === 'directory') {
      this.logger.warn({ dir }, 'Waiting for the kubelet: the device-plugins directory does not exist yet (the kubelet creates it when it starts)');
    } else {
      this.logger.info({ socket: join(dir, KUBELET_SOCKET_NAME) }, 'Waiting for the kubelet: serving, and registering as soon as its socket appears');
    }
  }

  /** Why nothing is registered yet, for /readyz; null when nothing is awaited. */
  waitingFor(): string | null {
    const dir = this.options.pluginDir;
    if (this.waiting === 'directory') return `The device-plugins directory ${dir} does not exist yet (the kubelet creates it when it starts)`;
    if (this.waiting === 'kubelet') return `No kubelet socket at ${join(dir, KUBELET_SOCKET_NAME)} yet: waiting for the kubelet`;
    return null;
  }

  /** Notices a new kubelet once, whichever resource sees it first. */
  private async checkKubelet(): Promise<void> {
    const identity = await fileIdentity(join(this.options.pluginDir, KUBELET_SOCKET_NAME));
    if (identity === null || identity === this.kubeletIdentity) return;
    const restarted = this.kubeletIdentity !== null;
    this.kubeletIdentity = identity;
    if (restarted) {
      this.logger.info('A new kubelet socket appeared (kubelet restart)');
      this.options.onKubeletRestart?.();
    }
  }

  /** Serves every resource, then registers; returns once each had a first attempt. */
  async start(): Promise<void> {
    if (this.stopped) return;
    this.kubeletIdentity = await fileIdentity(join(this.options.pluginDir, KUBELET_SOCKET_NAME));
    if (this.stopped) return;
    this.startWatching();
    const interval = this.options.checkIntervalMs ?? 1000;
    this.pollTimer = setInterval(() => this.scheduleCheck(), interval);
    await Promise.all(this.endpoints.map((e) => e.ensure('start')));
  }

  private startWatching(): void {
    if (this.watcher || this.stopped) return;
    try {
      this.watcher = watch(this.options.pluginDir, { persistent: false }, () => this.scheduleCheck());
      this.watcher.on('error', (err) => {
        this.logger.warn({ err: err.message }, 'Lost the watch on the device-plugins directory; polling until it is back');
        this.watcher?.close();
        this.watcher = null;
      });
    } catch (err) {
      // A missing directory is said once by noteDirectory; the poll keeps trying.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.logger.warn({ dir: this.options.pluginDir, err: (err as Error).message }, 'Cannot watch the device-plugins directory yet');
    }
  }

  /** Checks sockets soon, coalescing bursts of directory events. */
  scheduleCheck(): void {
    if (this.stopped || this.checkTimer) return;
    this.checkTimer = setTimeout(() => {
      this.checkTimer = null;
      if (!this.watcher) this.startWatching();
      this.checkKubelet().catch(() => undefined);
      for (const e of this.endpoints) {
        e.check().catch((err: unknown) => this.logger.error({ err: (err as Error).message }, 'Socket check failed'));
      }
    }, 20);
  }

  registered(resource: string): boolean {
    return this.endpoints.find((e) => e.resource.name === resource)?.registered ?? false;
  }

  /** Ends streams, removes our sockets; the kubelet then marks our devices unhealthy. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.checkTimer) clearTimeout(this.checkTimer);
    this.pollTimer = null;
    this.checkTimer = null;
    await Promise.all(this.endpoints.map((e) => e.close()));
  }
}
