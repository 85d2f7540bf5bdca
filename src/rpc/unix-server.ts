// A grpc-js server on a unix socket the kubelet dials, as both kubelet front
// ends need one: never take over a socket another live process serves, remove
// a stale file first (grpc-js does not), remember which file we bound so a
// removed or replaced socket is noticed, and remove only our own at stop.
import { stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { PluginError } from '../errors.js';
import { shutdownServer } from './grpc-shutdown.js';

/** True when something accepts connections on the unix socket at `path`. */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    const done = (answer: boolean) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export interface ServiceBinding {
  service: grpc.ServiceDefinition;
  handlers: grpc.UntypedServiceImplementation;
}

export class UnixGrpcServer {
  private server: grpc.Server | null = null;
  private ino: number | null = null;

  constructor(
    readonly socketPath: string,
    private readonly services: () => ServiceBinding[],
  ) {}

  get running(): boolean {
    return this.server !== null;
  }

  /** Listens; resolves once the socket accepts connections. */
  async start(): Promise<void> {
    if (this.server) return;
    if (await socketAnswers(this.socketPath)) {
      throw new PluginError('PVDP_ERR_REGISTRATION', `Another process serves ${this.socketPath}: is a second copy of the plugin running on this node?`);
    }
    await unlink(this.socketPath).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    const server = new grpc.Server();
    for (const s of this.services()) server.addService(s.service, s.handlers);
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(`unix:${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
    });
    this.server = server;
    this.ino = (await stat(this.socketPath)).ino;
  }

  /** True while the socket file is still the one we bound. */
  async socketPresent(): Promise<boolean> {
    if (this.ino === null) return false;
    try {
      return (await stat(this.socketPath)).ino === this.ino;
    } catch {
      return false;
    }
  }

  /** Shuts down (calls get `graceMs` to finish) and removes our socket if it is still ours. */
  async stop(graceMs = 2000): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = null;
    await shutdownServer(server, graceMs);
    if (await this.socketPresent()) await unlink(this.socketPath).catch(() => undefined);
    this.ino = null;
  }
}
