// A local stand-in for the Kubernetes API server, speaking the subset the node
// reporter uses: nodes (get, patch, patch status) and core/v1 events (create,
// patch, list). It applies the patch semantics the real server applies for
// these objects (strategic merge: node conditions merged by `type`; JSON merge
// for labels), records every request, and can be told to misbehave: answer
// 403, 409, 500 (or any status), hang, or be down altogether.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';

export interface RecordedRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  query: URLSearchParams;
  contentType: string | undefined;
  /** Parsed JSON body, or the raw text when it is not JSON, or undefined when empty. */
  body: unknown;
  /** Status answered; undefined while hanging or when the connection was cut. */
  status?: number;
  at: number;
}

/** What a fault does to a matching request. */
export type FaultAction = number | 'hang' | { delayMs: number };

export interface FaultRule {
  respond: FaultAction;
  /** Only requests with this method (upper case). */
  method?: string;
  /** Only requests whose path matches (a prefix string or a RegExp). */
  path?: string | RegExp;
  /** How many requests it applies to; forever when omitted. */
  times?: number;
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

/** RFC 7386 JSON merge patch. */
export function jsonMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const result: Json = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = jsonMergePatch(result[key], value);
  }
  return result;
}

/** List fields merged by a key in strategic merge patch (the ones Node and Event use here). */
const MERGE_KEYS: Record<string, string> = { conditions: 'type', addresses: 'type', taints: 'key' };

/** Strategic merge patch for the fields we use; other lists are replaced as the server does. */
export function strategicMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const result: Json = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith('$')) continue;
    const mergeKey = MERGE_KEYS[key];
    if (value === null) {
      delete result[key];
    } else if (mergeKey && Array.isArray(value)) {
      const current = Array.isArray(result[key]) ? [...(result[key] as unknown[])] : [];
      for (const item of value) {
        if (!isObject(item)) continue;
        const index = current.findIndex((c) => isObject(c) && c[mergeKey] === item[mergeKey]);
        if (item['$patch'] === 'delete') {
          if (index >= 0) current.splice(index, 1);
        } else if (index >= 0) {
          current[index] = strategicMergePatch(current[index], item);
        } else {
          current.push(strategicMergePatch({}, item));
        }
      }
      result[key] = current;
    } else {
      result[key] = strategicMergePatch(result[key], value);
    }
  }
  return result;
}

interface PendingFault extends FaultRule {
  used: number;
}

export class FakeApiServer {
  readonly requests: RecordedRequest[] = [];
  private readonly nodes = new Map<string, Json>();
  private readonly eventStore = new Map<string, Json>();
  private faults: PendingFault[] = [];
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private readonly hanging = new Set<ServerResponse>();
  private resourceVersion = 1;
  private uidCounter = 0;
  private portNumber = 0;

  /** The port; stable across down() and up(). */
  get port(): number {
    return this.portNumber;
  }

  get url(): string {
    return `http://127.0.0.1:${this.portNumber}`;
  }

