// The DRA health stream: every open NodeWatchResources call gets the complete
// list of the driver's devices at once and again on every change, in the
// message shape of the version it called (v1alpha1 has no timeout or message).
// The list is also sent again periodically with the time it was last checked:
// the kubelet turns a device it has not heard about for a while Unknown.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';

export interface DeviceHealthEntry {
  pool: string;
  device: string;
  healthy: boolean;
  /** Why it is unhealthy; empty when healthy. */
  message: string;
}

/** The kubelet caps health messages at 1024 characters. */
const MAX_MESSAGE = 1024;

type Version = 'v1alpha1' | 'v1beta1' | 'v1';

interface Watcher {
  call: grpc.ServerWritableStream<unknown, unknown>;
  version: Version;
  done: boolean;
}

export interface HealthStreamOptions {
  logger?: Logger;
  /** How often the full list is sent even without a change (default 10 s). */
  resendMs?: number;
  now?: () => number;
}

export class HealthStream {
  private devices: DeviceHealthEntry[] = [];
  private lastText = '';
  /** When each device's health was last evaluated (unix seconds), by `pool/device`. */
  private checkedAt = new Map<string, number>();
  private readonly watchers = new Set<Watcher>();
  private readonly logger: Logger;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(private readonly options: HealthStreamOptions = {}) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'dra' });
    this.now = options.now ?? Date.now;
  }

  get streams(): number {
    return this.watchers.size;
  }

  /** The complete list now; streams hear of it only when it changed. */
  set(devices: readonly DeviceHealthEntry[]): void {
    const sorted = [...devices].sort((a, b) => a.pool.localeCompare(b.pool) || a.device.localeCompare(b.device));
    const seconds = Math.floor(this.now() / 1000);
    const checked = new Map<string, number>();
    for (const d of sorted) checked.set(`${d.pool}/${d.device}`, seconds);
    this.checkedAt = checked;
    this.devices = sorted;
    const text = JSON.stringify(sorted);
    if (text === this.lastText) return;
    this.lastText = text;
    this.broadcast();
  }

  private broadcast(): void {
    for (const w of this.watchers) this.send(w);
  }

  private message(version: Version): unknown {
    return {
      devices: this.devices.map((d) => {
        const entry: Record<string, unknown> = {
          device: { pool_name: d.pool, device_name: d.device },
          health: d.healthy ? 'HEALTHY' : 'UNHEALTHY',
          last_updated_time: String(this.checkedAt.get(`${d.pool}/${d.device}`) ?? Math.floor(this.now() / 1000)),
        };
        if (version !== 'v1alpha1') {
          entry['health_check_timeout_seconds'] = '0';
          entry['message'] = d.message.length > MAX_MESSAGE ? `${d.message.slice(0, MAX_MESSAGE - 3)}...` : d.message;
        }
        return entry;
      }),
    };
  }

  private send(watcher: Watcher): void {
    if (watcher.done) return;
    try {
      watcher.call.write(this.message(watcher.version));
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'Failed to write a health update');
    }
  }

  /** The handler of NodeWatchResources for one version. */
  handler(version: Version): grpc.handleServerStreamingCall<unknown, unknown> {
    return (call) => {
      if (this.closed) {
        call.end();
        return;
      }
      const watcher: Watcher = { call, version, done: false };
      this.watchers.add(watcher);
      this.logger.info({ version, streams: this.watchers.size }, 'Kubelet opened the health stream');
      const finish = () => {
        if (watcher.done) return;
        watcher.done = true;
        this.watchers.delete(watcher);
      };
      call.on('cancelled', finish);
      call.on('error', finish);
      call.on('close', finish);
      this.send(watcher);
      this.arm();
    };
  }

  private arm(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => {
      if (this.watchers.size === 0) return;
      // Re-evaluated on every topology the daemon applies; a quiet node still says its devices were checked.
      const seconds = Math.floor(this.now() / 1000);
      for (const key of this.checkedAt.keys()) this.checkedAt.set(key, seconds);
      this.broadcast();
    }, this.options.resendMs ?? 10_000);
    this.timer.unref();
  }

  /** Ends every stream (shutdown). */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const w of this.watchers) {
      w.done = true;
      try {
        w.call.end();
      } catch {
        // Gone with its connection.
      }
    }
    this.watchers.clear();
  }
}
