// Loads our .proto files with the same options the typed handlers in
// src/generated were generated with (scripts/gen-proto.mjs).
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType as DevicePluginProto } from '../generated/deviceplugin.js';
import type { ProtoGrpcType as PodResourcesProto } from '../generated/podresources.js';

/** The proto/ directory, next to src/ and dist/ alike. */
export const PROTO_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'proto');

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

let devicePlugin: DevicePluginProto | undefined;
let podResources: PodResourcesProto | undefined;

export function devicePluginProto(): DevicePluginProto {
  devicePlugin ??= grpc.loadPackageDefinition(
    protoLoader.loadSync('deviceplugin/v1beta1/deviceplugin.proto', LOADER_OPTIONS),
  ) as unknown as DevicePluginProto;
  return devicePlugin;
}

export function podResourcesProto(): PodResourcesProto {
  podResources ??= grpc.loadPackageDefinition(
    protoLoader.loadSync('podresources/v1/podresources.proto', LOADER_OPTIONS),
  ) as unknown as PodResourcesProto;
  return podResources;
}

export const DEVICE_PLUGIN_API_VERSION = 'v1beta1';
export { KUBELET_SOCKET_NAME, DEFAULT_DEVICE_PLUGIN_DIR, DEFAULT_POD_RESOURCES_SOCKET } from './socket-path.js';
export const KUBELET_CHECKPOINT_NAME = 'kubelet_internal_checkpoint';
export const HEALTHY = 'Healthy';
export const UNHEALTHY = 'Unhealthy';
