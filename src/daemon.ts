// The node daemon: discovery feeds the inventory (selection and health), the
// inventory feeds one kubelet front end: the device plugin API (a server per
// resource) or the DRA driver. Dependencies come in from the caller (the CLI,
// the demo, tests), so each room is used only through its interface.
import type { Logger } from './log.js';
import type { Settings } from './config/settings.js';
import type { Topology, TopologyChange } from './topology/types.js';
import { TopologyWatcher, iommuGroupsDir } from './topology/discover.js';
import { SelectionNotices } from './config/selection-notices.js';
import { PluginManager } from './kubelet/plugin-manager.js';
import { DraDriver, type SlicePublishing } from './dra/driver.js';
import type { ClaimPreparation, ClaimSource } from './dra/claim-state.js';
import type { IommuVerification } from './dra/slices.js';
import { Inventory, type InventoryState } from './inventory/inventory.js';
import type { AllocationExtra, Preparer } from './prepare/types.js';
import { CdiSpecWriter } from './cdi/spec-writer.js';
import type { PluginMetrics } from './report/metrics.js';
import type { NodeReporter } from './report/node-reporter.js';
import type { NodeSnapshot } from './report/snapshot.js';
import type { ResourceConfig } from './config/schema.js';
import type { IommuGroup } from './topology/types.js';
import { HealthTracker } from './health/health-tracker.js';
import { serializeByGroup } from './prepare/serialize.js';
import type { UeventSource } from './topology/uevents.js';
import type { HandoffService } from './handoff/service.js';
import { PluginError } from './errors.js';
import { GroupBinder, type SysfsWriter } from './binding/index.js';
import { EventReason } from './report/node-report.js';
import { CHeapTrimmer, type CHeapTrimmerOptions } from './c-heap.js';

export interface DaemonDeps {
  logger: Logger;
  /** Runs in PreStartContainer for resources whose mode is verify or handoff. */
  preparer?: Preparer;
  /** Device-plugins directory polling interval (safety net behind the directory watch). */
  socketCheckIntervalMs?: number;
  /** Prometheus metrics, updated from the rooms' hooks. */
  metrics?: PluginMetrics;
  /** Node condition, Events and labels through the Kubernetes API. */
  reporter?: NodeReporter;
  /** Health rules with memory (AER); a default one is made when absent. */
  health?: HealthTracker;
  /** Handoff mode: started before the kubelet is served, stopped at shutdown. */
  handoff?: HandoffService | null;
  /** Kernel uevent source for the topology watcher; default: netlink on real sysfs. */
  uevents?: UeventSource | null;
  /** Safety poll period while uevents arrive (default: the larger of the poll interval and 60 s). */
  ueventPollIntervalMs?: number;
  /** Allocate's additions for handoff resources. */
  extendAllocation?: (resource: ResourceConfig, containers: IommuGroup[][]) => Promise<AllocationExtra[]>;
  /** The DRA front end's ways to the API server (settings.kubeletApi dra). */
  dra?: DraDeps;
  /** Trimming the C heap after discovery and after later scans (default: on, every 30 s at most); null: off. */
  cHeap?: Pick<CHeapTrimmerOptions, 'intervalMs' | 'addon'> | null;
}

export interface DraDeps {
  /** Reads a ResourceClaim. */
  claims: ClaimSource;
  /** Publishes the pool as ResourceSlices; null runs without publishing (tests of the kubelet side). */
  slices: SlicePublishing | null;
  /** What the last verification of a group learned (device attributes). */
  verification?: (group: number) => IommuVerification | undefined;
  /** Socket check period (tests). */
  checkIntervalMs?: number;
  healthResendMs?: number;
  /** Writes the sysfs attributes managed binding writes; default: the real files (a simulated node passes its kernel's). */
  sysfsWriter?: SysfsWriter;
  /** How often managed binding looks at sysfs while it waits (tests). */
  bindingPollMs?: number;
}

