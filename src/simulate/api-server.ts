// A local stand-in for the Kubernetes API server, speaking the subset the node
// reporter and the DRA driver use: nodes (get, patch, patch status), core/v1
// events (create, patch, list), resource.k8s.io/v1 ResourceSlices (create, get,
// update, delete, delete collection, list and watch with field and label
// selectors) and ResourceClaims (get; tests put them). It applies the semantics
// the real server applies for these objects (strategic merge: node conditions
// merged by `type`; JSON merge for labels; optimistic concurrency on
// resourceVersion; uid, resourceVersion, creationTimestamp and taints'
// timeAdded set by the server), records every request, and can be told to
// misbehave: answer 403, 409, 500 (or any status), hang, or be down altogether.
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
  /** Only watch requests (`?watch=true`) when true, only other requests when false. */
  watch?: boolean;
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

/** One change to ResourceSlices, as a watch delivers it. */
export interface WatchEventRecord {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: Json;
  resourceVersion: number;
}

interface SliceWatcher {
  res: ServerResponse;
  fields: Selector;
  labels: Selector;
  timer: NodeJS.Timeout | null;
}

/** `key=value`, `key==value`, `key!=value`, `key` (exists), `!key` (absent), comma-separated (all must hold). */
interface Requirement {
  key: string;
  op: '=' | '!=' | 'exists' | '!exists';
  value: string;
}
type Selector = Requirement[];

function parseSelector(text: string | null, kind: 'field' | 'label'): Selector | string {
  const out: Selector = [];
  if (!text) return out;
  for (const raw of text.split(',')) {
    const part = raw.trim();
    if (!part) continue;
    const match = /^([^!=]+?)\s*(==|!=|=)\s*(.*)$/.exec(part);
    if (match) {
      out.push({ key: match[1]!.trim(), op: match[2] === '!=' ? '!=' : '=', value: match[3]!.trim() });
    } else if (kind === 'label' && /^!?[A-Za-z0-9./_-]+$/.test(part)) {
      out.push(part.startsWith('!') ? { key: part.slice(1), op: '!exists', value: '' } : { key: part, op: 'exists', value: '' });
    } else {
      return `unable to parse requirement: ${part}`;
    }
  }
  return out;
}

function matches(selector: Selector, lookup: (key: string) => string | undefined): boolean {
  return selector.every((r) => {
    const value = lookup(r.key);
    if (r.op === 'exists') return value !== undefined;
    if (r.op === '!exists') return value === undefined;
    if (r.op === '=') return value === r.value;
    return value !== r.value;
  });
}

/** The field selectors the real server supports for ResourceSlices. */
const SLICE_FIELDS: Record<string, (slice: Json) => string | undefined> = {
  'metadata.name': (s) => (s['metadata'] as Json)['name'] as string,
  'spec.nodeName': (s) => ((s['spec'] as Json | undefined)?.['nodeName'] as string | undefined) ?? '',
  'spec.driver': (s) => ((s['spec'] as Json | undefined)?.['driver'] as string | undefined) ?? '',
};

const RESOURCE_GROUP_PATH = ['apis', 'resource.k8s.io', 'v1'];

export class FakeApiServer {
  readonly requests: RecordedRequest[] = [];
  private readonly nodes = new Map<string, Json>();
  private readonly eventStore = new Map<string, Json>();
  private readonly sliceStore = new Map<string, Json>();
  private readonly claimStore = new Map<string, Json>();
  /** Recent ResourceSlice changes, for watches that start at an older resourceVersion. */
  private readonly sliceHistory: WatchEventRecord[] = [];
  private readonly sliceWatchers = new Set<SliceWatcher>();
  /** How many changes a watch can catch up on; older resourceVersions get 410 Gone. */
  historyLimit = 1000;
  /** resourceVersion of the newest change dropped from the history: a watch from before it missed something. */
  private forgottenUpTo = 0;
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
    for (const watcher of this.sliceWatchers) this.endWatcher(watcher, true);
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

  /** Connections open to the server right now (a client that stopped leaves none). */
  get openConnections(): number {
    return this.sockets.size;
  }

  /** ResourceSlice watches being served right now. */
  get activeWatches(): number {
    return this.sliceWatchers.size;
  }

