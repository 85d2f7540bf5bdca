// Registration with the kubelet's plugin manager: a socket in the plugin
// registry directory answering GetInfo (who we are, where our service socket
// is, which services we speak) and NotifyRegistrationStatus (whether the
// kubelet took us). A restarted kubelet dials the same socket again; a removed
// socket is served again, which the kubelet sees as a new plugin.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { UnixGrpcServer } from '../rpc/unix-server.js';
import { draProtos, DRA_PLUGIN_TYPE, SUPPORTED_SERVICES } from './proto.js';

export interface RegistrationStatusReport {
  /** The kubelet said it registered us (last word wins). */
  registered: boolean;
  /** Its reason when it refused us. */
  error: string | null;
  /** GetInfo calls answered (a kubelet restart calls it again). */
  infoCalls: number;
}

export interface DraRegistrationOptions {
  socketPath: string;
  driver: string;
  /** Absolute path of the DRA service socket. */
  endpoint: string;
  logger?: Logger;
  /** Told whenever the kubelet reports a registration result. */
  onStatus?: (status: RegistrationStatusReport) => void;
}

export class DraRegistration {
  private readonly server: UnixGrpcServer;
  private readonly logger: Logger;
  private status: RegistrationStatusReport = { registered: false, error: null, infoCalls: 0 };

  constructor(private readonly options: DraRegistrationOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'dra' });
    this.server = new UnixGrpcServer(options.socketPath, () => [
      { service: draProtos().pluginregistration.Registration.service, handlers: this.handlers() },
    ]);
  }

  get socketPath(): string {
    return this.options.socketPath;
  }

  get running(): boolean {
    return this.server.running;
  }

  report(): RegistrationStatusReport {
    return { ...this.status };
  }

  start(): Promise<void> {
    return this.server.start();
  }

  socketPresent(): Promise<boolean> {
    return this.server.socketPresent();
  }

  /** Serves again on a fresh socket (ours was removed); the kubelet registers us anew. */
  async restart(): Promise<void> {
    await this.server.stop(500);
    this.status = { ...this.status, registered: false, error: null };
    await this.server.start();
  }

  stop(): Promise<void> {
    return this.server.stop();
  }

  private handlers(): grpc.UntypedServiceImplementation {
    const getInfo: grpc.handleUnaryCall<unknown, unknown> = (_call, callback) => {
      this.status = { ...this.status, infoCalls: this.status.infoCalls + 1 };
      this.logger.info({ calls: this.status.infoCalls }, 'Kubelet asked for our plugin info');
      callback(null, {
        type: DRA_PLUGIN_TYPE,
        name: this.options.driver,
        endpoint: this.options.endpoint,
        supported_versions: [...SUPPORTED_SERVICES],
      });
    };
    const notify: grpc.handleUnaryCall<{ plugin_registered?: boolean; error?: string }, unknown> = (call, callback) => {
      const registered = call.request.plugin_registered === true;
      const error = registered ? null : String(call.request.error ?? '').slice(0, 1024) || 'no reason given';
      this.status = { ...this.status, registered, error };
      if (registered) this.logger.info('The kubelet registered the DRA driver');
      else this.logger.error({ reason: error }, 'The kubelet refused to register the DRA driver');
      this.options.onStatus?.(this.report());
      callback(null, {});
    };
    return { GetInfo: getInfo, NotifyRegistrationStatus: notify };
  }
}
