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
//
// This module is the server and its routing; the kinds it serves and the
// faults it injects live in api-server/.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { EventStore, NodeStore } from './api-server/core-objects.js';
import { Faults, readRequest, sendStatus, type FaultRule, type RecordedRequest } from './api-server/http.js';
import { clone, isObject, Versions, type Json } from './api-server/json.js';
import { ClaimStore } from './api-server/resource-claims.js';
import { SliceStore, type WatchEventRecord } from './api-server/resource-slices.js';

export type { FaultAction, FaultRule, RecordedRequest } from './api-server/http.js';
export { jsonMergePatch, strategicMergePatch } from './api-server/json.js';
export type { WatchEventRecord } from './api-server/resource-slices.js';

const RESOURCE_GROUP_PATH = ['apis', 'resource.k8s.io', 'v1'];

export class FakeApiServer {
  readonly requests: RecordedRequest[] = [];
  private readonly versions = new Versions();
  private readonly nodes = new NodeStore(this.versions);
  private readonly eventStore = new EventStore(this.versions);
  private readonly slices = new SliceStore(this.versions);
  private readonly claims = new ClaimStore(this.versions);
  private readonly faults = new Faults();
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private portNumber = 0;

  /** How many ResourceSlice changes a watch can catch up on; older resourceVersions get 410 Gone. */
  get historyLimit(): number {
    return this.slices.historyLimit;
  }

  set historyLimit(limit: number) {
    this.slices.historyLimit = limit;
  }

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
        if (!res.headersSent) sendStatus(res, 500, 'InternalError', (err as Error).message);
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
    this.faults.cutHanging();
    this.slices.endWatches(true);
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
    this.faults.clear();
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
    this.faults.add(rule);
  }

  clearFaults(): void {
    // Requests left hanging by a cleared fault stay hanging: the client must time them out.
    this.faults.clear();
  }

  addNode(name: string, init: { labels?: Record<string, string>; conditions?: Json[] } = {}): Json {
    return this.nodes.add(name, init);
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
    return this.eventStore.list(namespace);
  }

  /** Connections open to the server right now (a client that stopped leaves none). */
  get openConnections(): number {
    return this.sockets.size;
  }

  /** ResourceSlice watches being served right now. */
  get activeWatches(): number {
    return this.slices.activeWatches;
  }

  /** Stored ResourceSlices (copies), sorted by name. */
  resourceSlices(filter: { nodeName?: string; driver?: string } = {}): Json[] {
    return this.slices.where(filter).map(clone);
  }

  /**
   * True when a stored slice that matches the filter passes `test`, which sees
   * the stored objects themselves (no copies: cheap enough to poll while a large
   * pool is written) and must not change them.
   */
  hasResourceSlice(filter: { nodeName?: string; driver?: string }, test: (slice: Readonly<Json>) => boolean): boolean {
    return this.slices.where(filter).some(test);
  }

  resourceSlice(name: string): Json | undefined {
    const slice = this.slices.get(name);
    return slice ? clone(slice) : undefined;
  }

  /** Stores a slice as if someone else created it (an earlier run, another driver); returns what was stored. */
  putResourceSlice(slice: Json): Json {
    return clone(this.slices.store(clone(slice), undefined));
  }

  /** Deletes slices as another client would (the kubelet deletes its node's slices when it starts); returns the names. */
  deleteResourceSlices(filter: { nodeName?: string; driver?: string; name?: string } = {}): string[] {
    const names = this.resourceSlices(filter)
      .map((s) => (s['metadata'] as Json)['name'] as string)
      .filter((n) => filter.name === undefined || n === filter.name);
    for (const name of names) this.slices.remove(name);
    return names;
  }

  /** ResourceSlice changes the server still remembers, oldest first. */
  sliceEvents(): WatchEventRecord[] {
    return this.slices.events();
  }

  /** Ends every ResourceSlice watch as the server does at its timeout. */
  endWatches(): void {
    this.slices.endWatches(false);
  }

  /** Creates or replaces a ResourceClaim (status included), as the scheduler and controllers would. */
  putResourceClaim(claim: Json): Json {
    return this.claims.put(claim);
  }

  /** Replaces a ResourceClaim's status (an allocation, device status). */
  setResourceClaimStatus(namespace: string, name: string, status: Json | undefined): Json {
    return this.claims.setStatus(namespace, name, status);
  }

  deleteResourceClaim(namespace: string, name: string): void {
    this.claims.delete(namespace, name);
  }

  resourceClaim(namespace: string, name: string): Json | undefined {
    return this.claims.get(namespace, name);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const record = await readRequest(req, res);
    this.requests.push(record);
    if (await this.faults.apply(record, res)) return;
    this.route(record, res);
  }

  private route(req: RecordedRequest, res: ServerResponse): void {
    const parts = req.path.split('/').filter(Boolean);
    // /api/v1/nodes/{name}[/status]
    if (parts[0] === 'api' && parts[1] === 'v1' && parts[2] === 'nodes' && parts[3] && parts.length <= 5) {
      return this.nodes.serve(req, res, decodeURIComponent(parts[3]), parts[4]);
    }
    // /api/v1/namespaces/{ns}/events[/{name}]
    if (parts[0] === 'api' && parts[1] === 'v1' && parts[2] === 'namespaces' && parts[3] && parts[4] === 'events') {
      return this.eventStore.serve(req, res, decodeURIComponent(parts[3]), parts[5] ? decodeURIComponent(parts[5]) : undefined);
    }
    if (RESOURCE_GROUP_PATH.every((p, i) => parts[i] === p)) {
      return this.routeResource(req, res, parts.slice(3).map(decodeURIComponent));
    }
    sendStatus(res, 404, 'NotFound', `the fake API server does not serve ${req.path}`);
  }

  /** resource.k8s.io/v1 */
  private routeResource(req: RecordedRequest, res: ServerResponse, parts: string[]): void {
    if (parts[0] === 'resourceslices' && parts.length === 1) return this.slices.serveCollection(req, res);
    if (parts[0] === 'resourceslices' && parts.length === 2) return this.slices.serveOne(req, res, parts[1]!);
    // namespaces/{ns}/resourceclaims/{name}
    if (parts[0] === 'namespaces' && parts[1] && parts[2] === 'resourceclaims' && parts.length === 4 && req.method === 'GET') {
      return this.claims.serve(res, parts[1], parts[3]!);
    }
    sendStatus(res, 404, 'NotFound', `the fake API server does not serve /apis/resource.k8s.io/v1/${parts.join('/')}`);
  }
}

/** Starts a fake API server on 127.0.0.1 and a random port. */
export async function startFakeApiServer(): Promise<FakeApiServer> {
  const server = new FakeApiServer();
  await server.start();
  return server;
}
