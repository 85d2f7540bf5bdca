// One request to the Kubernetes API with a deadline, cancellable, its failure
// classified (api-errors.ts): what the node reporter, the ResourceSlice
// publisher and the claim reader share. It takes the client module from its
// caller, so importing it loads no @kubernetes/client-node: each caller loads
// the client when it first needs it.
import type { ConfigurationOptions, ObservableMiddleware, RequestContext, ResponseContext } from '@kubernetes/client-node';
import { classifyApiError, type ClassifiedApiError } from './api-errors.js';

/** What a request needs of the loaded client module: its Observable, to wrap the middleware's answers. */
export type ClientObservable = Pick<typeof import('@kubernetes/client-node'), 'Observable'>;

/** A request that failed, classified. */
export class RequestFailure extends Error {
  constructor(
    readonly detail: ClassifiedApiError,
    options?: ErrorOptions,
  ) {
    super(detail.message, options);
  }
}

/** The caller stopped while a request was on its way; not a failure. */
export class Stopped extends Error {}

export interface DeadlineRequest {
  /** The request's name in errors and logs (`getNode`, `createResourceSlice`...). */
  operation: string;
  timeoutMs: number;
  /** Aborts the request when the caller gives up on it (a stop); the deadline aborts it too. */
  controller?: AbortController;
  /** Content-Type of a patch. */
  contentType?: string;
}

/**
 * Sends one request through the client with a signal that the deadline (or the
 * caller's controller) aborts; a failure is thrown as a RequestFailure.
 */
export async function requestWithDeadline<T>(
  client: ClientObservable,
  request: DeadlineRequest,
  send: (options: ConfigurationOptions) => Promise<T>,
): Promise<T> {
  const { operation, timeoutMs, contentType } = request;
  const controller = request.controller ?? new AbortController();
  let timedOut = false;
  const deadline = setTimeout(() => {
    timedOut = true;
    controller.abort(new Error(`no answer within ${timeoutMs} ms`));
  }, timeoutMs);
  const middleware: ObservableMiddleware = {
    pre: (context: RequestContext) => {
      if (contentType) context.setHeaderParam('Content-Type', contentType);
      context.setSignal(controller.signal);
      return new client.Observable(Promise.resolve(context));
    },
    post: (context: ResponseContext) => new client.Observable(Promise.resolve(context)),
  };
  try {
    return await send({ middleware: [middleware], middlewareMergeStrategy: 'append' });
  } catch (err) {
    throw new RequestFailure(classifyApiError(operation, err, timedOut, timeoutMs), { cause: err });
  } finally {
    clearTimeout(deadline);
  }
}

/** Requests of one component: each with the same deadline, all cancelled by stop(). */
export class ApiRequests {
  private stopped = false;
  private readonly inFlight = new Set<AbortController>();

  /** `who` names the component in the Stopped error (`node reporter`, `slice publisher`). */
  constructor(
    readonly timeoutMs: number,
    private readonly who: string,
  ) {}

  /** Requests on their way. */
  get requests(): number {
    return this.inFlight.size;
  }

  /** True once stop() was called. */
  get isStopped(): boolean {
    return this.stopped;
  }

  /** Cancels the requests in flight; later requests fail with Stopped. */
  stop(): void {
    this.stopped = true;
    for (const controller of this.inFlight) controller.abort(new Stopped(`${this.who} stopped`));
  }

  /** One request with the deadline, cancellable by stop(), an optional patch content type, errors classified. */
  async call<T>(client: ClientObservable, operation: string, send: (options: ConfigurationOptions) => Promise<T>, contentType?: string): Promise<T> {
    if (this.stopped) throw new Stopped(`${this.who} stopped`);
    const controller = new AbortController();
    this.inFlight.add(controller);
    try {
      return await requestWithDeadline(client, { operation, timeoutMs: this.timeoutMs, controller, ...(contentType ? { contentType } : {}) }, send);
    } catch (err) {
      if (this.stopped) throw new Stopped(`${this.who} stopped`);
      throw err;
    } finally {
      this.inFlight.delete(controller);
    }
  }
}
