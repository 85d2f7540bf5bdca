// How handoff bytes and fds move. The protocol logic (server.ts, client.ts)
// sees connections and channels; two transports provide them: real unix
// sockets with SCM_RIGHTS through the VFIO binding's sendmsg/recvmsg (this
// file), and the simulated kernel's processes (simulated-transport.ts).
//
// Node's net module cannot pass fds, so a real connection is accepted and read
// by net, while the fds go out with sendmsg on the connection's own fd. A
// client keeps its net.Socket paused (libuv never reads it, which would drop
// the fds) and receives with recvmsg, polling: the fd is non-blocking.
import net from 'node:net';
import { unlink } from 'node:fs/promises';
import type { VfioBinding } from '../vfio/binding.js';
import { isVfioError } from '../vfio/errors.js';
import { HandoffProtocolError } from './protocol.js';

/** The fd-passing calls of a VfioBinding (native or simulated process). */
export type FdIo = Pick<VfioBinding, 'sendFds' | 'recvFds' | 'close'>;

/** Why reading a request ended without one. */
export class ConnectionEndedError extends Error {
  constructor(readonly reason: 'closed' | 'timeout') {
    super(reason === 'closed' ? 'The client closed the connection before sending a request' : 'The client sent no complete request in time');
    this.name = 'ConnectionEndedError';
  }
}

/**
 * Sending failed after the fds went out (sendmsg with SCM_RIGHTS wrote at least
 * one byte, so the peer holds the fds): the claim happened even though the rest
 * of the line did not arrive. The plugin must never hand the same fds out again.
 */
export class FdsDeliveredError extends Error {
  readonly fdsDelivered = true;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FdsDeliveredError';
  }
}

/** One accepted connection, as the server side sees it. */
export interface HandoffConnection {
  /** The request line (newline excluded). Rejects with HandoffProtocolError (too large) or ConnectionEndedError. */
  readRequest(maxBytes: number, timeoutMs: number): Promise<Buffer>;
  /**
   * Sends `data`; `fds` (the plugin's) ride on its first byte by SCM_RIGHTS.
   * Rejects with FdsDeliveredError when the fds went out but the rest failed.
   */
  send(data: Buffer, fds: number[]): Promise<void>;
  /** Closes gracefully (waits briefly for the peer); `{ now: true }` drops the connection at once. */
  close(options?: { now?: boolean }): Promise<void>;
}

export interface HandoffListener {
  readonly socketPath: string;
  /** The transport's cap on connections open at once, when it has one. */
  readonly maxConnections?: number;
  /** Stops accepting and removes the socket file; open connections finish. */
  close(): Promise<void>;
}

export interface ListenOptions {
  /** Connections the transport keeps open at once; more are answered `overflowAnswer` and dropped on accept. */
  maxConnections?: number;
  /**
   * The line a connection past `maxConnections` gets before it is dropped (the
   * protocol's BUSY error), so a client under a flood learns to retry instead
   * of meeting a closed socket (EPIPE on its request).
   */
  overflowAnswer?: Buffer;
}

/** The server side of a transport. */
export interface HandoffTransport {
  readonly kind: 'unix' | 'simulated';
  listen(socketPath: string, onConnection: (connection: HandoffConnection) => void, options?: ListenOptions): Promise<HandoffListener>;
}

/** A connected client socket: its fd in the client's fd space and how to close it. */
export interface ClientChannel {
  fd: number;
  io: FdIo;
  close(): Promise<void>;
}

/** The client side of a transport. */
export interface ClaimTransport {
  connect(socketPath: string, timeoutMs: number): Promise<ClientChannel>;
  /** Closes a received fd (on errors, before they reach the caller). */
  closeFd(fd: number): Promise<void>;
}

/** A client-side failure with a stable code (protocol codes included). */
export class HandoffClaimError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HandoffClaimError';
    this.code = code;
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The fd under a net.Socket (Linux, unix sockets). */
export function rawFdOf(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('The socket has no file descriptor (closed?)');
  return fd;
}

/** Retries a non-blocking socket call while it says EAGAIN, backing off up to 20 ms. */
export async function retryAgain<T>(call: () => Promise<T>, deadline: number, onTimeout: () => Error): Promise<T> {
  let wait = 1;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (!isVfioError(err, 'EAGAIN', 'EWOULDBLOCK')) throw err;
      if (Date.now() >= deadline) throw onTimeout();
      await delay(wait);
      wait = Math.min(wait * 2, 20);
    }
  }
}