  /** Stored ResourceSlices (copies), sorted by name. */
  resourceSlices(filter: { nodeName?: string; driver?: string } = {}): Json[] {
    return this.slicesWhere(filter).map(clone);
  }

  /** Stored slices themselves (not copies), sorted by name: stored objects are replaced, never changed in place. */
  private slicesWhere(filter: { nodeName?: string; driver?: string }): Json[] {
    return [...this.sliceStore.values()]
      .filter((s) => filter.nodeName === undefined || SLICE_FIELDS['spec.nodeName']!(s) === filter.nodeName)
      .filter((s) => filter.driver === undefined || SLICE_FIELDS['spec.driver']!(s) === filter.driver)
      .sort((a, b) => String((a['metadata'] as Json)['name']).localeCompare(String((b['metadata'] as Json)['name'])));
  }

  resourceSlice(name: string): Json | undefined {
    const slice = this.sliceStore.get(name);
    return slice ? clone(slice) : undefined;
  }

  /** Stores a slice as if someone else created it (an earlier run, another driver); returns what was stored. */
  putResourceSlice(slice: Json): Json {
    const stored = this.storeSlice(clone(slice), undefined);
    return clone(stored);
  }

  /** Deletes slices as another client would (the kubelet deletes its node's slices when it starts); returns the names. */
  deleteResourceSlices(filter: { nodeName?: string; driver?: string; name?: string } = {}): string[] {
    const names = this.resourceSlices(filter)
      .map((s) => (s['metadata'] as Json)['name'] as string)
      .filter((n) => filter.name === undefined || n === filter.name);
    for (const name of names) this.removeSlice(name);
    return names;
  }

  /** ResourceSlice changes the server still remembers, oldest first. */
  sliceEvents(): WatchEventRecord[] {
    return this.sliceHistory.map(clone);
  }

  /** Ends every ResourceSlice watch as the server does at its timeout. */
  endWatches(): void {
    for (const watcher of this.sliceWatchers) this.endWatcher(watcher, false);
  }

  /** Creates or replaces a ResourceClaim (status included), as the scheduler and controllers would. */
  putResourceClaim(claim: Json): Json {
    const metadata = isObject(claim['metadata']) ? claim['metadata'] : {};
    const namespace = typeof metadata['namespace'] === 'string' ? metadata['namespace'] : 'default';
    const name = metadata['name'];
    if (typeof name !== 'string' || !name) throw new Error('a ResourceClaim needs metadata.name');
    const key = `${namespace}/${name}`;
    const previous = this.claimStore.get(key);
    const previousMeta = (previous?.['metadata'] ?? {}) as Json;
    const stored: Json = {
      apiVersion: 'resource.k8s.io/v1',
      kind: 'ResourceClaim',
      ...clone(claim),
      metadata: {
        ...clone(metadata),
        namespace,
        uid: metadata['uid'] ?? previousMeta['uid'] ?? `uid-claim-${++this.uidCounter}`,
        creationTimestamp: previousMeta['creationTimestamp'] ?? new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
        resourceVersion: String(this.resourceVersion++),
      },
    };
    this.claimStore.set(key, stored);
    return clone(stored);
  }

  /** Replaces a ResourceClaim's status (an allocation, device status). */
  setResourceClaimStatus(namespace: string, name: string, status: Json | undefined): Json {
    const claim = this.claimStore.get(`${namespace}/${name}`);
    if (!claim) throw new Error(`no ResourceClaim ${namespace}/${name}`);
    const next: Json = { ...claim, metadata: { ...(claim['metadata'] as Json), resourceVersion: String(this.resourceVersion++) } };
    if (status === undefined) delete next['status'];
    else next['status'] = clone(status);
    this.claimStore.set(`${namespace}/${name}`, next);
    return clone(next);
  }

  deleteResourceClaim(namespace: string, name: string): void {
    this.claimStore.delete(`${namespace}/${name}`);
  }

  resourceClaim(namespace: string, name: string): Json | undefined {
    const claim = this.claimStore.get(`${namespace}/${name}`);
    return claim ? clone(claim) : undefined;
  }

