// The core/v1 objects of the API server stand-in: Nodes (get, patch, patch
// status; the status subresource takes status only) and Events (create, get,
// patch, list per namespace).
import type { ServerResponse } from 'node:http';
import { applyPatch, sendJson, sendStatus, type RecordedRequest } from './http.js';
import { clone, isObject, nameFor, type Json, type Versions } from './json.js';

export class NodeStore {
  private readonly nodes = new Map<string, Json>();

  constructor(private readonly versions: Versions) {}

  add(name: string, init: { labels?: Record<string, string>; conditions?: Json[] } = {}): Json {
    const node: Json = {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: {
        name,
        uid: `uid-${name}-${this.versions.uid()}`,
        resourceVersion: this.versions.bump(),
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

  delete(name: string): void {
    this.nodes.delete(name);
  }

  /** The stored node itself (not a copy). */
  get(name: string): Json | undefined {
    return this.nodes.get(name);
  }

  /** /api/v1/nodes/{name}[/status] */
  serve(req: RecordedRequest, res: ServerResponse, name: string, sub: string | undefined): void {
    if (sub !== undefined && sub !== 'status') return sendStatus(res, 404, 'NotFound', 'no such subresource');
    const node = this.nodes.get(name);
    if (!node) return sendStatus(res, 404, 'NotFound', `nodes "${name}" not found`);
    if (req.method === 'GET') return sendJson(res, 200, node);
    if (req.method === 'PATCH') {
      const patched = applyPatch(req, node, res);
      if (!patched) return;
      // The status subresource takes status only; the main resource ignores status.
      const next: Json = sub === 'status' ? { ...node, status: patched['status'] } : { ...patched, status: node['status'] };
      (next['metadata'] as Json)['resourceVersion'] = this.versions.bump();
      this.nodes.set(name, next);
      return sendJson(res, 200, next);
    }
    return sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
  }
}

export class EventStore {
  private readonly events = new Map<string, Json>();

  constructor(private readonly versions: Versions) {}

  /** Forgets every event, as the server does when their time to live runs out. */
  clear(): void {
    this.events.clear();
  }

  /** Stored events (copies), in creation order. */
  list(namespace?: string): Json[] {
    return [...this.events.values()].filter((e) => namespace === undefined || (e['metadata'] as Json)['namespace'] === namespace).map(clone);
  }

  /** /api/v1/namespaces/{ns}/events[/{name}] */
  serve(req: RecordedRequest, res: ServerResponse, namespace: string, name: string | undefined): void {
    const key = (n: string) => `${namespace}/${n}`;
    if (name === undefined && req.method === 'GET') {
      return sendJson(res, 200, { kind: 'EventList', apiVersion: 'v1', metadata: {}, items: this.list(namespace) });
    }
    if (name === undefined && req.method === 'POST') {
      if (!isObject(req.body)) return sendStatus(res, 400, 'BadRequest', 'body must be an Event');
      const event = clone(req.body);
      const metadata: Json = isObject(event['metadata']) ? event['metadata'] : {};
      const eventName = nameFor(metadata);
      if (!eventName) return sendStatus(res, 422, 'Invalid', 'metadata.name: Required value');
      if (this.events.has(key(eventName))) return sendStatus(res, 409, 'AlreadyExists', `events "${eventName}" already exists`);
      if (metadata['namespace'] !== undefined && metadata['namespace'] !== namespace) {
        return sendStatus(res, 400, 'BadRequest', 'the namespace of the object does not match the namespace on the request');
      }
      event['metadata'] = { ...metadata, name: eventName, namespace, uid: `uid-event-${this.versions.uid()}`, resourceVersion: this.versions.bump() };
      this.events.set(key(eventName), event);
      return sendJson(res, 201, event);
    }
    if (name !== undefined) {
      const event = this.events.get(key(name));
      if (!event) return sendStatus(res, 404, 'NotFound', `events "${name}" not found`);
      if (req.method === 'GET') return sendJson(res, 200, event);
      if (req.method === 'PATCH') {
        const patched = applyPatch(req, event, res);
        if (!patched) return;
        (patched['metadata'] as Json)['resourceVersion'] = this.versions.bump();
        this.events.set(key(name), patched);
        return sendJson(res, 200, patched);
      }
    }
    return sendStatus(res, 405, 'MethodNotAllowed', `${req.method} not supported`);
  }
}
