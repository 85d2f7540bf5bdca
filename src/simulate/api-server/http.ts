// The HTTP side of the API server stand-in: a request as it is recorded (body
// parsed), the answers (JSON, a Status), patches by content type, and the
// faults a test asks for: a status, a hang or a delay for matching requests.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isObject, jsonMergePatch, strategicMergePatch, type Json } from './json.js';

export interface RecordedRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  query: URLSearchParams;
  contentType: string | undefined;
  /** Parsed JSON body, or the raw text when it is not JSON, or undefined when empty. */
  body: unknown;
  /** Status answered; undefined while hanging or when the connection was cut. */
  status?: number;
  at: number;
}

/** What a fault does to a matching request. */
export type FaultAction = number | 'hang' | { delayMs: number };

export interface FaultRule {
  respond: FaultAction;
  /** Only requests with this method (upper case). */
  method?: string;
  /** Only requests whose path matches (a prefix string or a RegExp). */
  path?: string | RegExp;
  /** How many requests it applies to; forever when omitted. */
  times?: number;
  /** Only watch requests (`?watch=true`) when true, only other requests when false. */
  watch?: boolean;
}

interface PendingFault extends FaultRule {
  used: number;
}

/** Reads a request's body and records it; the status is filled in when the answer is sent. */
export async function readRequest(req: IncomingMessage, res: ServerResponse): Promise<RecordedRequest> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  let body: unknown = undefined;
  if (text.length > 0) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
  }
  const record: RecordedRequest = {
    method: req.method ?? 'GET',
    path: url.pathname,
    query: url.searchParams,
    contentType: req.headers['content-type'],
    body,
    at: Date.now(),
  };
  res.on('finish', () => {
    record.status = res.statusCode;
  });
  return record;
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** A failure as the real server answers it: a v1 Status. */
export function sendStatus(res: ServerResponse, code: number, reason: string, message: string): void {
  sendJson(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
}

/** The patched object, by the request's content type; null after answering 400 or 415. */
export function applyPatch(req: RecordedRequest, current: Json, res: ServerResponse): Json | null {
  const type = (req.contentType ?? '').split(';')[0]?.trim();
  if (type === 'application/strategic-merge-patch+json') {
    if (!isObject(req.body)) {
      sendStatus(res, 400, 'BadRequest', 'strategic merge patch must be an object');
      return null;
    }
    return strategicMergePatch(current, req.body) as Json;
  }
  if (type === 'application/merge-patch+json') {
    if (!isObject(req.body)) {
      sendStatus(res, 400, 'BadRequest', 'merge patch must be an object');
      return null;
    }
    return jsonMergePatch(current, req.body) as Json;
  }
  sendStatus(res, 415, 'UnsupportedMediaType', `the fake API server does not apply ${type ?? 'no content type'} patches`);
  return null;
}

const FAULT_REASONS: Record<number, string> = { 403: 'Forbidden', 404: 'NotFound', 409: 'Conflict', 429: 'TooManyRequests', 500: 'InternalError', 503: 'ServiceUnavailable' };

/** The faults a test added, tried in the order added, and the requests they left hanging. */
export class Faults {
  private rules: PendingFault[] = [];
  private readonly hanging = new Set<ServerResponse>();

  add(rule: FaultRule): void {
    this.rules.push({ ...rule, used: 0 });
  }

  /** Forgets the rules; requests left hanging by them stay hanging (the client must time them out). */
  clear(): void {
    this.rules = [];
  }

  /** Cuts every hanging request (the server went down). */
  cutHanging(): void {
    for (const res of this.hanging) res.destroy();
    this.hanging.clear();
  }

  /**
   * Applies the first matching fault: true when it answered the request or
   * left it hanging; false when the request goes on (after a delay, if asked).
   */
  async apply(req: RecordedRequest, res: ServerResponse): Promise<boolean> {
    const fault = this.match(req);
    if (!fault) return false;
    const action = fault.respond;
    if (action === 'hang') {
      this.hanging.add(res);
      res.on('close', () => this.hanging.delete(res));
      return true;
    }
    if (typeof action === 'number') {
      sendStatus(res, action, FAULT_REASONS[action] ?? 'Failure', `fake fault: ${action}`);
      return true;
    }
    await new Promise((resolve) => setTimeout(resolve, action.delayMs));
    return false;
  }

  private match(req: RecordedRequest): PendingFault | undefined {
    for (const fault of this.rules) {
      if (fault.times !== undefined && fault.used >= fault.times) continue;
      if (fault.method && fault.method !== req.method) continue;
      if (fault.watch !== undefined && fault.watch !== (req.query.get('watch') === 'true')) continue;
      if (fault.path instanceof RegExp ? !fault.path.test(req.path) : fault.path && !req.path.startsWith(fault.path)) continue;
      fault.used += 1;
      return fault;
    }
    return undefined;
  }
}
