// One DevicePlugin gRPC server for one resource, on its own unix socket in
// the kubelet's device-plugins directory. It speaks the wire contract and
// delegates: allocation rules to ./allocation.ts, preparation to an injected hook.
import { stat, unlink } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { PluginError, RequestError } from '../errors.js';
import type { IommuGroup } from '../topology/types.js';
import { devicePluginProto, HEALTHY, UNHEALTHY } from './proto.js';
import { shutdownServer } from '../rpc/grpc-shutdown.js';
import { socketAnswers } from '../rpc/unix-server.js';
import { allocate, mergeAllocation, preferredAllocation, resolveDevices } from './allocation.js';
import type { AdvertisedDevice } from '../inventory/advertised.js';
import type { AllocationExtra } from '../prepare/types.js';
import type { DevicePluginHandlers } from '../generated/v1beta1/DevicePlugin.js';
import type { Device } from '../generated/v1beta1/Device.js';
import type { ListAndWatchResponse } from '../generated/v1beta1/ListAndWatchResponse.js';
import type { Empty__Output } from '../generated/v1beta1/Empty.js';

/** Runs before a container starts, after the groups were checked usable; throwing fails the start. */
export type PreStartHook = (groups: IommuGroup[]) => Promise<void>;

/**
 * Adds to each container's Allocate response (the handoff mode's mount and env);
 * one entry per container, in request order. Throwing refuses the Allocate.
 */
export type AllocationExtender = (containers: IommuGroup[][]) => Promise<AllocationExtra[]>;

/** Told after each successful Allocate, for metrics and preparation bookkeeping. */
export type AllocateObserver = (containers: IommuGroup[][]) => void;

export interface DevicePluginServerOptions {
  resourceName: string;
  /** Absolute path of the socket this server listens on. */
  socketPath: string;
  /** Advertise pre_start_required (the resource's preparation mode needs PreStartContainer). */
  preStartRequired: boolean;
  preStart?: PreStartHook;
  onAllocate?: AllocateObserver;
  extendAllocation?: AllocationExtender;
  /** Name CDI devices in Allocate instead of returning device nodes. */
  cdi?: boolean;
  /** Told when a ListAndWatch stream ends while the server is still running. */
  onStreamEnded?: (tag: number) => void;
  logger?: Logger;
}

interface Watcher {
  call: grpc.ServerWritableStream<Empty__Output, ListAndWatchResponse>;
  tag: number;
  done: boolean;
}

function toWireDevice(device: AdvertisedDevice): Device {
  const wire: Device = { ID: String(device.group.id), health: device.healthy ? HEALTHY : UNHEALTHY };
  if (device.group.numaNodes.length > 0) {
    wire.topology = { nodes: device.group.numaNodes.map((n) => ({ ID: String(n) })) };
  }
  return wire;
}

