// A DRA kubelet stand-in that speaks the real wire contract over real unix
// sockets: it watches the plugin registry directory, asks each new socket who
// it is (GetInfo, 1 s deadline), validates the answer and says whether it took
// the plugin (NotifyRegistrationStatus), picks the first DRA service version
// it knows from the plugin's list, prepares and unprepares claims on the
// plugin's endpoint, keeps the health stream open, and restarts like the real
// one (registering every socket it finds again). The demo and the tests drive
// the DRA front end through it.
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { lstat, mkdir, readdir } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { draProtos, DRA_PLUGIN_TYPE } from '../dra/proto.js';

export interface DraClaimRef {
  namespace: string;
  uid: string;
  name: string;
}

export interface DevicePrepared {
  request_names: string[];
  pool_name: string;
  device_name: string;
  cdi_device_ids: string[];
}

export interface HealthEntry {
  pool: string;
  device: string;
  health: 'UNKNOWN' | 'HEALTHY' | 'UNHEALTHY';
  lastUpdated: number;
  message: string;
}

export interface RegisteredDraPlugin {
  name: string;
  /** The registration socket. */
  registrationSocket: string;
  endpoint: string;
  /** The DRA service version chosen (first of the plugin's list this kubelet knows). */
  version: 'v1' | 'v1beta1';
  healthVersion: 'v1' | 'v1beta1' | 'v1alpha1' | null;
  /** Last complete health list; empty before the first message. */
  health: HealthEntry[];
  healthMessages: number;
}

export interface DraKubeletEvents {
  registered: [name: string];
  refused: [socket: string, reason: string];
  health: [name: string, entries: HealthEntry[]];
}

export interface DraKubeletOptions {
  /** DRA service versions this kubelet knows (a 1.33 kubelet: only v1beta1). */
  knownVersions?: readonly ('v1' | 'v1beta1')[];
  /** Health versions it knows; empty: it never opens the health stream. */
  knownHealthVersions?: readonly ('v1' | 'v1beta1' | 'v1alpha1')[];
  /** Called at each start, as the real kubelet deletes its node's ResourceSlices then. */
  onStart?: () => Promise<void>;
  /** Per-call deadline for prepare and unprepare (the kubelet's 45 s). */
  callTimeoutMs?: number;
  /** First delay before registering a socket again after a failed attempt (the kubelet's 1 s, doubling). */
  retryMs?: number;
}

interface Connection {
  plugin: RegisteredDraPlugin;
  dra: grpc.Client;
  healthClient: grpc.Client | null;
  healthCall: grpc.ClientReadableStream<unknown> | null;
  healthRetry: NodeJS.Timeout | null;
}

function deadline(ms: number): Date {
  return new Date(Date.now() + ms);
}

export class DraKubelet extends EventEmitter<DraKubeletEvents> {
  private readonly connections = new Map<string, Connection>();
  private readonly pending = new Set<string>();
  /** Sockets whose registration failed: the next attempt's timer and delay. */
  private readonly retries = new Map<string, { timer: NodeJS.Timeout | null; delayMs: number }>();
  private watcher: FSWatcher | null = null;
  private running = false;
  /** GetInfo calls made (each registration attempt). */
  infoCalls = 0;
  restarts = 0;
  /** Last refusal reason per socket. */
  readonly refusals = new Map<string, string>();

  constructor(
    readonly registryDir: string,
    private readonly options: DraKubeletOptions = {},
  ) {
    super();
  }

  plugin(name: string): RegisteredDraPlugin | undefined {
    return [...this.connections.values()].find((c) => c.plugin.name === name)?.plugin;
  }

  plugins(): RegisteredDraPlugin[] {
    return [...this.connections.values()].map((c) => c.plugin);
  }

  async start(): Promise<void> {
    await mkdir(this.registryDir, { recursive: true });
    this.running = true;
    await this.options.onStart?.();
    this.watcher = watch(this.registryDir, { persistent: false }, () => void this.scan());
    await this.scan();
  }

  /** Like a kubelet restart: forget every plugin, then register every socket found again. */
  async restart(): Promise<void> {
    await this.stop();
    this.restarts += 1;
    await this.start();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.watcher?.close();
    this.watcher = null;
    for (const r of this.retries.values()) if (r.timer) clearTimeout(r.timer);
    this.retries.clear();
    for (const c of this.connections.values()) this.disconnect(c);
    this.connections.clear();
  }

  private disconnect(c: Connection): void {
    if (c.healthRetry) clearTimeout(c.healthRetry);
    c.healthCall?.cancel();
    c.healthClient?.close();
    c.dra.close();
  }

