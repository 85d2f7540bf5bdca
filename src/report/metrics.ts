// Prometheus metrics for the plugin, on a registry of our own (never the
// process-wide default, so tests and embedders get a clean set). Each metric has
// one small function to update it, for the lead's hooks to call.
import { getSystemErrorMap } from 'node:util';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { NodeSnapshot } from './snapshot.js';
import type { ReportingState } from './node-reporter.js';

export const METRIC_PREFIX = 'power_vfio_';

/** Preparation latency buckets, seconds: a probe map is milliseconds, a large handoff window seconds; the kubelet gives up at 30 s. */
const PREPARATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30];

const REPORTING_STATES: readonly ReportingState[] = ['pending', 'ok', 'degraded', 'stopped'];

export interface MetricsOptions {
  /** The plugin's version (package.json). */
  version: string;
  /** Also collect prom-client's process and Node.js runtime metrics; default true. */
  processMetrics?: boolean;
  /** A registry to use; a new one when omitted. */
  registry?: Registry;
}

export type PreparationResult = 'success' | 'failure';

/** Bounded values for the registration reason label (the manager's reasons are free text). */
export type RegistrationReasonLabel = 'start' | 'retry' | 'kubelet_restart' | 'kubelet_appeared' | 'stream_ended' | 'other';

export function registrationReasonLabel(reason: string): RegistrationReasonLabel {
  const r = reason.toLowerCase();
  if (r.includes('stream')) return 'stream_ended';
  if (r.includes('restart') || r.includes('new kubelet') || r.includes('removed')) return 'kubelet_restart';
  if (r.includes('appeared')) return 'kubelet_appeared';
  if (r.includes('retry')) return 'retry';
  if (r.includes('start')) return 'start';
  return 'other';
}

/** `EBUSY` for 16 or -16 or `EBUSY`; a non-errno code (ERR_VFIO_UNEXPECTED_RETURN) is kept as given. */
export function errnoLabel(errno: string | number): string {
  if (typeof errno === 'string') return errno.length > 0 ? errno : 'unknown';
  if (!Number.isFinite(errno) || errno === 0) return 'unknown';
  const entry = getSystemErrorMap().get(-Math.abs(errno));
  return entry ? entry[0] : `E${Math.abs(errno)}`;
}

export class PluginMetrics {
  readonly registry: Registry;
  private readonly devices: Gauge<'resource' | 'health'>;
  private readonly allocations: Counter<'resource'>;
  private readonly preparations: Counter<'resource' | 'mode' | 'result'>;
  private readonly preparationDuration: Histogram<'resource' | 'mode' | 'result'>;
  private readonly ioctlErrors: Counter<'ioctl' | 'errno'>;
  private readonly registrations: Counter<'resource' | 'reason'>;
  private readonly kubeletRestarts: Counter<string>;
  private readonly deviceTransitions: Counter<'resource' | 'health'>;
  private readonly apiReportingState: Gauge<'state'>;
  private readonly apiRequestErrors: Counter<'kind' | 'operation'>;
  private readonly buildInfo: Gauge<'version' | 'node_version' | 'arch'>;
  private readonly lastHealth = new Map<string, boolean>();