/** What a kubelet front end does with the inventory. */
export interface KubeletFrontEnd {
  start(): Promise<void>;
  apply(state: InventoryState): void;
  stop(): Promise<void>;
  /** Per resource (device plugin) or for the driver (DRA): registered with the kubelet. */
  readiness(): { name: string; registered: boolean }[];
}

export class Daemon {
  readonly settings: Settings;
  readonly inventory: Inventory;
  /** The device plugin front end; null when the node serves DRA. */
  readonly manager: PluginManager | null;
  /** The DRA front end; null when the node serves the device plugin API. */
  readonly dra: DraDriver | null;
  readonly frontEnd: KubeletFrontEnd;
  private readonly watcher: TopologyWatcher;
  private readonly logger: Logger;
  private readonly metrics: PluginMetrics | undefined;
  private readonly reporter: NodeReporter | undefined;
  private issuesText = '';
  private readonly health: HealthTracker;
  private readonly handoff: HandoffService | null;
  private recoveryTimer: NodeJS.Timeout | null = null;
  private readonly notices: SelectionNotices;
  private handoffStarting: Promise<void> | null = null;
  private readonly cHeap: CHeapTrimmer | null;
  /** The first discovery finished (readiness). */
  discovered = false;
  private stopping = false;

  constructor(settings: Settings, deps: DaemonDeps) {
    this.settings = settings;
    this.logger = deps.logger;
    this.watcher = new TopologyWatcher(
      { sysfsRoot: settings.sysfsRoot, devRoot: settings.devRoot },
      {
        pollIntervalMs: settings.pollIntervalMs,
        logger: deps.logger.child({ room: 'topology' }),
        ...(deps.uevents !== undefined ? { uevents: deps.uevents } : {}),
        ...(deps.ueventPollIntervalMs !== undefined ? { ueventPollIntervalMs: deps.ueventPollIntervalMs } : {}),
      },
    );
    this.notices = new SelectionNotices({
      logger: deps.logger.child({ room: 'selection' }),
      resources: settings.resources,
      iommuGroupsDir: iommuGroupsDir({ sysfsRoot: settings.sysfsRoot, devRoot: settings.devRoot }),
    });
    this.metrics = deps.metrics;
    this.reporter = deps.reporter;
    // Scans free much of what they malloc'd (sysfs reads); glibc keeps it unless asked.
    this.cHeap =
      deps.cHeap === null
        ? null
        : new CHeapTrimmer({
            logger: deps.logger.child({ room: 'c-heap' }),
            workSince: () => {
              const s = this.watcher.stats();
              return s.fullScans + s.polls + s.groupRescans;
            },
            ...deps.cHeap,
          });
    const health = deps.health ?? new HealthTracker({ logger: deps.logger.child({ room: 'health' }) });
    this.health = health;
    this.handoff = deps.handoff ?? null;
    const metrics = deps.metrics;
    const serial = deps.preparer ? serializeByGroup(deps.preparer) : undefined;
    const preparer = serial && metrics ? this.measured(serial, metrics) : serial;
    this.inventory = new Inventory({ resources: settings.resources, logger: deps.logger, health: (group) => health.evaluate(group) });
    if (settings.kubeletApi === 'dra') {
      if (!deps.dra) throw new PluginError('PVDP_ERR_CONFIG', 'The DRA front end needs a way to the API server (internal wiring error)');
      if (!settings.nodeName) {
        throw new PluginError('PVDP_ERR_CONFIG', 'The DRA front end needs this node\'s name: set --node-name or NODE_NAME (the DaemonSet passes spec.nodeName)');
      }
      this.manager = null;
      const managed = settings.resources.some((r) => r.binding?.mode === 'managed');
      const binder = managed
        ? new GroupBinder({
            sysfsRoot: settings.sysfsRoot,
            devRoot: settings.devRoot,
            procRoot: settings.procRoot ?? '/',
            logger: deps.logger,
            ...(deps.dra.sysfsWriter ? { writer: deps.dra.sysfsWriter } : {}),
            ...(deps.dra.bindingPollMs ? { pollMs: deps.dra.bindingPollMs } : {}),
          })
        : null;
      this.dra = new DraDriver({
        driver: settings.dra.driverName,
        nodeName: settings.nodeName,
        registryDir: settings.dra.registryDir,
        driverDir: settings.dra.driverDir,
        cdiSpecDir: settings.dra.cdiSpecDir,
        resources: settings.resources,
        preparation: claimPreparation(preparer, this.handoff),
        claims: deps.dra.claims,
        slices: deps.dra.slices,
        ...(deps.dra.verification ? { verification: deps.dra.verification } : {}),
        ...(deps.dra.checkIntervalMs ? { checkIntervalMs: deps.dra.checkIntervalMs } : {}),
        ...(deps.dra.healthResendMs ? { healthResendMs: deps.dra.healthResendMs } : {}),
        ...(binder ? { binding: binder } : {}),
        // The watcher would see the new drivers at its next poll; the pool should show them now.
        onRebound: () => void this.watcher.refresh().catch(() => undefined),
        onRebindFailure: (f) =>
          this.reporter?.event({
            type: 'Warning',
            reason: EventReason.DeviceRebindFailed,
            message: `IOMMU group ${f.group} (device ${f.device}) of resource ${f.resource} could not be moved between its host drivers and vfio-pci: ${f.message}`,
            resource: f.resource,
            device: String(f.group),
          }),
        logger: deps.logger,
      });
      this.frontEnd = this.dra;
    } else {
      this.dra = null;
      const manager = new PluginManager({
        pluginDir: settings.devicePluginDir,
        resources: settings.resources,
        logger: deps.logger,
        inventory: this.inventory,
        ...(deps.extendAllocation ? { allocationExtender: deps.extendAllocation } : {}),
        ...(preparer ? { preparer } : {}),
        ...(metrics
          ? {
              onRegistered: (resource: string, reason: string) => metrics.countRegistration(resource, reason),
              onKubeletRestart: () => metrics.countKubeletRestart(),
              onAllocate: (resource: string, containers: IommuGroup[][]) =>
                metrics.countAllocation(resource, containers.reduce((n, c) => n + c.length, 0)),
            }
          : {}),
        ...(deps.socketCheckIntervalMs ? { checkIntervalMs: deps.socketCheckIntervalMs } : {}),
        ...(settings.cdiSpecDir ? { cdi: new CdiSpecWriter(settings.cdiSpecDir) } : {}),
      });
      this.manager = manager;
      this.frontEnd = {
        start: () => manager.start(),
        apply: (state) => manager.apply(state),
        stop: () => manager.stop(),
        readiness: () => settings.resources.map((r) => ({ name: r.name, registered: manager.registered(r.name) })),
      };
    }
  }

