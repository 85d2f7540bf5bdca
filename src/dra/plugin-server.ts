// The DRA service socket: NodePrepareResources and NodeUnprepareResources in
// v1 and v1beta1 (same messages, two service names), and the health stream in
// v1alpha1, v1beta1 and v1. It speaks the wire and delegates: claims to the
// claim state, health to the health stream. A bad claim reference gets an
// error of its own; the call as a whole succeeds.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { UnixGrpcServer, type ServiceBinding } from '../rpc/unix-server.js';
import { draProtos } from './proto.js';
import type { HealthStream } from './health-stream.js';
import type { ClaimRef } from './claim-allocation.js';
import type { PrepareResult } from './claim-state.js';

/** What the service needs of the claim state. */
export interface ClaimHandler {
  prepare(ref: ClaimRef): Promise<PrepareResult>;
  unprepare(ref: ClaimRef): Promise<{ error?: string }>;
}

/** At most this many claims in one call (a pod has a handful); the rest are refused one by one. */
const MAX_CLAIMS_PER_CALL = 256;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const UID = /^[A-Za-z0-9-]{1,64}$/;

interface WireClaim {
  namespace?: string;
  uid?: string;
  name?: string;
}

/** Why a claim reference is unusable, or null. The uid names files and CDI devices: it must be plain. */
export function claimRefProblem(claim: WireClaim): string | null {
  if (!claim.uid || !UID.test(claim.uid)) return `claim uid ${JSON.stringify(String(claim.uid ?? '')).slice(0, 80)} is not a Kubernetes UID`;
  if (!claim.namespace || !DNS_LABEL.test(claim.namespace)) return `claim namespace ${JSON.stringify(String(claim.namespace ?? '')).slice(0, 80)} is not a namespace name`;
  if (!claim.name || !DNS_SUBDOMAIN.test(claim.name)) return `claim name ${JSON.stringify(String(claim.name ?? '')).slice(0, 80)} is not a ResourceClaim name`;
  return null;
}

export interface DraPluginServerOptions {
  socketPath: string;
  claims: ClaimHandler;
  health: HealthStream;
  logger?: Logger;
}

export class DraPluginServer {
  private readonly server: UnixGrpcServer;
  private readonly logger: Logger;

  constructor(private readonly options: DraPluginServerOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'dra' });
    this.server = new UnixGrpcServer(options.socketPath, () => this.services());
  }

  get socketPath(): string {
    return this.options.socketPath;
  }

  get running(): boolean {
    return this.server.running;
  }

  start(): Promise<void> {
    return this.server.start();
  }

  socketPresent(): Promise<boolean> {
    return this.server.socketPresent();
  }

  stop(): Promise<void> {
    return this.server.stop();
  }

  private services(): ServiceBinding[] {
    const protos = draProtos();
    const dra = {
      NodePrepareResources: this.prepareHandler(),
      NodeUnprepareResources: this.unprepareHandler(),
    } as grpc.UntypedServiceImplementation;
    const health = (version: 'v1alpha1' | 'v1beta1' | 'v1') =>
      ({ NodeWatchResources: this.options.health.handler(version) }) as grpc.UntypedServiceImplementation;
    return [
      { service: protos.k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin.service, handlers: dra },
      { service: protos.v1beta1.DRAPlugin.service, handlers: dra },
      { service: protos.v1alpha1.DRAResourceHealth.service, handlers: health('v1alpha1') },
      { service: protos.v1beta1.DRAResourceHealth.service, handlers: health('v1beta1') },
      { service: protos.v1.DRAResourceHealth.service, handlers: health('v1') },
    ];
  }

  /** Runs `each` for every claim of a request, concurrently; refuses bad references one by one. */
  private async perClaim<T extends object>(
    claims: readonly WireClaim[] | undefined,
    each: (ref: ClaimRef) => Promise<T>,
    refused: (error: string) => T,
  ): Promise<Record<string, T>> {
    const answers: Record<string, T> = {};
    const list = Array.isArray(claims) ? claims : [];
    await Promise.all(
      list.map(async (claim, index) => {
        const key = typeof claim?.uid === 'string' ? claim.uid : '';
        if (index >= MAX_CLAIMS_PER_CALL) {
          answers[key] = refused(`more than ${MAX_CLAIMS_PER_CALL} claims in one call`);
          return;
        }
        const problem = claimRefProblem(claim ?? {});
        if (problem) {
          answers[key] = refused(problem);
          return;
        }
        answers[key] = await each({ namespace: claim.namespace!, uid: claim.uid!, name: claim.name! });
      }),
    );
    return answers;
  }

  private prepareHandler(): grpc.handleUnaryCall<{ claims?: WireClaim[] }, unknown> {
    return (call, callback) => {
      this.perClaim(
        call.request.claims,
        async (ref) => {
          const result = await this.options.claims.prepare(ref);
          if ('error' in result) return { devices: [], error: result.error };
          return {
            devices: result.devices.map((d) => ({
              request_names: d.requestNames,
              pool_name: d.poolName,
              device_name: d.deviceName,
              cdi_device_ids: d.cdiDeviceIds,
            })),
            error: '',
          };
        },
        (error) => ({ devices: [], error }),
      ).then(
        (claims) => callback(null, { claims }),
        (err: unknown) => {
          this.logger.error({ err: (err as Error).message }, 'NodePrepareResources failed');
          callback({ code: 13, details: (err as Error).message });
        },
      );
    };
  }

  private unprepareHandler(): grpc.handleUnaryCall<{ claims?: WireClaim[] }, unknown> {
    return (call, callback) => {
      this.perClaim(
        call.request.claims,
        async (ref) => ({ error: (await this.options.claims.unprepare(ref)).error ?? '' }),
        (error) => ({ error }),
      ).then(
        (claims) => callback(null, { claims }),
        (err: unknown) => {
          this.logger.error({ err: (err as Error).message }, 'NodeUnprepareResources failed');
          callback({ code: 13, details: (err as Error).message });
        },
      );
    };
  }
}