function statusOf(err: unknown): grpc.StatusObject {
  if (err instanceof RequestError) {
    return {
      code: err.kind === 'invalid' ? grpc.status.INVALID_ARGUMENT : grpc.status.FAILED_PRECONDITION,
      details: err.message,
      metadata: new grpc.Metadata(),
    };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { code: grpc.status.INTERNAL, details: message, metadata: new grpc.Metadata() };
}

export class DevicePluginServer {
  readonly resourceName: string;
  readonly socketPath: string;
  private readonly options: DevicePluginServerOptions;
  private readonly logger: Logger;
  private server: grpc.Server | null = null;
  private devices = new Map<string, AdvertisedDevice>();
  private lastSent = '';
  private readonly watchers = new Set<Watcher>();
  private socketIno: number | null = null;
  private stopping = false;
  /** Streams opened from now on carry this tag (the registration generation). */
  streamTag = 0;

  constructor(options: DevicePluginServerOptions) {
    this.options = options;
    this.resourceName = options.resourceName;
    this.socketPath = options.socketPath;
    const base = options.logger ?? silentLogger();
    // A logger already bound to this resource (the plugin manager's) must not bind it again: pino would print the key twice.
    this.logger = base.bindings().resource === options.resourceName ? base : base.child({ resource: options.resourceName });
  }

  /** Number of ListAndWatch streams open now. */
  get streamCount(): number {
    return this.watchers.size;
  }

  /** Streams open now that carry the given tag. */
  streamsWithTag(tag: number): number {
    let n = 0;
    for (const w of this.watchers) if (w.tag === tag) n += 1;
    return n;
  }

  get running(): boolean {
    return this.server !== null && !this.stopping;
  }

  /** Replaces the advertised devices; open streams get the new list only if it changed. */
  setDevices(devices: readonly AdvertisedDevice[]): void {
    const sorted = [...devices].sort((a, b) => a.group.id - b.group.id);
    this.devices = new Map(sorted.map((d) => [String(d.group.id), d]));
    const response = this.listResponse();
    const text = JSON.stringify(response);
    if (text === this.lastSent) return;
    this.lastSent = text;
    for (const w of this.watchers) this.send(w, response);
  }

  private listResponse(): ListAndWatchResponse {
    return { devices: [...this.devices.values()].map(toWireDevice) };
  }

  private send(watcher: Watcher, response: ListAndWatchResponse): void {
    if (watcher.done) return;
    try {
      watcher.call.write(response);
    } catch (err) {
      this.logger.warn({ err }, 'Failed to write a ListAndWatch update');
    }
  }

  /** Removes a stale socket file, then listens. Resolves once the socket accepts connections. */
  async start(): Promise<void> {
    if (this.server) throw new Error(`Server for ${this.resourceName} is already started`);
    this.stopping = false;
    // A socket file someone still answers on is another plugin's, not a stale one of ours.
    if (await socketAnswers(this.socketPath)) {
      throw new PluginError(
        'PVDP_ERR_REGISTRATION',
        `Another process serves ${this.socketPath}: is a second copy of the plugin running on this node?`,
      );
    }
    await unlink(this.socketPath).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    const server = new grpc.Server();
    server.addService(devicePluginProto().v1beta1.DevicePlugin.service, this.handlers());
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix:${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => {
        if (err) reject(err);
        else resolve();
      });
    });
    this.server = server;
    this.socketIno = (await stat(this.socketPath)).ino;
    this.logger.info({ socket: this.socketPath }, 'Serving the device plugin API');
  }

  /** True when our socket file is still the one we bound (the kubelet deletes it when it restarts). */
  async socketPresent(): Promise<boolean> {
    try {
      return (await stat(this.socketPath)).ino === this.socketIno;
    } catch {
      return false;
    }
  }

  /** Ends every stream, shuts the server down and removes our socket. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.stopping = true;
    for (const w of this.watchers) {
      w.done = true;
      try {
        w.call.end();
      } catch {
        // The stream may already be gone with its connection.
      }
    }
    this.watchers.clear();
    await shutdownServer(server, 2000);
    this.server = null;
    if (await this.socketPresent()) {
      await unlink(this.socketPath).catch(() => undefined);
    }
    this.socketIno = null;
    this.lastSent = JSON.stringify(this.listResponse());
  }

  private handlers(): DevicePluginHandlers {
    return {
      GetDevicePluginOptions: (_call, callback) => {
        callback(null, {
          pre_start_required: this.options.preStartRequired,
          get_preferred_allocation_available: true,
        });
      },

      ListAndWatch: (call) => {
        const watcher: Watcher = { call, tag: this.streamTag, done: false };
        this.watchers.add(watcher);
        this.logger.info({ streams: this.watchers.size }, 'Kubelet opened ListAndWatch');
        const finish = (why: string) => {
          if (watcher.done) return;
          watcher.done = true;
          this.watchers.delete(watcher);
          this.logger.info({ why }, 'ListAndWatch stream ended');
          if (!this.stopping) this.options.onStreamEnded?.(watcher.tag);
        };
        call.on('cancelled', () => finish('cancelled'));
        call.on('error', () => finish('error'));
        call.on('close', () => finish('closed'));
        const response = this.listResponse();
        this.lastSent = JSON.stringify(response);
        this.send(watcher, response);
      },

      GetPreferredAllocation: (call, callback) => {
        // The answer is advice: the kubelet rejects the pod on an error, so odd
        // input is cleaned (unknown and repeated IDs dropped, the size clamped),
        // never refused.
        const container_responses = call.request.container_requests.map((req) => {
          const mustInclude = [...new Set(req.must_include_deviceIDs)].filter((id) => this.devices.has(id));
          const dropped = req.must_include_deviceIDs.length - mustInclude.length;
          if (dropped > 0) {
            this.logger.warn({ dropped }, 'GetPreferredAllocation named unknown or repeated must-include IDs; ignored them');
          }
          const known = req.available_deviceIDs.filter((id) => this.devices.has(id));
          const size = Number.isInteger(req.allocation_size) ? Math.max(0, Math.min(req.allocation_size, known.length + mustInclude.length)) : 0;
          return { deviceIDs: preferredAllocation(known, mustInclude, size, this.devices) };
        });
        callback(null, { container_responses });
      },

      Allocate: (call, callback) => {
        const refuse = (err: unknown) => {
          this.logger.warn({ err: (err as Error).message }, 'Refused Allocate');
          callback(statusOf(err));
        };
        let results: ReturnType<typeof allocate>;
        try {
          results = allocate(this.resourceName, call.request.container_requests, this.devices, { cdi: this.options.cdi === true });
        } catch (err) {
          refuse(err);
          return;
        }
        const finish = (extras: AllocationExtra[] | null) => {
          try {
            const responses = results.map((r, i) => (extras?.[i] ? mergeAllocation(r.response, extras[i]) : r.response));
            this.logger.info({ containers: results.map((r) => r.groups.map((g) => g.id)) }, 'Allocated IOMMU groups');
            try {
              this.options.onAllocate?.(results.map((r) => r.groups));
            } catch (err) {
              // Bookkeeping (metrics) never fails an allocation.
              this.logger.error({ err: (err as Error).message }, 'Allocate observer failed');
            }
            callback(null, { container_responses: responses });
          } catch (err) {
            refuse(err);
          }
        };
        const extend = this.options.extendAllocation;
        if (!extend) {
          finish(null);
          return;
        }
        extend(results.map((r) => r.groups)).then(finish, refuse);
      },

      PreStartContainer: (call, callback) => {
        let groups: IommuGroup[];
        try {
          groups = resolveDevices(this.resourceName, call.request.devices_ids, this.devices);
        } catch (err) {
          this.logger.warn({ err: (err as Error).message }, 'Refused PreStartContainer');
          callback(statusOf(err));
          return;
        }
        const unusable = groups.filter((g) => !g.usable);
        if (unusable.length > 0) {
          const message = unusable.map((g) => `IOMMU group ${g.id}: ${g.problems.join('; ')}`).join('; ');
          callback(statusOf(new RequestError('PVDP_ERR_DEVICE_UNHEALTHY', 'precondition', message)));
          return;
        }
        const hook = this.options.preStart;
        if (!hook) {
          callback(null, {});
          return;
        }
        hook(groups).then(
          () => callback(null, {}),
          (err: unknown) => {
            this.logger.warn({ groups: groups.map((g) => g.id), err: (err as Error).message }, 'PreStartContainer failed');
            const wrapped =
              err instanceof RequestError
                ? err
                : new RequestError('PVDP_ERR_PREPARATION', 'precondition', (err as Error).message, { cause: err });
            callback(statusOf(wrapped));
          },
        );
      },
    };
  }
}