  /** Times every preparation and counts the ioctl errors behind failures. */
  private measured(preparer: Preparer, metrics: PluginMetrics): Preparer {
    return async (resource: ResourceConfig, groups: IommuGroup[]) => {
      const started = process.hrtime.bigint();
      try {
        await preparer(resource, groups);
        metrics.observePreparation(resource.name, resource.preparation.mode, 'success', Number(process.hrtime.bigint() - started) / 1e9);
      } catch (err) {
        metrics.observePreparation(resource.name, resource.preparation.mode, 'failure', Number(process.hrtime.bigint() - started) / 1e9);
        let cause: unknown = err;
        while (cause instanceof Error) {
          if (metrics.countIoctlErrorFrom(cause)) break;
          cause = cause.cause;
        }
        throw err;
      }
    };
  }

  /** What is advertised now, for the node report and the device gauges. */
  snapshot(): NodeSnapshot {
    const advertised = this.inventory.snapshot();
    return {
      resources: advertised.resources,
      conflicts: advertised.conflicts.map((c) => ({ group: c.group, resources: c.resources })),
      capabilities: { groups: this.watcher.current().groups.size },
    };
  }

  /** Applies a topology to the kubelet servers and reports; wakes up when a quiet period ends. */
  private apply(topology: Topology): void {
    this.health.retain(topology.groups.keys());
    this.frontEnd.apply(this.inventory.apply(topology));
    this.notices.update(topology);
    this.publish();
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.recoveryTimer = null;
    const wait = this.health.nextRecoveryInMs();
    if (wait !== null) {
      this.recoveryTimer = setTimeout(() => {
        this.recoveryTimer = null;
        this.apply(this.watcher.current());
      }, wait + 10);
    }
  }

