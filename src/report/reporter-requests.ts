// The node reporter's requests to the Kubernetes API: the client, made lazily (and again after its
// configuration failed), and each request with a deadline, cancellable on stop, its failure
// classified into a kind an operator can act on.
import {
  CoreV1Api,
  KubeConfig,
  Observable,
  type ConfigurationOptions,
  type ObservableMiddleware,
  type RequestContext,
  type ResponseContext,
} from '@kubernetes/client-node';
import { classifyApiError, type ApiErrorKind } from './api-errors.js';

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

/** A request that failed, classified. */
export class RequestFailure extends Error {
  constructor(readonly detail: Omit<ReporterError, 'at'>) {
    super(detail.message);
  }
}

/** The reporter stopped while a request was on its way; not a failure. */
export class Stopped extends Error {}

/** True when the API server does not know the object (the node, or an expired event). */
export function isNotFound(err: unknown): boolean {
  return err instanceof RequestFailure && err.detail.kind === 'notFound';
}

export class ReporterRequests {
  private api: CoreV1Api | null = null;
  private stopped = false;
  private readonly inFlight = new Set<AbortController>();

  constructor(
    private readonly kubeConfig: KubeConfig | (() => KubeConfig),
    private readonly requestTimeoutMs: number,
  ) {}

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
    this.stopped = true;
    for (const controller of this.inFlight) controller.abort(new Stopped('node reporter stopped'));
  }

  /** One request with a deadline, cancellable by stop(), an optional patch content type, errors classified. */
  async call<T>(operation: string, send: (options: ConfigurationOptions) => Promise<T>, contentType?: string): Promise<T> {
    if (this.stopped) throw new Stopped('node reporter stopped');
    const controller = new AbortController();
    this.inFlight.add(controller);
    let timedOut = false;
    const deadline = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error(`no answer within ${this.requestTimeoutMs} ms`));
    }, this.requestTimeoutMs);
    const middleware: ObservableMiddleware = {
      pre: (context: RequestContext) => {
        if (contentType) context.setHeaderParam('Content-Type', contentType);
        context.setSignal(controller.signal);
        return new Observable(Promise.resolve(context));
      },
      post: (context: ResponseContext) => new Observable(Promise.resolve(context)),
    };
    try {
      return await send({ middleware: [middleware], middlewareMergeStrategy: 'append' });
    } catch (err) {
      if (this.stopped) throw new Stopped('node reporter stopped');
      throw new RequestFailure(classifyApiError(operation, err, timedOut, this.requestTimeoutMs));
    } finally {
      clearTimeout(deadline);
      this.inFlight.delete(controller);
    }
  }
}
