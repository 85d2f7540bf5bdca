// resource.k8s.io/v1 ResourceSlices in the API server stand-in: the store
// (server-set fields, optimistic concurrency, immutable driver and node), the
// history of changes with its resourceVersions, and the watches that follow it
// (from now, or catching up from a resourceVersion still remembered; 410 Gone
// for an older one).
import type { ServerResponse } from 'node:http';
import { sendJson, sendStatus, type RecordedRequest } from './http.js';
import { clone, isObject, nameFor, serverTime, type Json, type Versions } from './json.js';
import { parseSelector, SLICE_FIELDS, sliceSelected, type Selector } from './selectors.js';

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

const notFound = (name: string) => `resourceslices.resource.k8s.io "${name}" not found`;

export class SliceStore {
  private readonly slices = new Map<string, Json>();
  /** Recent changes, for watches that start at an older resourceVersion. */
  private readonly history: WatchEventRecord[] = [];
  private readonly watchers = new Set<SliceWatcher>();
  /** How many changes a watch can catch up on; older resourceVersions get 410 Gone. */
  historyLimit = 1000;
  /** resourceVersion of the newest change dropped from the history: a watch from before it missed something. */
  private forgottenUpTo = 0;

  constructor(private readonly versions: Versions) {}

  /** Watches being served right now. */
  get activeWatches(): number {
    return this.watchers.size;
  }

  /** Stored slices themselves (not copies), sorted by name: stored objects are replaced, never changed in place. */
  where(filter: { nodeName?: string; driver?: string }): Json[] {
    return [...this.slices.values()]
      .filter((s) => filter.nodeName === undefined || SLICE_FIELDS['spec.nodeName']!(s) === filter.nodeName)
      .filter((s) => filter.driver === undefined || SLICE_FIELDS['spec.driver']!(s) === filter.driver)
      .sort((a, b) => String((a['metadata'] as Json)['name']).localeCompare(String((b['metadata'] as Json)['name'])));
  }

  /** The stored slice itself (not a copy). */
  get(name: string): Json | undefined {
    return this.slices.get(name);
  }

  /** Changes still remembered, oldest first (copies). */
  events(): WatchEventRecord[] {
    return this.history.map(clone);
  }

  /** Ends every watch: at their timeout (`cut` false) or as a server going down does. */
  endWatches(cut: boolean): void {
    for (const watcher of this.watchers) this.endWatcher(watcher, cut);
  }

  /** Server-set fields: uid and creationTimestamp (kept from `previous`), resourceVersion, generation, taints' timeAdded. */
  store(slice: Json, previous: Json | undefined): Json {
    const now = serverTime();
    const metadata: Json = isObject(slice['metadata']) ? { ...slice['metadata'] } : {};
    const before = (previous?.['metadata'] ?? {}) as Json;
    metadata['uid'] = before['uid'] ?? `uid-slice-${this.versions.uid()}`;
    metadata['creationTimestamp'] = before['creationTimestamp'] ?? now;
    metadata['resourceVersion'] = this.versions.bump();
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
    this.slices.set(name, stored);
    this.record(previous ? 'MODIFIED' : 'ADDED', stored);
    return stored;
  }

  remove(name: string): Json | undefined {
    const slice = this.slices.get(name);
    if (!slice) return undefined;
    this.slices.delete(name);
    const gone: Json = { ...slice, metadata: { ...(slice['metadata'] as Json), resourceVersion: this.versions.bump() } };
    this.record('DELETED', gone);
    return gone;
  }

  /** /apis/resource.k8s.io/v1/resourceslices */
  serveCollection(req: RecordedRequest, res: ServerResponse): void {
    if (req.method === 'GET') return req.query.get('watch') === 'true' ? this.watch(req, res) : this.list(req, res);
    if (req.method === 'POST') return this.create(req, res);
    if (req.method === 'DELETE') return this.deleteCollection(req, res);
    return sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
  }

  /** /apis/resource.k8s.io/v1/resourceslices/{name} */
  serveOne(req: RecordedRequest, res: ServerResponse, name: string): void {
    const current = this.slices.get(name);
    if (req.method === 'GET') {
      if (!current) return sendStatus(res, 404, 'NotFound', notFound(name));
      return sendJson(res, 200, current);
    }
    if (req.method === 'PUT') return this.update(req, res, name);
    if (req.method === 'DELETE') {
      if (!current) return sendStatus(res, 404, 'NotFound', notFound(name));
      const pre = isObject(req.body) && isObject(req.body['preconditions']) ? req.body['preconditions'] : {};
      const meta = current['metadata'] as Json;
      if ((pre['resourceVersion'] !== undefined && pre['resourceVersion'] !== meta['resourceVersion']) || (pre['uid'] !== undefined && pre['uid'] !== meta['uid'])) {
        return sendStatus(res, 409, 'Conflict', `Operation cannot be fulfilled on resourceslices.resource.k8s.io "${name}": the precondition does not hold`);
      }
      return sendJson(res, 200, this.remove(name));
    }
    return sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
  }

  /** Field and label selectors of a request, or a 400 already sent. */
  private selectors(req: RecordedRequest, res: ServerResponse): { fields: Selector; labels: Selector } | null {
    const fields = parseSelector(req.query.get('fieldSelector'), 'field');
    const labels = parseSelector(req.query.get('labelSelector'), 'label');
    if (typeof fields === 'string' || typeof labels === 'string') {
      sendStatus(res, 400, 'BadRequest', (typeof fields === 'string' ? fields : labels) as string);
      return null;
    }
    const unknown = fields.find((r) => !(r.key in SLICE_FIELDS));
    if (unknown) {
      sendStatus(res, 400, 'BadRequest', `field label not supported: ${unknown.key}`);
      return null;
    }
    return { fields, labels };
  }