  /** Registers new sockets and drops plugins whose socket went. */
  async scan(): Promise<void> {
    if (!this.running) return;
    let names: string[];
    try {
      names = await readdir(this.registryDir);
    } catch {
      return;
    }
    const present = new Set<string>();
    for (const name of names) {
      if (name.startsWith('.')) continue;
      const path = join(this.registryDir, name);
      const st = await lstat(path).catch(() => null);
      if (!st?.isSocket()) continue;
      present.add(path);
      const known = this.connections.get(path);
      // A socket replaced by a new one (same path, new inode) is a new plugin.
      if (known && (known as Connection & { ino?: number }).ino === st.ino) continue;
      if (this.pending.has(path)) continue;
      if (known) {
        this.disconnect(known);
        this.connections.delete(path);
      }
      if (this.retries.get(path)?.timer) continue;
      this.pending.add(path);
      void this.register(path, st.ino).finally(() => this.pending.delete(path));
    }
    for (const [path, c] of [...this.connections]) {
      if (!present.has(path)) {
        this.disconnect(c);
        this.connections.delete(path);
      }
    }
  }

  private async register(socket: string, ino: number): Promise<void> {
    const protos = draProtos();
    const client = new protos.pluginregistration.Registration(`unix:${socket}`, grpc.credentials.createInsecure());
    const refuse = async (reason: string) => {
      this.refusals.set(socket, reason);
      this.scheduleRetry(socket);
      this.emit('refused', socket, reason);
      await new Promise<void>((resolve) =>
        client.NotifyRegistrationStatus({ plugin_registered: false, error: reason }, { deadline: deadline(5000) }, () => resolve()),
      );
    };
    try {
      this.infoCalls += 1;
      const info = await new Promise<{ type: string; name: string; endpoint: string; supported_versions: string[] }>((resolve, reject) =>
        client.GetInfo({}, { deadline: deadline(1000) }, (err, value) => (err || !value ? reject(err ?? new Error('no answer')) : resolve(value))),
      );
      if (info.type !== DRA_PLUGIN_TYPE) return await refuse(`plugin type ${info.type} is not ${DRA_PLUGIN_TYPE}`);
      if (!info.name) return await refuse('the plugin has no name');
      if (!isAbsolute(info.endpoint)) return await refuse(`endpoint ${info.endpoint} is not an absolute path`);
      const known = this.options.knownVersions ?? ['v1', 'v1beta1'];
      const chosen = info.supported_versions.map((v) => v.replace(/\.DRAPlugin$/, '')).find((v) => known.includes(v as 'v1' | 'v1beta1')) as
        | 'v1'
        | 'v1beta1'
        | undefined;
      if (!chosen) return await refuse(`none of the versions ${info.supported_versions.join(', ')} is supported`);
      const knownHealth = this.options.knownHealthVersions ?? ['v1', 'v1beta1', 'v1alpha1'];
      const healthVersion =
        (knownHealth.find((v) => info.supported_versions.includes(`${v}.DRAResourceHealth`)) as RegisteredDraPlugin['healthVersion'] | undefined) ?? null;
      const dra =
        chosen === 'v1'
          ? new protos.k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin(`unix:${info.endpoint}`, grpc.credentials.createInsecure())
          : new protos.v1beta1.DRAPlugin(`unix:${info.endpoint}`, grpc.credentials.createInsecure());
      const plugin: RegisteredDraPlugin = { name: info.name, registrationSocket: socket, endpoint: info.endpoint, version: chosen, healthVersion, health: [], healthMessages: 0 };
      const connection: Connection & { ino: number } = { plugin, dra, healthClient: null, healthCall: null, healthRetry: null, ino };
      this.connections.set(socket, connection);
      await new Promise<void>((resolve, reject) =>
        client.NotifyRegistrationStatus({ plugin_registered: true, error: '' }, { deadline: deadline(5000) }, (err) => (err ? reject(err) : resolve())),
      );
      this.refusals.delete(socket);
      this.retries.delete(socket);
      if (healthVersion) this.openHealth(connection, healthVersion);
      this.emit('registered', info.name);
    } catch (err) {
      this.refusals.set(socket, (err as Error).message);
      this.connections.delete(socket);
      this.scheduleRetry(socket);
      this.emit('refused', socket, (err as Error).message);
    } finally {
      client.close();
    }
  }

  /** As the kubelet's plugin manager: a socket that failed to register is tried again, with backoff, while it is there. */
  private scheduleRetry(socket: string): void {
    if (!this.running) return;
    const previous = this.retries.get(socket);
    if (previous?.timer) clearTimeout(previous.timer);
    const delayMs = previous ? Math.min(previous.delayMs * 2, 16_000) : (this.options.retryMs ?? 1000);
    const entry: { timer: NodeJS.Timeout | null; delayMs: number } = { timer: null, delayMs };
    entry.timer = setTimeout(() => {
      entry.timer = null;
      void lstat(socket)
        .then((st) => {
          if (!st.isSocket() || !this.running || this.pending.has(socket)) {
            this.retries.delete(socket);
            return;
          }
          this.pending.add(socket);
          return this.register(socket, st.ino).finally(() => this.pending.delete(socket));
        })
        .catch(() => this.retries.delete(socket));
    }, delayMs);
    entry.timer.unref();
    this.retries.set(socket, entry);
  }


