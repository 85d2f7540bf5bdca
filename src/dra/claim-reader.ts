// Reads the ResourceClaims the kubelet names from the API server. The
// Kubernetes client is loaded on first use (it costs tens of MiB), every read
// has a deadline, and a failure says whether the claim is gone (a refusal) or
// the API server could not be asked (the kubelet retries).
import type { KubeConfig } from '@kubernetes/client-node';
import { requestWithDeadline, RequestFailure } from '../report/api-request.js';
import { ClaimRefusal, type ClaimRef } from './claim-allocation.js';
import type { ClaimSource } from './claim-state.js';

export interface ApiClaimSourceOptions {
  kubeConfig: () => KubeConfig | Promise<KubeConfig>;
  /** Deadline of one read (default 10 s; the kubelet gives a prepare call 45 s). */
  timeoutMs?: number;
}

export function apiClaimSource(options: ApiClaimSourceOptions): ClaimSource {
  const timeoutMs = options.timeoutMs ?? 10_000;
  let api: Promise<{ read: (ref: ClaimRef) => Promise<unknown> }> | null = null;
  const client = () => {
    api ??= (async () => {
      const k8s = await import('@kubernetes/client-node');
      const kc = await options.kubeConfig();
      const resource = kc.makeApiClient(k8s.ResourceV1Api);
      return {
        read: (ref: ClaimRef) =>
          requestWithDeadline(k8s, { operation: 'getResourceClaim', timeoutMs }, (o) =>
            resource.readNamespacedResourceClaim({ name: ref.name, namespace: ref.namespace }, o),
          ),
      };
    })().catch((err: unknown) => {
      // A configuration that could not be loaded is tried again at the next claim.
      api = null;
      throw new Error(`cannot reach the API server: ${(err as Error).message}`, { cause: err });
    });
    return api;
  };
  return async (ref) => {
    const { read } = await client();
    try {
      // The client returns plain objects with camelCase fields as the API server's JSON has them.
      return await read(ref);
    } catch (err) {
      if (!(err instanceof RequestFailure)) throw err;
      const classified = err.detail;
      if (classified.kind === 'notFound') throw new ClaimRefusal(`ResourceClaim ${ref.namespace}/${ref.name} was not found`);
      throw new Error(`cannot read ResourceClaim ${ref.namespace}/${ref.name} from the API server (${classified.kind}: ${classified.message}); the kubelet will retry`, { cause: err.cause ?? err });
    }
  };
}