  private list(req: RecordedRequest, res: ServerResponse): void {
    const selectors = this.selectors(req, res);
    if (!selectors) return;
    const items = this.where({}).filter((s) => sliceSelected(s, selectors.fields, selectors.labels));
    sendJson(res, 200, { apiVersion: 'resource.k8s.io/v1', kind: 'ResourceSliceList', metadata: { resourceVersion: this.versions.latest }, items });
  }

  private watch(req: RecordedRequest, res: ServerResponse): void {
    const selectors = this.selectors(req, res);
    if (!selectors) return;
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    const watcher: SliceWatcher = { res, fields: selectors.fields, labels: selectors.labels, timer: null };
    this.watchers.add(watcher);
    res.on('close', () => this.endWatcher(watcher, false));
    const timeout = Number(req.query.get('timeoutSeconds') ?? '0');
    if (timeout > 0) {
      watcher.timer = setTimeout(() => this.endWatcher(watcher, false), timeout * 1000);
    }
    const from = req.query.get('resourceVersion');
    if (!from || from === '0') {
      // No version: the current state as ADDED events, then changes.
      for (const slice of this.slices.values()) this.send(watcher, 'ADDED', slice);
      return;
    }
    const since = Number(from);
    if (!Number.isFinite(since) || since < this.forgottenUpTo) {
      const status = { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from}`, reason: 'Expired', code: 410 };
      res.write(`${JSON.stringify({ type: 'ERROR', object: status })}\n`);
      this.endWatcher(watcher, false);
      return;
    }
    for (const event of this.history) {
      if (event.resourceVersion > since) this.send(watcher, event.type, event.object);
    }
  }

  private send(watcher: SliceWatcher, type: WatchEventRecord['type'], object: Json): void {
    if (!sliceSelected(object, watcher.fields, watcher.labels)) return;
    watcher.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  private endWatcher(watcher: SliceWatcher, cut: boolean): void {
    if (!this.watchers.delete(watcher)) return;
    if (watcher.timer) clearTimeout(watcher.timer);
    if (cut) watcher.res.destroy();
    else watcher.res.end();
  }

  private record(type: WatchEventRecord['type'], object: Json): void {
    const resourceVersion = Number((object['metadata'] as Json)['resourceVersion']);
    // Stored objects are never changed in place, so the history can share them.
    this.history.push({ type, object, resourceVersion });
    while (this.history.length > this.historyLimit) this.forgottenUpTo = this.history.shift()!.resourceVersion;
    for (const watcher of this.watchers) this.send(watcher, type, object);
  }

  private check(body: unknown, res: ServerResponse): Json | null {
    if (!isObject(body) || !isObject(body['spec'])) {
      sendStatus(res, 400, 'BadRequest', 'body must be a ResourceSlice with a spec');
      return null;
    }
    if (body['apiVersion'] !== undefined && body['apiVersion'] !== 'resource.k8s.io/v1') {
      sendStatus(res, 400, 'BadRequest', `apiVersion ${String(body['apiVersion'])} does not match resource.k8s.io/v1`);
      return null;
    }
    return clone(body);
  }

  private create(req: RecordedRequest, res: ServerResponse): void {
    const slice = this.check(req.body, res);
    if (!slice) return;
    const metadata: Json = isObject(slice['metadata']) ? slice['metadata'] : {};
    const name = nameFor(metadata);
    if (!name) return sendStatus(res, 422, 'Invalid', 'metadata.name: Required value');
    if (this.slices.has(name)) return sendStatus(res, 409, 'AlreadyExists', `resourceslices.resource.k8s.io "${name}" already exists`);
    delete metadata['resourceVersion'];
    slice['metadata'] = { ...metadata, name };
    sendJson(res, 201, this.store(slice, undefined));
  }

  private update(req: RecordedRequest, res: ServerResponse, name: string): void {
    const slice = this.check(req.body, res);
    if (!slice) return;
    const current = this.slices.get(name);
    if (!current) return sendStatus(res, 404, 'NotFound', notFound(name));
    const metadata: Json = isObject(slice['metadata']) ? slice['metadata'] : {};
    if (metadata['name'] !== name) return sendStatus(res, 400, 'BadRequest', 'the name of the object does not match the name on the URL');
    const rv = metadata['resourceVersion'];
    if (rv !== undefined && rv !== (current['metadata'] as Json)['resourceVersion']) {
      return sendStatus(
        res,
        409,
        'Conflict',
        `Operation cannot be fulfilled on resourceslices.resource.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`,
      );
    }
    const before = current['spec'] as Json;
    const after = slice['spec'] as Json;
    for (const field of ['driver', 'nodeName'] as const) {
      if (before[field] !== after[field]) return sendStatus(res, 422, 'Invalid', `spec.${field}: Invalid value: field is immutable`);
    }
    sendJson(res, 200, this.store(slice, current));
  }

  private deleteCollection(req: RecordedRequest, res: ServerResponse): void {
    const selectors = this.selectors(req, res);
    if (!selectors) return;
    const items = this.where({}).filter((s) => sliceSelected(s, selectors.fields, selectors.labels));
    const gone = items.map((s) => this.remove((s['metadata'] as Json)['name'] as string)).filter((s) => s !== undefined);
    sendJson(res, 200, { apiVersion: 'resource.k8s.io/v1', kind: 'ResourceSliceList', metadata: { resourceVersion: this.versions.latest }, items: gone });
  }
}
