// A kubelet stand-in that speaks the real wire contract over real unix
// sockets: it serves Registration, dials plugins back inside Register, keeps
// their ListAndWatch streams, and restarts like the real one (deleting every
// socket in the directory). The demo and the tests drive the plugin through it.
import { EventEmitter } from 'node:events';
import { mkdir, readdir, lstat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { devicePluginProto, DEVICE_PLUGIN_API_VERSION, KUBELET_CHECKPOINT_NAME, KUBELET_SOCKET_NAME } from '../kubelet/proto.js';
import { resourceNameProblem } from '../config/schema.js';
import { shutdownServer } from '../rpc/grpc-shutdown.js';
import type { DevicePluginClient } from '../generated/v1beta1/DevicePlugin.js';
import type { Device__Output } from '../generated/v1beta1/Device.js';
import type { DevicePluginOptions__Output } from '../generated/v1beta1/DevicePluginOptions.js';
import type { AllocateResponse__Output } from '../generated/v1beta1/AllocateResponse.js';
import type { PreferredAllocationResponse__Output } from '../generated/v1beta1/PreferredAllocationResponse.js';
import type { ListAndWatchResponse__Output } from '../generated/v1beta1/ListAndWatchResponse.js';
import type { RegistrationHandlers } from '../generated/v1beta1/Registration.js';

export interface RegisteredPlugin {
  resource: string;
  endpoint: string;
  options: DevicePluginOptions__Output;
  client: DevicePluginClient;
  stream: grpc.ClientReadableStream<ListAndWatchResponse__Output> | null;
  /** Last list the plugin sent; every device counts as unhealthy once the stream ended. */
  devices: Device__Output[];
  streamOpen: boolean;
  updates: number;
}

export interface SimulatedKubeletEvents {
  registered: [resource: string];
  devices: [resource: string, devices: Device__Output[]];
  streamEnded: [resource: string];
}

export class SimulatedKubelet extends EventEmitter<SimulatedKubeletEvents> {
  readonly dir: string;
  private server: grpc.Server | null = null;
  private readonly plugins = new Map<string, RegisteredPlugin>();
  /** Every Register call received, accepted or not. */
  registerCalls = 0;
  restarts = 0;
  /** How long the dial back inside Register may take, as the kubelet's 10 s. */
  dialTimeoutMs = 10_000;
  /** False models a kubelet that accepts Register but never opens ListAndWatch. */
  openStreams = true;

  constructor(dir: string) {
    super();
    this.dir = dir;
  }

  get socketPath(): string {
    return join(this.dir, KUBELET_SOCKET_NAME);
  }

  plugin(resource: string): RegisteredPlugin | undefined {
    return this.plugins.get(resource);
  }

  resources(): string[] {
    return [...this.plugins.keys()].sort();
  }

  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await unlink(this.socketPath).catch(() => undefined);
    const server = new grpc.Server();
    const handlers: RegistrationHandlers = {
      Register: (call, callback) => {
        this.registerCalls += 1;
        const req = call.request;
        const fail = (code: grpc.status, details: string) => callback({ code, details, metadata: new grpc.Metadata() });
        if (req.version !== DEVICE_PLUGIN_API_VERSION) {
          fail(grpc.status.INVALID_ARGUMENT, `unsupported API version ${req.version}`);
          return;
        }
        const problem = resourceNameProblem(req.resource_name);
        if (problem) {
          fail(grpc.status.INVALID_ARGUMENT, `invalid resource name ${req.resource_name}: ${problem}`);
          return;
        }
        if (!req.endpoint || req.endpoint.includes('/')) {
          fail(grpc.status.INVALID_ARGUMENT, `invalid endpoint ${req.endpoint}`);
          return;
        }
        // As kubelets since 1.26: a plugin already connected on the same socket
        // is kept, and Register succeeds without dialling again.
        const current = this.plugins.get(req.resource_name);
        if (current?.streamOpen && current.endpoint === req.endpoint) {
          callback(null, {});
          return;
        }
        this.connect(req.resource_name, req.endpoint).then(
          () => callback(null, {}),
          (err: Error) => fail(grpc.status.UNAVAILABLE, `failed to dial device plugin: ${err.message}`),
        );
      },
    };
    server.addService(devicePluginProto().v1beta1.Registration.service, handlers);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    this.server = server;
  }

  /** Dials the plugin, asks its options (as the kubelet does inside Register), then opens ListAndWatch. */
  private async connect(resource: string, endpoint: string): Promise<void> {
    const { DevicePlugin } = devicePluginProto().v1beta1;
    const client = new DevicePlugin(`unix:${join(this.dir, endpoint)}`, grpc.credentials.createInsecure());
    let options: DevicePluginOptions__Output;
    try {
      options = await new Promise<DevicePluginOptions__Output>((resolve, reject) =>
        client.GetDevicePluginOptions({}, { deadline: Date.now() + this.dialTimeoutMs }, (err, res) =>
          err || !res ? reject(err ?? new Error('empty options')) : resolve(res),
        ),
      );
    } catch (err) {
      client.close();
      throw err;
    }
    // A new registration for the same resource replaces the old endpoint.
    const old = this.plugins.get(resource);
    if (old) this.disconnect(old);
    const plugin: RegisteredPlugin = { resource, endpoint, options, client, stream: null, devices: [], streamOpen: this.openStreams, updates: 0 };
    this.plugins.set(resource, plugin);
    if (!this.openStreams) {
      this.emit('registered', resource);
      return;
    }
    const stream = client.ListAndWatch({});
    plugin.stream = stream;
    stream.on('data', (res: ListAndWatchResponse__Output) => {
      if (this.plugins.get(resource) !== plugin) return;
      plugin.devices = res.devices;
      plugin.updates += 1;
      this.emit('devices', resource, res.devices);
    });
    const ended = () => {
      if (!plugin.streamOpen) return;
      plugin.streamOpen = false;
      if (this.plugins.get(resource) === plugin) {
        // As the kubelet: every device of the resource becomes unhealthy.
        plugin.devices = plugin.devices.map((d) => ({ ...d, health: 'Unhealthy' }));
        this.emit('streamEnded', resource);
      }
    };
    stream.on('error', ended);
    stream.on('end', ended);
    this.emit('registered', resource);
  }

  /**
   * Cancels a resource's ListAndWatch stream while staying up, as the kubelet
   * does when it stops an endpoint: the plugin has to register again.
   */
  dropStream(resource: string): void {
    const plugin = this.plugins.get(resource);
    if (!plugin?.stream) throw new Error(`No stream open for ${resource}`);
    plugin.stream.cancel();
  }

  private disconnect(plugin: RegisteredPlugin): void {
    plugin.streamOpen = false;
    plugin.stream?.cancel();
    plugin.client.close();
  }

  private client(resource: string): DevicePluginClient {
    const plugin = this.plugins.get(resource);
    if (!plugin) throw new Error(`No plugin registered for ${resource}`);
    return plugin.client;
  }

  allocate(resource: string, containers: string[][]): Promise<AllocateResponse__Output> {
    return new Promise((resolve, reject) =>
      this.client(resource).Allocate(
        { container_requests: containers.map((ids) => ({ devices_ids: ids })) },
        { deadline: Date.now() + 10_000 },
        (err, res) => (err || !res ? reject(err) : resolve(res)),
      ),
    );
  }

  preferred(
    resource: string,
    requests: { available: string[]; mustInclude?: string[]; size: number }[],
  ): Promise<PreferredAllocationResponse__Output> {
    return new Promise((resolve, reject) =>
      this.client(resource).GetPreferredAllocation(
        {
          container_requests: requests.map((r) => ({
            available_deviceIDs: r.available,
            must_include_deviceIDs: r.mustInclude ?? [],
            allocation_size: r.size,
          })),
        },
        { deadline: Date.now() + 10_000 },
        (err, res) => (err || !res ? reject(err) : resolve(res)),
      ),
    );
  }

  /** PreStartContainer with the kubelet's 30 s timeout. */
  preStart(resource: string, ids: string[]): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client(resource).PreStartContainer({ devices_ids: ids }, { deadline: Date.now() + 30_000 }, (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  }

  /** Resolves once the resource's device list satisfies `predicate`. */
  waitForDevices(
    resource: string,
    predicate: (devices: Device__Output[]) => boolean,
    timeoutMs = 5000,
  ): Promise<Device__Output[]> {
    const current = this.plugins.get(resource);
    if (current?.streamOpen && current.updates > 0 && predicate(current.devices)) return Promise.resolve(current.devices);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('devices', onDevices);
        const now = this.plugins.get(resource)?.devices ?? [];
        reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${resource} devices; last: ${JSON.stringify(now)}`));
      }, timeoutMs);
      const onDevices = (r: string, devices: Device__Output[]) => {
        if (r !== resource || !predicate(devices)) return;
        clearTimeout(timer);
        this.off('devices', onDevices);
        resolve(devices);
      };
      this.on('devices', onDevices);
    });
  }

  /** Resolves at the next registration of `resource`. */
  waitForRegistration(resource: string, timeoutMs = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('registered', onRegistered);
        reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${resource} to register`));
      }, timeoutMs);
      const onRegistered = (r: string) => {
        if (r !== resource) return;
        clearTimeout(timer);
        this.off('registered', onRegistered);
        resolve();
      };
      this.on('registered', onRegistered);
    });
  }

  /**
   * Restarts like the real kubelet: drops every plugin connection, deletes
   * every non-directory file in the directory but its checkpoint, and serves
   * a new kubelet.sock.
   */
  async restart(): Promise<void> {
    await this.shutdown();
    for (const name of await readdir(this.dir)) {
      if (name === KUBELET_CHECKPOINT_NAME) continue;
      const path = join(this.dir, name);
      const info = await lstat(path).catch(() => null);
      if (info && !info.isDirectory()) await unlink(path).catch(() => undefined);
    }
    this.restarts += 1;
    await this.start();
  }

  private async shutdown(): Promise<void> {
    for (const plugin of this.plugins.values()) this.disconnect(plugin);
    this.plugins.clear();
    const server = this.server;
    this.server = null;
    if (server) await shutdownServer(server, 1000);
  }

  async stop(): Promise<void> {
    await this.shutdown();
    await unlink(this.socketPath).catch(() => undefined);
  }
}
