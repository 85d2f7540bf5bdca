// The node reporter's requests to the Kubernetes API: the client, made lazily (and again after its
// configuration failed), and each request with a deadline, cancellable on stop, its failure
// classified into a kind an operator can act on.
import { CoreV1Api, KubeConfig, Observable, type ConfigurationOptions } from '@kubernetes/client-node';
import type { ApiErrorKind } from './api-errors.js';
import { ApiRequests, RequestFailure, Stopped } from './api-request.js';

export { RequestFailure, Stopped };

/** Who writes: the field manager of our patches and the source of our Events. */
export const REPORTING_COMPONENT = 'power-vfio-device-plugin';

export interface ReporterError {
  kind: ApiErrorKind;
  /** The request that failed: `getNode`, `patchNodeStatus`, `patchNodeLabels`, `createEvent`, `patchEvent`, `loadConfig`. */
  operation: string;
  /** HTTP status when the server answered. */
  statusCode?: number;
  message: string;
  at: Date;
}

/** In-cluster configuration, or a kubeconfig file when a path is given. Throws when neither is usable. */
export function loadKubeConfig(kubeconfigPath?: string): KubeConfig {
  const kc = new KubeConfig();
  if (kubeconfigPath) {
    kc.loadFromFile(kubeconfigPath);
    if (!kc.getCurrentCluster()) throw new Error(`the kubeconfig ${kubeconfigPath} names no current cluster`);
    return kc;
  }
  // loadFromCluster does not check this itself and would aim at https://undefined:undefined.
  if (!process.env['KUBERNETES_SERVICE_HOST'] || !process.env['KUBERNETES_SERVICE_PORT']) {
    throw new Error('not running in a cluster (KUBERNETES_SERVICE_HOST is unset); pass --kubeconfig');
  }
  kc.loadFromCluster();
  return kc;
}

/** True when the API server does not know the object (the node, or an expired event). */
export function isNotFound(err: unknown): boolean {
  return err instanceof RequestFailure && err.detail.kind === 'notFound';
}

export class ReporterRequests {
  private api: CoreV1Api | null = null;
  private readonly requests: ApiRequests;

  constructor(
    private readonly kubeConfig: KubeConfig | (() => KubeConfig),
    requestTimeoutMs: number,
  ) {
    this.requests = new ApiRequests(requestTimeoutMs, 'node reporter');
  }

  client(): CoreV1Api {
    if (this.api) return this.api;
    try {
      const source = this.kubeConfig;
      const kc = typeof source === 'function' ? source() : source;
      this.api = kc.makeApiClient(CoreV1Api);
      return this.api;
    } catch (err) {
      throw new RequestFailure({ kind: 'config', operation: 'loadConfig', message: (err as Error).message });
    }
  }

  /** Forgets the client, so the next attempt loads the configuration again. */
  dropClient(): void {
    this.api = null;
  }

  /** Cancels the requests in flight; later requests fail with Stopped. */
  stop(): void {
    this.requests.stop();
  }

  /** One request with a deadline, cancellable by stop(), an optional patch content type, errors classified. */
  call<T>(operation: string, send: (options: ConfigurationOptions) => Promise<T>, contentType?: string): Promise<T> {
    return this.requests.call({ Observable }, operation, send, contentType);
  }
}
