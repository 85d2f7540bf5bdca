// The handoff transport on the simulated kernel: the plugin and the pod are
// SimulatedProcesses, and the fds they exchange are the simulator's. The
// simulator has socketpair and SCM_RIGHTS but no bind/connect, so this
// namespace stands in for the filesystem's socket names: connect() makes a
// pair in the plugin process and moves one end into the connecting process,
// which is what accept(2)/connect(2) would leave behind.
import type { SimulatedProcess } from '../vfio/simulated-kernel.js';
import { isVfioError } from '../vfio/errors.js';
import { HandoffProtocolError } from './protocol.js';
import {
  ConnectionEndedError,
  HandoffClaimError,
  delay,
  type ClaimTransport,
  type ClientChannel,
  type HandoffConnection,
  type HandoffListener,
  type HandoffTransport,
} from './transport.js';

class SimulatedConnection implements HandoffConnection {
  private closed = false;
  constructor(
    private readonly plugin: SimulatedProcess,
    private readonly fd: number,
  ) {}

  async readRequest(maxBytes: number, timeoutMs: number): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    const chunks: Buffer[] = [];
    let length = 0;
    for (;;) {
      if (this.closed) throw new ConnectionEndedError('closed');
      let msg;
      try {
        msg = await this.plugin.recvFds(this.fd, maxBytes, 8);
      } catch (err) {
        if (!isVfioError(err, 'EAGAIN')) throw err;
        if (Date.now() >= deadline) throw new ConnectionEndedError('timeout');
        await delay(2);
        continue;
      }
      // A client has no business sending fds: close them at once.
      for (const fd of msg.fds) await this.plugin.close(fd);
      if (msg.data.length === 0) throw new ConnectionEndedError('closed');
      const newline = msg.data.indexOf(0x0a);
      const take = newline >= 0 ? msg.data.subarray(0, newline) : msg.data;
      if (length + take.length > maxBytes - 1) throw new HandoffProtocolError('PVDP_HANDOFF_TOO_LARGE', `The request is longer than ${maxBytes} bytes`);
      chunks.push(take);
      length += take.length;
      if (newline >= 0) return Buffer.concat(chunks);
    }
  }

  async send(data: Buffer, fds: number[]): Promise<void> {
    if (this.closed) throw new ConnectionEndedError('closed');
    await this.plugin.sendFds(this.fd, data, fds);
  }

  async close(_options?: { now?: boolean }): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.plugin.close(this.fd).catch(() => undefined);
  }
}

/** Socket names shared by the simulated plugin process and simulated pods. */
export class SimulatedHandoffNetwork {
  private readonly listeners = new Map<string, (connection: HandoffConnection) => void>();

  constructor(readonly plugin: SimulatedProcess) {}

  /** Socket names being served now. */
  paths(): string[] {
    return [...this.listeners.keys()].sort();
  }

  has(path: string): boolean {
    return this.listeners.has(path);
  }

  /** The plugin's side. */
  transport(): HandoffTransport {
    return {
      kind: 'simulated',
      listen: async (socketPath, onConnection): Promise<HandoffListener> => {
        this.listeners.set(socketPath, onConnection);
        const mine = onConnection;
        return {
          socketPath,
          close: async () => {
            if (this.listeners.get(socketPath) === mine) this.listeners.delete(socketPath);
          },
        };
      },
    };
  }

  /** A pod's side: claims from `process`. */
  claimTransport(process: SimulatedProcess): ClaimTransport {
    return {
      connect: async (socketPath): Promise<ClientChannel> => {
        const onConnection = this.listeners.get(socketPath);
        if (!onConnection) {
          throw new HandoffClaimError('PVDP_HANDOFF_NO_SOCKET', `No handoff is being served at ${socketPath} (ENOENT)`);
        }
        const [serverFd, clientEnd] = await this.plugin.socketPair();
        const fd = moveFd(this.plugin, clientEnd, process);
        const connection = new SimulatedConnection(this.plugin, serverFd);
        onConnection(connection);
        return { fd, io: process, close: () => process.close(fd).catch(() => undefined) };
      },
      closeFd: (fd) => process.close(fd),
    };
  }
}

/** Moves an open file from one simulated process's fd table to another's (lowest free fd >= 3). */
function moveFd(from: SimulatedProcess, fd: number, to: SimulatedProcess): number {
  const file = from.fdTable().get(fd);
  if (!file) throw new Error(`simulated fd ${fd} is not open`);
  from.fdTable().delete(fd);
  let target = 3;
  while (to.fdTable().has(target)) target++;
  to.fdTable().set(target, file);
  return target;
}