  constructor(options: MetricsOptions) {
    const registry = options.registry ?? new Registry();
    this.registry = registry;
    const registers = [registry];
    this.devices = new Gauge({
      name: `${METRIC_PREFIX}devices`,
      help: 'IOMMU groups advertised to the kubelet, by resource and health (Healthy or Unhealthy).',
      labelNames: ['resource', 'health'],
      registers,
    });
    this.deviceTransitions = new Counter({
      name: `${METRIC_PREFIX}device_health_transitions_total`,
      help: 'Times an advertised IOMMU group changed health, by resource and the health it changed to.',
      labelNames: ['resource', 'health'],
      registers,
    });
    this.allocations = new Counter({
      name: `${METRIC_PREFIX}allocations_total`,
      help: 'IOMMU groups handed out in Allocate responses, by resource.',
      labelNames: ['resource'],
      registers,
    });
    this.preparations = new Counter({
      name: `${METRIC_PREFIX}preparations_total`,
      help: 'sPAPR TCE container preparations in PreStartContainer, by resource, mode (verify or handoff) and result.',
      labelNames: ['resource', 'mode', 'result'],
      registers,
    });
    this.preparationDuration = new Histogram({
      name: `${METRIC_PREFIX}preparation_duration_seconds`,
      help: 'Time to prepare the sPAPR TCE container for a container start, by resource, mode and result.',
      labelNames: ['resource', 'mode', 'result'],
      buckets: PREPARATION_BUCKETS,
      registers,
    });
    this.ioctlErrors = new Counter({
      name: `${METRIC_PREFIX}ioctl_errors_total`,
      help: 'Failed VFIO ioctls, by ioctl name and errno code.',
      labelNames: ['ioctl', 'errno'],
      registers,
    });
    this.registrations = new Counter({
      name: `${METRIC_PREFIX}registrations_total`,
      help: 'Successful registrations with the kubelet, by resource and reason (start, retry, kubelet_restart, kubelet_appeared, stream_ended, other).',
      labelNames: ['resource', 'reason'],
      registers,
    });
    this.kubeletRestarts = new Counter({
      name: `${METRIC_PREFIX}kubelet_restarts_total`,
      help: 'Kubelet restarts detected (the device-plugins directory was emptied and a new kubelet.sock appeared).',
      registers,
    });
    this.apiReportingState = new Gauge({
      name: `${METRIC_PREFIX}api_reporting_state`,
      help: 'State of node reporting to the Kubernetes API: 1 for the current state (pending, ok, degraded, stopped), 0 for the others.',
      labelNames: ['state'],
      registers,
    });
    this.apiRequestErrors = new Counter({
      name: `${METRIC_PREFIX}api_request_errors_total`,
      help: 'Failed Kubernetes API requests of node reporting, by kind (unreachable, timeout, forbidden, conflict, serverError, ...) and operation.',
      labelNames: ['kind', 'operation'],
      registers,
    });
    this.buildInfo = new Gauge({
      name: `${METRIC_PREFIX}build_info`,
      help: 'Always 1; the labels say which plugin version runs on which Node.js.',
      labelNames: ['version', 'node_version', 'arch'],
      registers,
    });
    this.buildInfo.set({ version: options.version, node_version: process.version, arch: process.arch }, 1);
    this.setApiReportingState('pending');
    if (options.processMetrics ?? true) {
      collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });
    }
  }

  /** Devices by resource and health from a node snapshot; also counts health transitions. */
  setDevices(snapshot: NodeSnapshot): void {
    this.devices.reset();
    const seen = new Set<string>();
    for (const resource of snapshot.resources) {
      let healthy = 0;
      let unhealthy = 0;
      for (const device of resource.devices) {
        if (device.healthy) healthy += 1;
        else unhealthy += 1;
        const key = `${resource.name}\u0000${device.id}`;
        seen.add(key);
        const before = this.lastHealth.get(key);
        if (before !== undefined && before !== device.healthy) {
          this.deviceTransitions.inc({ resource: resource.name, health: device.healthy ? 'Healthy' : 'Unhealthy' });
        }
        this.lastHealth.set(key, device.healthy);
      }
      this.devices.set({ resource: resource.name, health: 'Healthy' }, healthy);
      this.devices.set({ resource: resource.name, health: 'Unhealthy' }, unhealthy);
    }
    for (const key of [...this.lastHealth.keys()]) if (!seen.has(key)) this.lastHealth.delete(key);
  }

  /** One Allocate answered: `groups` IOMMU groups of `resource` handed out. */
  countAllocation(resource: string, groups = 1): void {
    this.allocations.inc({ resource }, groups);
  }

  /** One preparation finished after `seconds`. */
  observePreparation(resource: string, mode: string, result: PreparationResult, seconds: number): void {
    this.preparations.inc({ resource, mode, result });
    this.preparationDuration.observe({ resource, mode, result }, seconds);
  }

  /** Times `work`, records it as a preparation and passes its result or error through. */
  async timePreparation<T>(resource: string, mode: string, work: () => Promise<T>): Promise<T> {
    const start = process.hrtime.bigint();
    const seconds = () => Number(process.hrtime.bigint() - start) / 1e9;
    try {
      const value = await work();
      this.observePreparation(resource, mode, 'success', seconds());
      return value;
    } catch (err) {
      this.observePreparation(resource, mode, 'failure', seconds());
      throw err;
    }
  }

  countIoctlError(ioctl: string, errno: string | number): void {
    this.ioctlErrors.inc({ ioctl, errno: errnoLabel(errno) });
  }

  /**
   * Counts an error shaped like the VFIO layer's system errors (`ioctl`, `code`,
   * `errno`); returns false (and counts nothing) for other errors.
   */
  countIoctlErrorFrom(err: unknown): boolean {
    if (typeof err !== 'object' || err === null) return false;
    const e = err as { ioctl?: unknown; syscall?: unknown; code?: unknown; errno?: unknown };
    const ioctl = typeof e.ioctl === 'string' ? e.ioctl : e.syscall === 'ioctl' ? 'unknown' : undefined;
    if (!ioctl) return false;
    const errno = typeof e.code === 'string' ? e.code : typeof e.errno === 'number' ? e.errno : 'unknown';
    this.countIoctlError(ioctl, errno);
    return true;
  }

  /** A successful registration; `reason` is the manager's text, mapped to a bounded label. */
  countRegistration(resource: string, reason: string): void {
    this.registrations.inc({ resource, reason: registrationReasonLabel(reason) });
  }

  countKubeletRestart(): void {
    this.kubeletRestarts.inc();
  }

  setApiReportingState(state: ReportingState): void {
    for (const s of REPORTING_STATES) this.apiReportingState.set({ state: s }, s === state ? 1 : 0);
  }

  countApiRequestError(kind: string, operation: string): void {
    this.apiRequestErrors.inc({ kind, operation });
  }

  /** The exposition text (Prometheus format). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

export function createMetrics(options: MetricsOptions): PluginMetrics {
  return new PluginMetrics(options);
}
