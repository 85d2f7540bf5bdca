// Sorting a failed Kubernetes API request into what an operator can do about
// it. Shared by every component that talks to the API server. It recognises the
// client's ApiException by shape rather than by class, so that importing it does
// not load @kubernetes/client-node (about 66 MiB) into a process that has no use
// for the API.
import { truncate } from './node-report.js';

/** Why the last request failed, in words an operator can act on. */
export type ApiErrorKind =
  | 'unreachable'
  | 'timeout'
  | 'unauthorized'
  | 'forbidden'
  | 'notFound'
  | 'conflict'
  | 'throttled'
  | 'serverError'
  | 'clientError'
  | 'config';

export interface ClassifiedApiError {
  kind: ApiErrorKind;
  /** The request that failed, as the caller names it (`getNode`, `createResourceSlice`...). */
  operation: string;
  /** HTTP status when the server answered. */
  statusCode?: number;
  message: string;
}

/** What @kubernetes/client-node throws when the server answered with an error status. */
interface ApiExceptionShape extends Error {
  code: number;
  body: unknown;
  headers: unknown;
}

/** The client's ApiException: an Error with a numeric HTTP code, a body and headers (system errors carry string codes). */
export function isApiException(err: unknown): err is ApiExceptionShape {
  return err instanceof Error && typeof (err as { code?: unknown }).code === 'number' && 'body' in err && 'headers' in err;
}

/** The HTTP status of a failed request, when the server answered. */
export function httpStatusOf(err: unknown): number | undefined {
  return isApiException(err) ? err.code : undefined;
}

/** Sorts a failed request into what an operator can do about it. `timedOut`: our own deadline fired. */
export function classifyApiError(operation: string, err: unknown, timedOut: boolean, timeoutMs: number): ClassifiedApiError {
  if (timedOut) return { kind: 'timeout', operation, message: `no answer within ${timeoutMs} ms` };
  if (isApiException(err)) {
    const code = err.code;
    const kind: ApiErrorKind =
      code === 401
        ? 'unauthorized'
        : code === 403
          ? 'forbidden'
          : code === 404
            ? 'notFound'
            : code === 409
              ? 'conflict'
              : code === 429
                ? 'throttled'
                : code >= 500
                  ? 'serverError'
                  : 'clientError';
    return { kind, operation, statusCode: code, message: apiErrorMessage(err) };
  }
  const e = err as { code?: string; message?: string } | undefined;
  const message = e?.message ?? String(err);
  const code = e?.code ?? (e as { errno?: string } | undefined)?.errno;
  // Anything else (refused, reset, DNS, TLS) means we did not get an answer from the server.
  return { kind: 'unreachable', operation, message: code && !message.includes(code) ? `${code}: ${message}` : message };
}

/** The Status message from an ApiException body, falling back to its own message. */
export function apiErrorMessage(err: ApiExceptionShape): string {
  const body = err.body;
  if (typeof body === 'string') {
    try {
      const parsed = JSON.parse(body) as { message?: unknown };
      if (typeof parsed.message === 'string') return `HTTP ${err.code}: ${parsed.message}`;
    } catch {
      // Not JSON: use the text.
    }
    if (body.length > 0) return `HTTP ${err.code}: ${truncate(body, 300)}`;
  } else if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') {
    return `HTTP ${err.code}: ${(body as { message: string }).message}`;
  }
  return `HTTP ${err.code}`;
}