  /** Starts listening (on a random port the first time, the same port afterwards). */
  async start(): Promise<void> {
    if (this.server) return;
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) this.sendStatus(res, 500, 'InternalError', (err as Error).message);
      });
    });
    server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.portNumber, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address();
    if (address && typeof address === 'object') this.portNumber = address.port;
    this.server = server;
  }

  /** Simulates an API server that is down: stops listening and cuts every connection. */
  async down(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    for (const res of this.hanging) res.destroy();
    this.hanging.clear();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    await closed;
  }

  /** Back up on the same port. */
  async up(): Promise<void> {
    await this.start();
  }

  async close(): Promise<void> {
    this.faults = [];
    await this.down();
  }

  /** A KubeConfig for the real client pointing here, without authentication. */
  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: this.url, skipTLSVerify: true }],
      users: [{ name: 'fake' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'fake' }],
      currentContext: 'fake',
    });
    return kc;
  }

  /** Adds a fault; rules are tried in the order added. */
  addFault(rule: FaultRule): void {
    this.faults.push({ ...rule, used: 0 });
  }

  clearFaults(): void {
    this.faults = [];
    // Requests left hanging by a cleared fault stay hanging: the client must time them out.
  }

  addNode(name: string, init: { labels?: Record<string, string>; conditions?: Json[] } = {}): Json {
    const node: Json = {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name,
        uid: `uid-${name}-${++this.uidCounter}`,
        resourceVersion: String(this.resourceVersion++),
        labels: { 'kubernetes.io/hostname': name, ...(init.labels ?? {}) },
      },
      spec: {},
      status: {
        conditions: init.conditions ?? [
          {
            type: 'Ready',
            status: 'True',
            reason: 'KubeletReady',
            message: 'kubelet is posting ready status',
            lastHeartbeatTime: '2024-01-01T00:00:00Z',
            lastTransitionTime: '2024-01-01T00:00:00Z',
          },
        ],
      },
    };
    this.nodes.set(name, node);
    return clone(node);
  }

  deleteNode(name: string): void {
    this.nodes.delete(name);
  }

  node(name: string): Json | undefined {
    const node = this.nodes.get(name);
    return node ? clone(node) : undefined;
  }

  /** Conditions of a node (a copy). */
  conditions(name: string): Json[] {
    const status = this.nodes.get(name)?.['status'];
    return isObject(status) && Array.isArray(status['conditions']) ? clone(status['conditions'] as Json[]) : [];
  }

  condition(name: string, type: string): Json | undefined {
    return this.conditions(name).find((c) => c['type'] === type);
  }

  labels(name: string): Record<string, string> {
    const metadata = this.nodes.get(name)?.['metadata'];
    return isObject(metadata) && isObject(metadata['labels']) ? clone(metadata['labels'] as Record<string, string>) : {};
  }

  /** Stored events (a copy), in creation order. */
  events(namespace?: string): Json[] {
    return [...this.eventStore.values()]
      .filter((e) => namespace === undefined || (e['metadata'] as Json)['namespace'] === namespace)
      .map(clone);
  }

  private match(req: IncomingMessage, path: string): PendingFault | undefined {
    for (const fault of this.faults) {
      if (fault.times !== undefined && fault.used >= fault.times) continue;
      if (fault.method && fault.method !== req.method) continue;
      if (fault.path instanceof RegExp ? !fault.path.test(path) : fault.path && !path.startsWith(fault.path)) continue;
      fault.used += 1;
      return fault;
    }
    return undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let body: unknown = undefined;
    if (text.length > 0) {
      try {
        body = JSON.parse(text);
      } catch {
        body = text;
      }
    }
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path: url.pathname,
      query: url.searchParams,
      contentType: req.headers['content-type'],
      body,
      at: Date.now(),
    };
    this.requests.push(record);
    res.on('finish', () => {
      record.status = res.statusCode;
    });

    const fault = this.match(req, url.pathname);
    if (fault) {
      const action = fault.respond;
      if (action === 'hang') {
        this.hanging.add(res);
        res.on('close', () => this.hanging.delete(res));
        return;
      }
      if (typeof action === 'number') {
        const reasons: Record<number, string> = { 403: 'Forbidden', 404: 'NotFound', 409: 'Conflict', 429: 'TooManyRequests', 500: 'InternalError', 503: 'ServiceUnavailable' };
        this.sendStatus(res, action, reasons[action] ?? 'Failure', `fake fault: ${action}`);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, action.delayMs));
    }
    this.route(record, res);
  }

  private route(req: RecordedRequest, res: ServerResponse): void {
    const parts = req.path.split('/').filter(Boolean);
    // /api/v1/nodes/{name}[/status]
    if (parts[0] === 'api' && parts[1] === 'v1' && parts[2] === 'nodes' && parts[3] && parts.length <= 5) {
      const name = decodeURIComponent(parts[3]);
      const sub = parts[4];
      if (sub !== undefined && sub !== 'status') return this.sendStatus(res, 404, 'NotFound', 'no such subresource');
      const node = this.nodes.get(name);
      if (!node) return this.sendStatus(res, 404, 'NotFound', `nodes "${name}" not found`);
      if (req.method === 'GET') return this.sendJson(res, 200, node);
      if (req.method === 'PATCH') {
        const patched = this.applyPatch(req, node, res);
        if (!patched) return;
        // The status subresource takes status only; the main resource ignores status.
        const next: Json =
          sub === 'status'
            ? { ...node, status: patched['status'] }
            : { ...patched, status: node['status'] };
        (next['metadata'] as Json)['resourceVersion'] = String(this.resourceVersion++);
        this.nodes.set(name, next);
        return this.sendJson(res, 200, next);
      }
      return this.sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
    }
    // /api/v1/namespaces/{ns}/events[/{name}]
    if (parts[0] === 'api' && parts[1] === 'v1' && parts[2] === 'namespaces' && parts[3] && parts[4] === 'events') {
      const namespace = decodeURIComponent(parts[3]);
      const name = parts[5] ? decodeURIComponent(parts[5]) : undefined;
      const key = (n: string) => `${namespace}/${n}`;
      if (name === undefined && req.method === 'GET') {
        return this.sendJson(res, 200, { kind: 'EventList', apiVersion: 'v1', metadata: {}, items: this.events(namespace) });
      }
      if (name === undefined && req.method === 'POST') {
        if (!isObject(req.body)) return this.sendStatus(res, 400, 'BadRequest', 'body must be an Event');
        const event = clone(req.body);
        const metadata: Json = isObject(event['metadata']) ? event['metadata'] : {};
        let eventName = typeof metadata['name'] === 'string' ? metadata['name'] : undefined;
        if (!eventName && typeof metadata['generateName'] === 'string') {
          eventName = `${metadata['generateName']}${Math.random().toString(36).slice(2, 7)}`;
        }
        if (!eventName) return this.sendStatus(res, 422, 'Invalid', 'metadata.name: Required value');
        if (this.eventStore.has(key(eventName))) {
          return this.sendStatus(res, 409, 'AlreadyExists', `events "${eventName}" already exists`);
        }
        if (metadata['namespace'] !== undefined && metadata['namespace'] !== namespace) {
          return this.sendStatus(res, 400, 'BadRequest', 'the namespace of the object does not match the namespace on the request');
        }
        event['metadata'] = { ...metadata, name: eventName, namespace, uid: `uid-event-${++this.uidCounter}`, resourceVersion: String(this.resourceVersion++) };
        this.eventStore.set(key(eventName), event);
        return this.sendJson(res, 201, event);
      }
      if (name !== undefined) {
        const event = this.eventStore.get(key(name));
        if (!event) return this.sendStatus(res, 404, 'NotFound', `events "${name}" not found`);
        if (req.method === 'GET') return this.sendJson(res, 200, event);
        if (req.method === 'PATCH') {
          const patched = this.applyPatch(req, event, res);
          if (!patched) return;
          (patched['metadata'] as Json)['resourceVersion'] = String(this.resourceVersion++);
          this.eventStore.set(key(name), patched);
          return this.sendJson(res, 200, patched);
        }
      }
      return this.sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
    }
    this.sendStatus(res, 404, 'NotFound', `the fake API server does not serve ${req.path}`);
  }

  private applyPatch(req: RecordedRequest, current: Json, res: ServerResponse): Json | null {
    const type = (req.contentType ?? '').split(';')[0]?.trim();
    if (type === 'application/strategic-merge-patch+json') {
      if (!isObject(req.body)) {
        this.sendStatus(res, 400, 'BadRequest', 'strategic merge patch must be an object');
        return null;
      }
      return strategicMergePatch(current, req.body) as Json;
    }
    if (type === 'application/merge-patch+json') {
      if (!isObject(req.body)) {
        this.sendStatus(res, 400, 'BadRequest', 'merge patch must be an object');
        return null;
      }
      return jsonMergePatch(current, req.body) as Json;
    }
    this.sendStatus(res, 415, 'UnsupportedMediaType', `the fake API server does not apply ${type ?? 'no content type'} patches`);
    return null;
  }

  private sendJson(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private sendStatus(res: ServerResponse, code: number, reason: string, message: string): void {
    this.sendJson(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
  }
}

/** Starts a fake API server on 127.0.0.1 and a random port. */
export async function startFakeApiServer(): Promise<FakeApiServer> {
  const server = new FakeApiServer();
  await server.start();
  return server;
}