  private match(req: IncomingMessage, path: string, query: URLSearchParams): PendingFault | undefined {
    for (const fault of this.faults) {
      if (fault.times !== undefined && fault.used >= fault.times) continue;
      if (fault.method && fault.method !== req.method) continue;
      if (fault.watch !== undefined && fault.watch !== (query.get('watch') === 'true')) continue;
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

    const fault = this.match(req, url.pathname, url.searchParams);
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
    if (RESOURCE_GROUP_PATH.every((p, i) => parts[i] === p)) {
      return this.routeResource(req, res, parts.slice(3).map(decodeURIComponent));
    }
    this.sendStatus(res, 404, 'NotFound', `the fake API server does not serve ${req.path}`);
  }

  // ---- resource.k8s.io/v1 ----------------------------------------------------------------------

  private routeResource(req: RecordedRequest, res: ServerResponse, parts: string[]): void {
    if (parts[0] === 'resourceslices' && parts.length === 1) {
      if (req.method === 'GET') return req.query.get('watch') === 'true' ? this.watchSlices(req, res) : this.listSlices(req, res);
      if (req.method === 'POST') return this.createSlice(req, res);
      if (req.method === 'DELETE') return this.deleteSliceCollection(req, res);
      return this.sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
    }
    if (parts[0] === 'resourceslices' && parts.length === 2) {
      const name = parts[1]!;
      const current = this.sliceStore.get(name);
      if (req.method === 'GET') {
        if (!current) return this.sendStatus(res, 404, 'NotFound', `resourceslices.resource.k8s.io "${name}" not found`);
        return this.sendJson(res, 200, current);
      }
      if (req.method === 'PUT') return this.updateSlice(req, res, name);
      if (req.method === 'DELETE') {
        if (!current) return this.sendStatus(res, 404, 'NotFound', `resourceslices.resource.k8s.io "${name}" not found`);
        const pre = isObject(req.body) && isObject(req.body['preconditions']) ? req.body['preconditions'] : {};
        const meta = current['metadata'] as Json;
        if ((pre['resourceVersion'] !== undefined && pre['resourceVersion'] !== meta['resourceVersion']) || (pre['uid'] !== undefined && pre['uid'] !== meta['uid'])) {
          return this.sendStatus(res, 409, 'Conflict', `Operation cannot be fulfilled on resourceslices.resource.k8s.io "${name}": the precondition does not hold`);
        }
        return this.sendJson(res, 200, this.removeSlice(name));
      }
      return this.sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
    }
    // namespaces/{ns}/resourceclaims/{name}
    if (parts[0] === 'namespaces' && parts[1] && parts[2] === 'resourceclaims' && parts.length === 4 && req.method === 'GET') {
      const claim = this.claimStore.get(`${parts[1]}/${parts[3]}`);
      if (!claim) return this.sendStatus(res, 404, 'NotFound', `resourceclaims.resource.k8s.io "${parts[3]}" not found`);
      return this.sendJson(res, 200, claim);
    }
    this.sendStatus(res, 404, 'NotFound', `the fake API server does not serve /apis/resource.k8s.io/v1/${parts.join('/')}`);
  }

  /** Field and label selectors of a request, or a 400 already sent. */
  private selectors(req: RecordedRequest, res: ServerResponse): { fields: Selector; labels: Selector } | null {
    const fields = parseSelector(req.query.get('fieldSelector'), 'field');
    const labels = parseSelector(req.query.get('labelSelector'), 'label');
    if (typeof fields === 'string' || typeof labels === 'string') {
      this.sendStatus(res, 400, 'BadRequest', (typeof fields === 'string' ? fields : labels) as string);
      return null;
    }
    const unknown = fields.find((r) => !(r.key in SLICE_FIELDS));
    if (unknown) {
      this.sendStatus(res, 400, 'BadRequest', `field label not supported: ${unknown.key}`);
      return null;
    }
    return { fields, labels };
  }

  private selected(slice: Json, fields: Selector, labels: Selector): boolean {
    const sliceLabels = ((slice['metadata'] as Json)['labels'] ?? {}) as Record<string, string>;
    return matches(fields, (key) => SLICE_FIELDS[key]!(slice)) && matches(labels, (key) => sliceLabels[key]);
  }

  private listSlices(req: RecordedRequest, res: ServerResponse): void {
    const selectors = this.selectors(req, res);
    if (!selectors) return;
    const items = this.slicesWhere({}).filter((s) => this.selected(s, selectors.fields, selectors.labels));
    this.sendJson(res, 200, {
      apiVersion: 'resource.k8s.io/v1',
      kind: 'ResourceSliceList',
      metadata: { resourceVersion: String(this.resourceVersion - 1) },
      items,
    });
  }

  private watchSlices(req: RecordedRequest, res: ServerResponse): void {
    const selectors = this.selectors(req, res);
    if (!selectors) return;
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    const watcher: SliceWatcher = { res, fields: selectors.fields, labels: selectors.labels, timer: null };
    this.sliceWatchers.add(watcher);
    res.on('close', () => this.endWatcher(watcher, false));
    const timeout = Number(req.query.get('timeoutSeconds') ?? '0');
    if (timeout > 0) {
      watcher.timer = setTimeout(() => this.endWatcher(watcher, false), timeout * 1000);
    }
    const from = req.query.get('resourceVersion');
    if (!from || from === '0') {
      // No version: the current state as ADDED events, then changes.
      for (const slice of this.sliceStore.values()) this.send(watcher, 'ADDED', slice);
      return;
    }
    const since = Number(from);
    if (!Number.isFinite(since) || since < this.forgottenUpTo) {
      const status = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from}`, reason: 'Expired', code: 410 };
      res.write(`${JSON.stringify({ type: 'ERROR', object: status })}\n`);
      this.endWatcher(watcher, false);
      return;
    }
    for (const event of this.sliceHistory) {
      if (event.resourceVersion > since) this.send(watcher, event.type, event.object);
    }
  }

  private send(watcher: SliceWatcher, type: WatchEventRecord['type'], object: Json): void {
    if (!this.selected(object, watcher.fields, watcher.labels)) return;
    watcher.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  private endWatcher(watcher: SliceWatcher, cut: boolean): void {
    if (!this.sliceWatchers.delete(watcher)) return;
    if (watcher.timer) clearTimeout(watcher.timer);
    if (cut) watcher.res.destroy();
    else watcher.res.end();
  }

  private record(type: WatchEventRecord['type'], object: Json): void {
    const resourceVersion = Number((object['metadata'] as Json)['resourceVersion']);
    // Stored objects are never changed in place, so the history can share them.
    this.sliceHistory.push({ type, object, resourceVersion });
    while (this.sliceHistory.length > this.historyLimit) this.forgottenUpTo = this.sliceHistory.shift()!.resourceVersion;
    for (const watcher of this.sliceWatchers) this.send(watcher, type, object);
  }

  /** Server-set fields: uid and creationTimestamp (kept from `previous`), resourceVersion, generation, taints' timeAdded. */
  private storeSlice(slice: Json, previous: Json | undefined): Json {
    const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    const metadata: Json = isObject(slice['metadata']) ? { ...slice['metadata'] } : {};
    const before = (previous?.['metadata'] ?? {}) as Json;
    metadata['uid'] = before['uid'] ?? `uid-slice-${++this.uidCounter}`;
    metadata['creationTimestamp'] = before['creationTimestamp'] ?? now;
    metadata['resourceVersion'] = String(this.resourceVersion++);
    const specChanged = JSON.stringify(slice['spec']) !== JSON.stringify(previous?.['spec']);
    metadata['generation'] = previous ? Number(before['generation'] ?? 1) + (specChanged ? 1 : 0) : 1;
    const stored: Json = { ...slice, apiVersion: 'resource.k8s.io/v1', kind: 'ResourceSlice', metadata };
    const spec = isObject(stored['spec']) ? stored['spec'] : {};
    const oldDevices = (isObject(previous?.['spec']) && Array.isArray((previous['spec'] as Json)['devices']) ? (previous['spec'] as Json)['devices'] : []) as Json[];
    for (const device of Array.isArray(spec['devices']) ? (spec['devices'] as Json[]) : []) {
      const oldTaints = (oldDevices.find((d) => d['name'] === device['name'])?.['taints'] ?? []) as Json[];
      for (const taint of Array.isArray(device['taints']) ? (device['taints'] as Json[]) : []) {
        if (taint['timeAdded'] !== undefined) continue;
        // An unchanged taint keeps its time, as the real server's defaulting does.
        const same = oldTaints.find((t) => t['key'] === taint['key'] && t['value'] === taint['value'] && t['effect'] === taint['effect']);
        taint['timeAdded'] = same?.['timeAdded'] ?? now;
      }
    }
    const name = metadata['name'] as string;
    this.sliceStore.set(name, stored);
    this.record(previous ? 'MODIFIED' : 'ADDED', stored);
    return stored;
  }

  private removeSlice(name: string): Json | undefined {
    const slice = this.sliceStore.get(name);
    if (!slice) return undefined;
    this.sliceStore.delete(name);
    const gone: Json = { ...slice, metadata: { ...(slice['metadata'] as Json), resourceVersion: String(this.resourceVersion++) } };
    this.record('DELETED', gone);
    return gone;
  }

  private checkSlice(body: unknown, res: ServerResponse): Json | null {
    if (!isObject(body) || !isObject(body['spec'])) {
      this.sendStatus(res, 400, 'BadRequest', 'body must be a ResourceSlice with a spec');
      return null;
    }
    if (body['apiVersion'] !== undefined && body['apiVersion'] !== 'resource.k8s.io/v1') {
      this.sendStatus(res, 400, 'BadRequest', `apiVersion ${String(body['apiVersion'])} does not match resource.k8s.io/v1`);
      return null;
    }
    return clone(body);
  }

  private createSlice(req: RecordedRequest, res: ServerResponse): void {
    const slice = this.checkSlice(req.body, res);
    if (!slice) return;
    const metadata: Json = isObject(slice['metadata']) ? slice['metadata'] : {};
    let name = typeof metadata['name'] === 'string' ? metadata['name'] : undefined;
    if (!name && typeof metadata['generateName'] === 'string') name = `${metadata['generateName']}${Math.random().toString(36).slice(2, 7)}`;
    if (!name) return this.sendStatus(res, 422, 'Invalid', 'metadata.name: Required value');
    if (this.sliceStore.has(name)) return this.sendStatus(res, 409, 'AlreadyExists', `resourceslices.resource.k8s.io "${name}" already exists`);
    delete metadata['resourceVersion'];
    slice['metadata'] = { ...metadata, name };
    this.sendJson(res, 201, this.storeSlice(slice, undefined));
  }

  private updateSlice(req: RecordedRequest, res: ServerResponse, name: string): void {
    const slice = this.checkSlice(req.body, res);
    if (!slice) return;
    const current = this.sliceStore.get(name);
    if (!current) return this.sendStatus(res, 404, 'NotFound', `resourceslices.resource.k8s.io "${name}" not found`);
    const metadata: Json = isObject(slice['metadata']) ? slice['metadata'] : {};
    if (metadata['name'] !== name) return this.sendStatus(res, 400, 'BadRequest', 'the name of the object does not match the name on the URL');
    const rv = metadata['resourceVersion'];
    if (rv !== undefined && rv !== (current['metadata'] as Json)['resourceVersion']) {
      return this.sendStatus(
        res,
        409,
        'Conflict',
        `Operation cannot be fulfilled on resourceslices.resource.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`,
      );
    }
    const before = current['spec'] as Json;
    const after = slice['spec'] as Json;
    for (const field of ['driver', 'nodeName'] as const) {
      if (before[field] !== after[field]) return this.sendStatus(res, 422, 'Invalid', `spec.${field}: Invalid value: field is immutable`);
    }
    this.sendJson(res, 200, this.storeSlice(slice, current));
  }

  private deleteSliceCollection(req: RecordedRequest, res: ServerResponse): void {
    const selectors = this.selectors(req, res);
    if (!selectors) return;
    const items = this.slicesWhere({}).filter((s) => this.selected(s, selectors.fields, selectors.labels));
    const gone = items.map((s) => this.removeSlice((s['metadata'] as Json)['name'] as string)).filter((s) => s !== undefined);
    this.sendJson(res, 200, { apiVersion: 'resource.k8s.io/v1', kind: 'ResourceSliceList', metadata: { resourceVersion: String(this.resourceVersion - 1) }, items: gone });
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
