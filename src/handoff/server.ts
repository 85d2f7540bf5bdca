// One handoff socket: accepts connections, reads one request line with limits
// (size, time, number of connections), answers malformed requests with a JSON
// error, and hands a valid claim to its ClaimTarget, which decides and sends.
// Hostile clients cost at most `maxConnections` short-lived connections.
import type { Logger } from '../log.js';
import {
  MAX_REQUEST_BYTES,
  encodeResponse,
  errorResponse,
  parseClaimRequest,
  HandoffProtocolError,
  type HandoffErrorCode,
} from './protocol.js';
import { ConnectionEndedError, type HandoffConnection, type HandoffListener, type HandoffTransport } from './transport.js';

/** Who owns the preparation behind a socket. */
export interface ClaimTarget {
  /** A valid claim arrived on `connection`: answer it (fds or a JSON error). */
  claim(connection: HandoffConnection): Promise<void>;
}

export interface EndpointLimits {
  /** Time a client has to send its request (default 5 s). */
  requestTimeoutMs?: number;
  /** Connections served at once; more are refused with PVDP_HANDOFF_BUSY (default 8). */
  maxConnections?: number;
}

const BUSY_MESSAGE = 'Too many connections to this handoff socket; retry in a moment';

export async function sendError(connection: HandoffConnection, code: HandoffErrorCode, message: string): Promise<void> {
  await connection.send(encodeResponse(errorResponse(code, message)), []).catch(() => undefined);
}

export class HandoffEndpoint {
  private listener: HandoffListener | null = null;
  private active = 0;
  private readonly pending = new Set<Promise<void>>();
  /** Connections accepted over the endpoint's life (tests). */
  accepted = 0;

  constructor(
    readonly socketPath: string,
    private readonly transport: HandoffTransport,
    private readonly target: ClaimTarget,
    private readonly logger: Logger,
    private readonly limits: EndpointLimits = {},
  ) {}

  get listening(): boolean {
    return this.listener !== null;
  }

  get activeConnections(): number {
    return this.active;
  }

  async listen(): Promise<void> {
    if (this.listener) return;
    const max = this.limits.maxConnections ?? 8;
    this.listener = await this.transport.listen(
      this.socketPath,
      (connection) => {
        const p = this.handle(connection).catch((err: unknown) =>
          this.logger.warn({ socket: this.socketPath, err: (err as Error).message }, 'Handoff connection failed'),
        );
        this.pending.add(p);
        void p.finally(() => this.pending.delete(p));
      },
      // Served connections plus as many being told BUSY here; past that the transport
      // answers BUSY itself on accept, without any state kept for the connection.
      { maxConnections: 2 * max, overflowAnswer: encodeResponse(errorResponse('PVDP_HANDOFF_BUSY', BUSY_MESSAGE)) },
    );
  }

  private async handle(connection: HandoffConnection): Promise<void> {
    this.accepted += 1;
    if (this.active >= (this.limits.maxConnections ?? 8)) {
      // One short line into a fresh socket buffer, then drop it: a refused client costs no waiting.
      await sendError(connection, 'PVDP_HANDOFF_BUSY', BUSY_MESSAGE);
      await connection.close({ now: true });
      return;
    }
    this.active += 1;
    try {
      let line: Buffer;
      try {
        line = await connection.readRequest(MAX_REQUEST_BYTES, this.limits.requestTimeoutMs ?? 5000);
      } catch (err) {
        if (err instanceof HandoffProtocolError) await sendError(connection, err.code, err.message);
        else if (!(err instanceof ConnectionEndedError)) throw err;
        else this.logger.debug({ socket: this.socketPath, why: err.reason }, 'Handoff connection ended without a request');
        return;
      }
      try {
        parseClaimRequest(line);
      } catch (err) {
        if (!(err instanceof HandoffProtocolError)) throw err;
        this.logger.info({ socket: this.socketPath, code: err.code }, 'Refused a malformed handoff request');
        await sendError(connection, err.code, err.message);
        return;
      }
      await this.target.claim(connection);
    } finally {
      this.active -= 1;
      await connection.close();
    }
  }

  /** Stops listening, removes the socket; connections in flight finish. */
  async close(): Promise<void> {
    const listener = this.listener;
    this.listener = null;
    await listener?.close();
  }

  /** Waits for connections in flight (tests and shutdown). */
  async drain(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }
}
