// Reads the ResourceClaims the kubelet names from the API server. The
// Kubernetes client is loaded on first use (it costs tens of MiB), every read
// has a deadline, and a failure says whether the claim is gone (a refusal) or
// the API server could not be asked (the kubelet retries).
import type { KubeConfig } from '@kubernetes/client-node';
import { classifyApiError } from '../report/api-errors.js';
import { ClaimRefusal, type ClaimRef } from './claim-allocation.js';
import type { ClaimSource } from './claim-state.js';

export interface ApiClaimSourceOptions {
  kubeConfig: () => KubeConfig | Promise<KubeConfig>;
  /** Deadline of one read (default 10 s; the kubelet gives a prepare call 45 s). */
  timeoutMs?: number;
}

export function apiClaimSource(options: ApiClaimSourceOptions): ClaimSource {
  const timeoutMs = options.timeoutMs ?? 10_000;
  let api: Promise<{ read: (ref: ClaimRef, signal: AbortSignal) => Promise<unknown> }> | null = null;
  const client = () => {
    api ??= (async () => {
      const k8s = await import('@kubernetes/client-node');
      const kc = await options.kubeConfig();
      const resource = kc.makeApiClient(k8s.ResourceV1Api);
      return {
        read: (ref: ClaimRef, signal: AbortSignal) => {
          const middleware = {
            pre: (context: import('@kubernetes/client-node').RequestContext) => {
              context.setSignal(signal);
              return new k8s.Observable(Promise.resolve(context));
            },
            post: (context: import('@kubernetes/client-node').ResponseContext) => new k8s.Observable(Promise.resolve(context)),
          };
          return resource.readNamespacedResourceClaim(
            { name: ref.name, namespace: ref.namespace },
            { middleware: [middleware], middlewareMergeStrategy: 'append' },
          );
        },
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
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error(`no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    try {
      // The client returns plain objects with camelCase fields as the API server's JSON has them.
      return await read(ref, controller.signal);
    } catch (err) {
      const classified = classifyApiError('getResourceClaim', err, timedOut, timeoutMs);
      if (classified.kind === 'notFound') throw new ClaimRefusal(`ResourceClaim ${ref.namespace}/${ref.name} was not found`);
      throw new Error(`cannot read ResourceClaim ${ref.namespace}/${ref.name} from the API server (${classified.kind}: ${classified.message}); the kubelet will retry`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  };
}
