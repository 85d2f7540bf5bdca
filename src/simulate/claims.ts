// ResourceClaims as the scheduler leaves them once it allocated devices
// (resource.k8s.io/v1 JSON), and an in-memory store that answers the DRA
// driver's reads the way the API server does. The demo and the tests make
// claims with these; the fake API server serves the same objects over HTTP.
import { randomUUID } from 'node:crypto';
import { ClaimRefusal, type ClaimRef } from '../dra/claim-allocation.js';
import type { ClaimSource } from '../dra/claim-state.js';
import { CLAIM_CONFIG_API_VERSION, CLAIM_CONFIG_KIND } from '../dra/constants.js';

export interface ClaimSpecInput {
  namespace?: string;
  name: string;
  uid?: string;
  driver: string;
  /** Our pool: the node's name. */
  pool: string;
  /** Allocated devices, each for a request. */
  devices: { request: string; device: string; driver?: string; pool?: string }[];
  /** Opaque configuration entries as the scheduler copies them from the class and the claim. */
  config?: { source: 'FromClass' | 'FromClaim'; requests?: string[]; driver?: string; parameters: unknown }[];
  /** Leave out status.allocation (a claim the scheduler has not allocated). */
  unallocated?: boolean;
}

/** Our opaque parameters with apiVersion and kind filled in. */
export function preparationParameters(fields: Record<string, unknown>): Record<string, unknown> {
  return { apiVersion: CLAIM_CONFIG_API_VERSION, kind: CLAIM_CONFIG_KIND, ...fields };
}

export function allocatedClaim(input: ClaimSpecInput): Record<string, unknown> {
  const namespace = input.namespace ?? 'default';
  const requests = [...new Set(input.devices.map((d) => d.request))];
  return {
    apiVersion: 'resource.k8s.io/v1',
    kind: 'ResourceClaim',
    metadata: { name: input.name, namespace, uid: input.uid ?? randomUUID() },
    spec: {
      devices: { requests: requests.map((name) => ({ name, exactly: { deviceClassName: 'vfio.example.com', allocationMode: 'ExactCount', count: 1 } })) },
    },
    status: input.unallocated
      ? {}
      : {
          allocation: {
            devices: {
              results: input.devices.map((d) => ({ request: d.request, driver: d.driver ?? input.driver, pool: d.pool ?? input.pool, device: d.device })),
              config: (input.config ?? []).map((c) => ({
                source: c.source,
                ...(c.requests ? { requests: c.requests } : {}),
                opaque: { driver: c.driver ?? input.driver, parameters: c.parameters },
              })),
            },
          },
        },
  };
}

export function claimRefOf(claim: Record<string, unknown>): ClaimRef {
  const metadata = claim['metadata'] as { name: string; namespace: string; uid: string };
  return { namespace: metadata.namespace, name: metadata.name, uid: metadata.uid };
}

/** Claims by namespace/name; reads can be made to fail as an unreachable API server does. */
export class ClaimStore {
  private readonly claims = new Map<string, Record<string, unknown>>();
  /** When set, every read fails with this error (an API server that is down). */
  failure: Error | null = null;
  reads = 0;

  put(claim: Record<string, unknown>): ClaimRef {
    const ref = claimRefOf(claim);
    this.claims.set(`${ref.namespace}/${ref.name}`, structuredClone(claim));
    return ref;
  }

  delete(namespace: string, name: string): void {
    this.claims.delete(`${namespace}/${name}`);
  }

  source(): ClaimSource {
    return async (ref) => {
      this.reads += 1;
      // A turn of the event loop, as a network read takes.
      await new Promise((resolve) => setImmediate(resolve));
      if (this.failure) throw this.failure;
      const claim = this.claims.get(`${ref.namespace}/${ref.name}`);
      if (!claim) throw new ClaimRefusal(`ResourceClaim ${ref.namespace}/${ref.name} was not found`);
      return structuredClone(claim);
    };
  }
}
