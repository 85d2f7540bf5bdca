// The DRA front end's requests to the API server for ResourceSlices: the client (loaded on
// first use), each request with a deadline, cancellable on stop, its failure classified, the
// watch as a plain streaming GET, and the client model's spelling of a slice.
import * as http from 'node:http';
import * as https from 'node:https';
import type { ConfigurationOptions, CoreV1Api, KubeConfig, ResourceV1Api, V1ResourceSlice } from '@kubernetes/client-node';
import { ApiRequests, RequestFailure, Stopped } from '../report/api-request.js';
import type { ResourceSlice } from './slices.js';

type ClientModule = typeof import('@kubernetes/client-node');

export interface Clients {
  k8s: ClientModule;
  kc: KubeConfig;
  core: CoreV1Api;
  resource: ResourceV1Api;
}

export { RequestFailure, Stopped };

const RESOURCE_SLICES_PATH = '/apis/resource.k8s.io/v1/resourceslices';

export interface WatchEvent {
  type?: string;
  object?: Record<string, unknown>;
}

export class SliceApi {
  /** The clients once loaded; null until then and after a configuration failure. */
  clients: Clients | null = null;
  private readonly calls: ApiRequests;

  constructor(
    private readonly kubeConfig: KubeConfig | (() => KubeConfig | Promise<KubeConfig>),
    readonly requestTimeoutMs: number,
  ) {
    this.calls = new ApiRequests(requestTimeoutMs, 'slice publisher');
  }

  /** Requests on their way. */
  get requests(): number {
    return this.calls.requests;
  }

  /** Cancels the requests in flight; later requests fail with Stopped. */
  stop(): void {
    this.calls.stop();
  }

  async client(): Promise<Clients> {
    if (this.clients) return this.clients;
    try {
      const k8s = await import('@kubernetes/client-node');
      const source = this.kubeConfig;
      const kc = typeof source === 'function' ? await source() : source;
      this.clients = { k8s, kc, core: kc.makeApiClient(k8s.CoreV1Api), resource: kc.makeApiClient(k8s.ResourceV1Api) };
      return this.clients;
    } catch (err) {
      throw new RequestFailure({ kind: 'config', operation: 'loadConfig', message: (err as Error).message });
    }
  }

  /** One request with a deadline, cancellable by stop(), errors classified. */
  async call<T>(operation: string, send: (options: ConfigurationOptions) => Promise<T>): Promise<T> {
    if (this.calls.isStopped) throw new Stopped('slice publisher stopped');
    const { k8s } = await this.client();
    return this.calls.call(k8s, operation, send);
  }
}

export interface WatchRequest {
  clients: Clients;
  server: string;
  fieldSelector: string;
  fromVersion: string | undefined;
  timeoutSeconds: number;
  requestTimeoutMs: number;
  abort: AbortController;
}

export interface WatchHandlers {
  /** True when the watch must not open any more. */
  stopped(): boolean;
  onEvent(event: WatchEvent): void;
  /** The server said our resourceVersion is too old (or another error): list again before watching. */
  onError(): void;
  /** Called once, when the watch ends for whatever reason. */
  onEnd(err?: Error): void;
}

/**
 * A plain streaming GET: client-node's Watch cannot be cancelled before the
 * server answers, and a hanging server would keep it (and the process) alive.
 */
export function watchResourceSlices(w: WatchRequest, handlers: WatchHandlers): void {
  const { clients, abort, fromVersion, timeoutSeconds } = w;
  const options: https.RequestOptions = {};
  let ended = false;
  let idle: NodeJS.Timeout | null = null;
  const clearIdle = () => {
    if (idle) clearTimeout(idle);
    idle = null;
  };
  const end = (err?: Error) => {
    if (ended) return;
    ended = true;
    clearIdle();
    handlers.onEnd(err);
  };
  void clients.kc
    .applyToHTTPSOptions(options)
    .then(() => {
      if (abort.signal.aborted || handlers.stopped()) return end();
      const url = new URL(w.server.replace(/\/+$/, '') + RESOURCE_SLICES_PATH);
      url.searchParams.set('watch', 'true');
      url.searchParams.set('fieldSelector', w.fieldSelector);
      url.searchParams.set('allowWatchBookmarks', 'true');
      url.searchParams.set('timeoutSeconds', String(timeoutSeconds));
      if (fromVersion) url.searchParams.set('resourceVersion', fromVersion);
      const transport = url.protocol === 'https:' ? https : http;
      const headers = { ...(options.headers ?? {}), Accept: 'application/json' };
      const req = transport.request(url, { ...options, headers, method: 'GET', signal: abort.signal });
      idle = setTimeout(() => end(new Error(`the watch got no answer within ${w.requestTimeoutMs} ms`)), w.requestTimeoutMs);
      idle.unref?.();
      req.on('error', (err) => end(err));
      req.on('response', (res) => {
        clearIdle();
        if (res.statusCode !== 200) {
          res.resume();
          return end(new Error(`the watch was refused with HTTP ${res.statusCode}`));
        }
        // Bookmarks come about once a minute; silence far beyond the watch's own timeout means a dead connection.
        const armIdle = () => {
          clearIdle();
          idle = setTimeout(() => end(new Error('the watch went silent')), timeoutSeconds * 1000 + w.requestTimeoutMs);
          idle.unref?.();
        };
        armIdle();
        let buffered = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          armIdle();
          buffered += chunk;
          let newline = buffered.indexOf('\n');
          while (newline >= 0) {
            const line = buffered.slice(0, newline).trim();
            buffered = buffered.slice(newline + 1);
            newline = buffered.indexOf('\n');
            if (!line) continue;
            let event: WatchEvent;
            try {
              event = JSON.parse(line) as WatchEvent;
            } catch {
              continue;
            }
            if (event.type === 'ERROR') {
              handlers.onError();
              return end(new Error(`the watch ended with an error: ${String(event.object?.['message'] ?? 'unknown')}`));
            }
            handlers.onEvent(event);
          }
        });
        res.on('end', () => end());
        res.on('error', (err) => end(err));
        res.on('close', () => end());
      });
      req.end();
    })
    .catch((err: unknown) => end(err as Error));
}

/** Runs `work` on every item, at most `limit` at a time; stops taking new items after a failure and throws the first once all settled. */
export async function eachLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const worker = async (): Promise<void> => {
    while (errors.length === 0 && next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (err) {
        errors.push(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (errors.length > 0) throw errors[0];
}

// ---- the client's model ------------------------------------------------------------------------
// The generated models name the `int` attribute `_int` (and turn times into
// Dates); the rest of ResourceSlice maps one to one. Everything else here works
// on the wire's plain JSON.

export function toClientSlice(slice: ResourceSlice): V1ResourceSlice {
  const copy = structuredClone(slice) as unknown as V1ResourceSlice;
  for (const device of copy.spec.devices ?? []) {
    for (const attribute of Object.values(device.attributes ?? {}) as Array<Record<string, unknown>>) {
      if ('int' in attribute) {
        attribute['_int'] = attribute['int'];
        delete attribute['int'];
      }
    }
  }
  return copy;
}

export function fromClientSlice(slice: V1ResourceSlice): ResourceSlice {
  const json = JSON.parse(JSON.stringify(slice)) as ResourceSlice;
  for (const device of json.spec?.devices ?? []) {
    for (const attribute of Object.values(device.attributes ?? {}) as Array<Record<string, unknown>>) {
      if ('_int' in attribute) {
        attribute['int'] = attribute['_int'];
        delete attribute['_int'];
      }
    }
  }
  return json;
}
