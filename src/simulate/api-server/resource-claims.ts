// resource.k8s.io/v1 ResourceClaims in the API server stand-in: tests and the
// demo put them (as the scheduler and controllers would); the driver reads them.
import type { ServerResponse } from 'node:http';
import { sendJson, sendStatus } from './http.js';
import { clone, isObject, serverTime, type Json, type Versions } from './json.js';

export class ClaimStore {
  private readonly claims = new Map<string, Json>();

  constructor(private readonly versions: Versions) {}

  /** Creates or replaces a claim (status included); returns a copy of what was stored. */
  put(claim: Json): Json {
    const metadata = isObject(claim['metadata']) ? claim['metadata'] : {};
    const namespace = typeof metadata['namespace'] === 'string' ? metadata['namespace'] : 'default';
    const name = metadata['name'];
    if (typeof name !== 'string' || !name) throw new Error('a ResourceClaim needs metadata.name');
    const key = `${namespace}/${name}`;
    const previousMeta = (this.claims.get(key)?.['metadata'] ?? {}) as Json;
    const stored: Json = {
      apiVersion: 'resource.k8s.io/v1',
      kind: 'ResourceClaim',
      ...clone(claim),
      metadata: {
        ...clone(metadata),
        namespace,
        uid: metadata['uid'] ?? previousMeta['uid'] ?? `uid-claim-${this.versions.uid()}`,
        creationTimestamp: previousMeta['creationTimestamp'] ?? serverTime(),
        resourceVersion: this.versions.bump(),
      },
    };
    this.claims.set(key, stored);
    return clone(stored);
  }

  /** Replaces a claim's status (an allocation, device status); returns a copy. */
  setStatus(namespace: string, name: string, status: Json | undefined): Json {
    const claim = this.claims.get(`${namespace}/${name}`);
    if (!claim) throw new Error(`no ResourceClaim ${namespace}/${name}`);
    const next: Json = { ...claim, metadata: { ...(claim['metadata'] as Json), resourceVersion: this.versions.bump() } };
    if (status === undefined) delete next['status'];
    else next['status'] = clone(status);
    this.claims.set(`${namespace}/${name}`, next);
    return clone(next);
  }

  delete(namespace: string, name: string): void {
    this.claims.delete(`${namespace}/${name}`);
  }

  get(namespace: string, name: string): Json | undefined {
    const claim = this.claims.get(`${namespace}/${name}`);
    return claim ? clone(claim) : undefined;
  }

  /** GET /apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name} */
  serve(res: ServerResponse, namespace: string, name: string): void {
    const claim = this.claims.get(`${namespace}/${name}`);
    if (!claim) return sendStatus(res, 404, 'NotFound', `resourceclaims.resource.k8s.io "${name}" not found`);
    return sendJson(res, 200, claim);
  }
}