class UnixConnection implements HandoffConnection {
  private closed = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly io: Pick<VfioBinding, 'sendFds'>,
  ) {
    socket.on('error', () => undefined); // peers may reset; the close path handles it
  }

  readRequest(maxBytes: number, timeoutMs: number): Promise<Buffer> {
    const socket = this.socket;
    return new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let length = 0;
      const finish = (result: Buffer | Error) => {
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('end', onEnd);
        socket.off('close', onEnd);
        socket.pause();
        if (result instanceof Buffer) resolve(result);
        else reject(result);
      };
      const onData = (chunk: Buffer) => {
        const newline = chunk.indexOf(0x0a);
        const take = newline >= 0 ? chunk.subarray(0, newline) : chunk;
        if (length + take.length > maxBytes - 1) {
          finish(new HandoffProtocolError('PVDP_HANDOFF_TOO_LARGE', `The request is longer than ${maxBytes} bytes`));
          return;
        }
        chunks.push(take);
        length += take.length;
        if (newline >= 0) finish(Buffer.concat(chunks));
      };
      const onEnd = () => finish(new ConnectionEndedError('closed'));
      const timer = setTimeout(() => finish(new ConnectionEndedError('timeout')), timeoutMs);
      socket.on('data', onData);
      socket.once('end', onEnd);
      socket.once('close', onEnd);
    });
  }

  async send(data: Buffer, fds: number[]): Promise<void> {
    if (this.closed || this.socket.destroyed) throw new ConnectionEndedError('closed');
    let sent = 0;
    if (fds.length > 0) {
      const fd = rawFdOf(this.socket);
      // A fresh connection's buffer takes a description easily; EAGAIN only under a flood.
      sent = await retryAgain(() => this.io.sendFds(fd, data, fds), Date.now() + 2000, () => new ConnectionEndedError('timeout'));
    }
    if (sent < data.length) {
      const rest = data.subarray(sent);
      try {
        if (this.socket.destroyed) throw new ConnectionEndedError('closed');
        await new Promise<void>((resolve, reject) => this.socket.write(rest, (err) => (err ? reject(err) : resolve())));
      } catch (err) {
        if (sent > 0) throw new FdsDeliveredError(`The fds were delivered but the rest of the answer was not: ${(err as Error).message}`, { cause: err });
        throw err;
      }
    }
  }

  async close(options: { now?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const socket = this.socket;
    if (socket.destroyed) return;
    if (options.now) {
      socket.destroy();
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        socket.destroy();
        resolve();
      }, 1000);
      timer.unref();
      socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.end();
      // Half-closed peers that never close would keep us: the timer destroys them.
      socket.resume();
    });
  }
}

/**
 * Real unix sockets. `io` passes the fds (the native binding on a node, where
 * the fds are real). The socket file is created with the directory's
 * protection (the per-allocation directory is 0700).
 */
export function unixTransport(io: Pick<VfioBinding, 'sendFds'>): HandoffTransport {
  return {
    kind: 'unix',
    async listen(socketPath, onConnection, options = {}) {
      if (Buffer.byteLength(socketPath) > 107) throw new RangeError(`Socket path ${socketPath} is longer than the 107 bytes a unix socket allows`);
      await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
      const max = options.maxConnections;
      let open = 0;
      const server = net.createServer((socket) => {
        if (max !== undefined && open >= max) {
          // Past the cap a connection costs one short write into its fresh socket
          // buffer (it never blocks) and a close, in this same turn: nothing lingers.
          socket.on('error', () => undefined);
          if (options.overflowAnswer) socket.end(options.overflowAnswer);
          socket.destroy();
          return;
        }
        open += 1;
        socket.once('close', () => (open -= 1));
        onConnection(new UnixConnection(socket, io));
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
      server.on('error', () => undefined);
      let closed = false;
      return {
        socketPath,
        ...(max !== undefined ? { maxConnections: max } : {}),
        async close() {
          if (closed) return;
          closed = true;
          // Stop accepting and remove the name; connections in flight finish on their own
          // (each is bounded by the request timeout), so an answer being sent is never cut.
          server.close();
          await unlink(socketPath).catch(() => undefined);
        },
      };
    },
  };
}

/** Client side over real unix sockets; `io` receives the fds (the native binding). */
export function unixClaimTransport(io: FdIo): ClaimTransport {
  return {
    async connect(socketPath, timeoutMs) {
      const socket = net.connect({ path: socketPath });
      // Paused before connect completes: libuv must never read (it would drop the fds).
      socket.pause();
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          socket.destroy();
          reject(new HandoffClaimError('PVDP_HANDOFF_TIMEOUT', `Connecting to ${socketPath} timed out`));
        }, timeoutMs);
        socket.once('connect', () => {
          clearTimeout(timer);
          resolve();
        });
        socket.once('error', (err: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          socket.destroy();
          const missing = err.code === 'ENOENT' || err.code === 'ECONNREFUSED';
          if (err.code === 'EAGAIN') {
            // A unix socket's accept queue is full: the plugin is flooded; as good as BUSY.
            reject(new HandoffClaimError('PVDP_HANDOFF_BUSY', `The handoff socket ${socketPath} accepts no more connections now (EAGAIN); retry in a moment`, { cause: err }));
            return;
          }
          reject(
            new HandoffClaimError(
              missing ? 'PVDP_HANDOFF_NO_SOCKET' : 'PVDP_HANDOFF_CONNECT',
              missing
                ? `No handoff is being served at ${socketPath} (${err.code}): it was already claimed, or PreStartContainer has not prepared it, or the plugin restarted; restart the container to prepare again`
                : `Cannot connect to ${socketPath}: ${err.message}`,
              { cause: err },
            ),
          );
        });
      });
      socket.on('error', () => undefined);
      return {
        fd: rawFdOf(socket),
        io,
        async close() {
          socket.destroy();
        },
      };
    },
    closeFd: (fd) => io.close(fd),
  };
}
