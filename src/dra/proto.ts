// Loads the DRA .proto files (registration, the DRA service in v1 and v1beta1,
// the health stream in v1alpha1, v1beta1 and v1) with the options the typed
// handlers in src/generated/dra were generated with (scripts/gen-proto.mjs).
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import type { ProtoGrpcType as DraProto } from '../generated/dra/dra.js';
import type { ProtoGrpcType as HealthProto } from '../generated/dra/health.js';
import type { ProtoGrpcType as RegistrationProto } from '../generated/dra/registration.js';

const PROTO_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto');

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

export type DraProtos = DraProto & HealthProto & RegistrationProto;

let loaded: DraProtos | undefined;

export function draProtos(): DraProtos {
  loaded ??= grpc.loadPackageDefinition(
    protoLoader.loadSync(
      [
        'pluginregistration/v1/registration.proto',
        'dra/v1/dra.proto',
        'dra/v1beta1/dra.proto',
        'dra-health/v1alpha1/health.proto',
        'dra-health/v1beta1/health.proto',
        'dra-health/v1/health.proto',
      ],
      LOADER_OPTIONS,
    ),
  ) as unknown as DraProtos;
  return loaded;
}

/** PluginInfo.type of a DRA driver. */
export const DRA_PLUGIN_TYPE = 'DRAPlugin';

/**
 * The services we offer, as the kubelet names them in supported_versions:
 * the DRA service newest first (the kubelet takes the first it knows; a 1.33
 * kubelet knows only v1beta1), then every health stream version we serve.
 */
export const SUPPORTED_SERVICES = [
  'v1.DRAPlugin',
  'v1beta1.DRAPlugin',
  'v1.DRAResourceHealth',
  'v1beta1.DRAResourceHealth',
  'v1alpha1.DRAResourceHealth',
] as const;
