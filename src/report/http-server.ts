// One HTTP port for operators and the kubelet's probes: /metrics (Prometheus),
// /healthz (the process answers) and /readyz (every resource is registered
// with the kubelet and the first discovery finished). The Kubernetes API being
// unavailable never makes the plugin unready: it keeps serving the kubelet, and
// /readyz says so in its body.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ReporterStatus } from './node-reporter.js';

export interface ReadinessInput {
  /** The first discovery of the node's IOMMU groups finished. */
  discoveryDone: boolean;
  /** What registration waits for (the kubelet, its directory), one sentence; null when nothing. */
  waitingFor?: string | null;
  /** Every configured resource and whether the kubelet currently has it registered. */
  resources: ReadonlyArray<{ name: string; registered: boolean }>;
  /** Node reporting, shown for information only. */
  apiReporting?: ReporterStatus | null;
}

export interface ReadinessReport {
  ready: boolean;
  /** What keeps the plugin from being ready, one sentence each. */
  missing: string[];
  resources: Array<{ name: string; registered: boolean }>;
  apiReporting?: {
    state: string;
    since: string;
    lastError: { kind: string; operation: string; statusCode?: number; message: string; at: string } | null;
  };
}

export function readiness(input: ReadinessInput): ReadinessReport {
  const missing: string[] = [];
  if (!input.discoveryDone) missing.push('The first discovery of IOMMU groups has not finished');
  if (input.waitingFor) missing.push(input.waitingFor);
  for (const resource of input.resources) {
    if (!resource.registered) missing.push(`Resource ${resource.name} is not registered with the kubelet`);
  }
  const report: ReadinessReport = {
    ready: missing.length === 0,
    missing,
    resources: input.resources.map((r) => ({ name: r.name, registered: r.registered })),
  };
  const api = input.apiReporting;
  if (api) {
    report.apiReporting = {
      state: api.state,
      since: api.since.toISOString(),
      lastError: api.lastError
        ? {
            kind: api.lastError.kind,
            operation: api.lastError.operation,
            ...(api.lastError.statusCode !== undefined ? { statusCode: api.lastError.statusCode } : {}),
            message: api.lastError.message,
            at: api.lastError.at.toISOString(),
          }
        : null,
    };
  }
  return report;
}

export interface ProbeServerOptions {
  /** Bind address; default `0.0.0.0` (the kubelet probes the pod IP). */
  host?: string;
  /** Port; 0 picks a free one (tests). */
  port: number;
  /** Prometheus exposition: the registry's text and content type. */
  metrics: { text(): Promise<string>; readonly contentType: string };
  /** Asked on every /readyz. */
  readiness: () => ReadinessInput;
  logger?: Logger;
}

export class ProbeServer {
  private constructor(
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
  ) {}

  static async start(options: ProbeServerOptions): Promise<ProbeServer> {
    const logger = (options.logger ?? silentLogger()).child({ room: 'http' });
    const server = createServer((req, res) => {
      handle(req, res, options).catch((err: unknown) => {
        logger.error({ path: req.url, err: (err as Error).message }, 'HTTP probe request failed');
        if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
        else res.destroy();
      });
    });
    // Probes and scrapes are short; do not let idle connections hold close() up.
    server.keepAliveTimeout = 5000;
    const host = options.host ?? '0.0.0.0';
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => logger.error({ err: err.message }, 'HTTP probe server error'));
    const address = server.address() as AddressInfo;
    logger.info({ host, port: address.port }, 'Serving /metrics, /healthz and /readyz');
    return new ProbeServer(server, host, address.port);
  }

  /** The base URL, with 127.0.0.1 for a wildcard bind. */
  get url(): string {
    const host = this.host === '0.0.0.0' || this.host === '::' ? '127.0.0.1' : this.host;
    return `http://${host.includes(':') ? `[${host}]` : host}:${this.port}`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

function send(res: ServerResponse, status: number, contentType: string, body: string, head = false): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(head ? undefined : body);
}

async function handle(req: IncomingMessage, res: ServerResponse, options: ProbeServerOptions): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://localhost').pathname;
  const method = req.method ?? 'GET';
  const head = method === 'HEAD';
  const known = path === '/metrics' || path === '/healthz' || path === '/readyz' || path === '/livez';
  if (!known) return send(res, 404, 'text/plain; charset=utf-8', 'not found: try /metrics, /healthz or /readyz\n', head);
  if (method !== 'GET' && !head) {
    res.setHeader('allow', 'GET, HEAD');
    return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
  }
  switch (path) {
    case '/metrics':
      return send(res, 200, options.metrics.contentType, await options.metrics.text(), head);
    case '/healthz':
    case '/livez':
      return send(res, 200, 'text/plain; charset=utf-8', 'ok\n', head);
    default: {
      const report = readiness(options.readiness());
      return send(res, report.ready ? 200 : 503, 'application/json', `${JSON.stringify(report)}\n`, head);
    }
  }
}

export function startProbeServer(options: ProbeServerOptions): Promise<ProbeServer> {
  return ProbeServer.start(options);
}