  private openHealth(c: Connection, version: 'v1' | 'v1beta1' | 'v1alpha1'): void {
    const protos = draProtos();
    const Ctor = protos[version].DRAResourceHealth;
    c.healthClient ??= new Ctor(`unix:${c.plugin.endpoint}`, grpc.credentials.createInsecure());
    const call = (c.healthClient as InstanceType<typeof Ctor>).NodeWatchResources({});
    c.healthCall = call as unknown as grpc.ClientReadableStream<unknown>;
    call.on('data', (message: { devices: { device: { pool_name: string; device_name: string } | null; health: string; last_updated_time: string; message?: string }[] }) => {
      c.plugin.health = message.devices.map((d) => ({
        pool: d.device?.pool_name ?? '',
        device: d.device?.device_name ?? '',
        health: d.health as HealthEntry['health'],
        lastUpdated: Number(d.last_updated_time),
        message: d.message ?? '',
      }));
      c.plugin.healthMessages += 1;
      this.emit('health', c.plugin.name, c.plugin.health);
    });
    const again = () => {
      if (c.healthCall !== (call as unknown) || !this.running) return;
      c.healthCall = null;
      // The kubelet retries the stream every 5 s; the stand-in sooner.
      c.healthRetry = setTimeout(() => {
        c.healthRetry = null;
        if ([...this.connections.values()].includes(c)) this.openHealth(c, version);
      }, 200);
      c.healthRetry.unref();
    };
    call.on('error', again);
    call.on('end', again);
  }

  private connection(name: string): Connection {
    const c = [...this.connections.values()].find((x) => x.plugin.name === name);
    if (!c) throw new Error(`DRA plugin ${name} is not registered`);
    return c;
  }

  /**
   * One call on the plugin's DRA service. A channel that failed (the socket
   * was served again) is replaced and the call retried until the deadline, as
   * the kubelet retries at its next pod sync.
   */
  private async call<T>(name: string, method: 'NodePrepareResources' | 'NodeUnprepareResources', request: unknown): Promise<T> {
    const until = Date.now() + (this.options.callTimeoutMs ?? 45_000);
    for (;;) {
      const c = this.connection(name);
      try {
        return await new Promise<T>((resolve, reject) =>
          (c.dra as unknown as Record<string, (req: unknown, opts: grpc.CallOptions, cb: grpc.requestCallback<T>) => void>)[method]!(
            request,
            { deadline: new Date(until) },
            (err, value) => (err || value === undefined ? reject(err ?? new Error('no answer')) : resolve(value)),
          ),
        );
      } catch (err) {
        if ((err as grpc.ServiceError).code !== grpc.status.UNAVAILABLE || Date.now() > until - 100) throw err;
        c.dra.close();
        const protos = draProtos();
        c.dra =
          c.plugin.version === 'v1'
            ? new protos.k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin(`unix:${c.plugin.endpoint}`, grpc.credentials.createInsecure())
            : new protos.v1beta1.DRAPlugin(`unix:${c.plugin.endpoint}`, grpc.credentials.createInsecure());
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  /** NodePrepareResources for claims; resolves with the per-claim answers keyed by uid. */
  async prepare(name: string, claims: DraClaimRef[]): Promise<Record<string, { devices: DevicePrepared[]; error: string }>> {
    return (await this.call<{ claims: Record<string, { devices: DevicePrepared[]; error: string }> }>(name, 'NodePrepareResources', { claims })).claims;
  }

  async unprepare(name: string, claims: DraClaimRef[]): Promise<Record<string, { error: string }>> {
    return (await this.call<{ claims: Record<string, { error: string }> }>(name, 'NodeUnprepareResources', { claims })).claims;
  }

  /** Resolves once `check` holds for a plugin's health list. */
  waitForHealth(name: string, check: (entries: HealthEntry[]) => boolean, timeoutMs = 10_000): Promise<HealthEntry[]> {
    const current = this.plugin(name);
    if (current && current.healthMessages > 0 && check(current.health)) return Promise.resolve(current.health);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('health', listener);
        reject(new Error(`health of ${name} did not reach the expected state within ${timeoutMs} ms`));
      }, timeoutMs);
      const listener = (plugin: string, entries: HealthEntry[]) => {
        if (plugin !== name || !check(entries)) return;
        clearTimeout(timer);
        this.off('health', listener);
        resolve(entries);
      };
      this.on('health', listener);
    });
  }

  /** Resolves once a plugin of this name is registered. */
  waitForPlugin(name: string, timeoutMs = 10_000): Promise<RegisteredDraPlugin> {
    const current = this.plugin(name);
    if (current) return Promise.resolve(current);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('registered', listener);
        reject(new Error(`DRA plugin ${name} did not register within ${timeoutMs} ms`));
      }, timeoutMs);
      const listener = (plugin: string) => {
        if (plugin !== name) return;
        clearTimeout(timer);
        this.off('registered', listener);
        resolve(this.plugin(name)!);
      };
      this.on('registered', listener);
    });
  }
}