  private publish(): void {
    if (!this.metrics && !this.reporter) return;
    const snapshot = this.snapshot();
    this.metrics?.setDevices(snapshot);
    this.reporter?.report(snapshot);
  }

  topology(): Topology {
    return this.watcher.current();
  }

  /** Discovers, then serves and registers every resource. */
  async start(): Promise<Topology> {
    this.watcher.on('change', (change: TopologyChange) => this.onChange(change));
    // A SIGTERM during discovery: stop() aborts the scan and is already tearing down.
    const topology = await this.watcher.start().catch((err: unknown) => {
      if (this.stopping) return this.watcher.current();
      throw err;
    });
    if (this.stopping) return topology;
    this.logTopology(topology);
    this.discovered = true;
    this.apply(topology);
    // Now, not after the front end starts: that may wait for the kubelet as long as it is down.
    this.cHeap?.start();
    this.handoffStarting = this.handoff?.start() ?? null;
    await this.handoffStarting;
    if (this.stopping) return topology;
    await this.frontEnd.start();
    return topology;
  }

  /** Rescans now (tests and operators' SIGHUP). */
  async refresh(): Promise<void> {
    await this.watcher.refresh();
  }

  private onChange(change: TopologyChange): void {
    if (this.stopping) return;
    this.logger.info(
      { added: change.added, removed: change.removed, changed: change.changed },
      'IOMMU groups changed',
    );
    this.logTopology(change.topology);
    this.apply(change.topology);
  }

  private logTopology(topology: Topology): void {
    const text = JSON.stringify(topology.issues);
    if (text === this.issuesText) return;
    this.issuesText = text;
    for (const issue of topology.issues) {
      this.logger.warn({ path: issue.path, group: issue.group }, `Skipped part of the sysfs tree: ${issue.message}`);
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.cHeap?.stop();
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.recoveryTimer = null;
    await this.watcher.stop();
    await this.frontEnd.stop();
    // Unclaimed preparations are released; claimed ones belong to their pods.
    // A start still creating its directories finishes first, or it would outlive the stop.
    await this.handoffStarting?.catch(() => undefined);
    await this.handoff?.stop();
    await this.reporter?.stop();
  }
}

/**
 * The DRA front end's view of preparation: the same preparer PreStartContainer
 * runs, plus the handoff directory Allocate makes in the device plugin mode.
 * A failure releases whatever was made.
 */
function claimPreparation(preparer: Preparer | undefined, handoff: HandoffService | null): ClaimPreparation {
  return {
    async prepare(resource, groups) {
      const mode = resource.preparation.mode;
      if (mode === 'none') return null;
      if (!preparer) throw new Error(`no preparer is set up for mode ${mode}`);
      if (mode !== 'handoff') {
        await preparer(resource, groups);
        return null;
      }
      if (!handoff) throw new Error('the handoff mode is not set up on this node');
      const [extra] = await handoff.extendAllocation(resource, [groups]);
      try {
        await preparer(resource, groups);
      } catch (err) {
        await handoff.release(resource.name, groups.map((g) => g.id)).catch(() => undefined);
        throw err;
      }
      return extra ?? null;
    },
    release: (resourceName, groups) => handoff?.release(resourceName, groups) ?? Promise.resolve(),
  };
}
