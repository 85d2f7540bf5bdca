// Original file: proto/dra/v1beta1/dra.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { NodePrepareResourcesRequest as _v1beta1_NodePrepareResourcesRequest, NodePrepareResourcesRequest__Output as _v1beta1_NodePrepareResourcesRequest__Output } from '../v1beta1/NodePrepareResourcesRequest.js';
import type { NodePrepareResourcesResponse as _v1beta1_NodePrepareResourcesResponse, NodePrepareResourcesResponse__Output as _v1beta1_NodePrepareResourcesResponse__Output } from '../v1beta1/NodePrepareResourcesResponse.js';
import type { NodeUnprepareResourcesRequest as _v1beta1_NodeUnprepareResourcesRequest, NodeUnprepareResourcesRequest__Output as _v1beta1_NodeUnprepareResourcesRequest__Output } from '../v1beta1/NodeUnprepareResourcesRequest.js';
import type { NodeUnprepareResourcesResponse as _v1beta1_NodeUnprepareResourcesResponse, NodeUnprepareResourcesResponse__Output as _v1beta1_NodeUnprepareResourcesResponse__Output } from '../v1beta1/NodeUnprepareResourcesResponse.js';

export interface DRAPluginClient extends grpc.Client {
  NodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  NodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  NodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  NodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodePrepareResources(argument: _v1beta1_NodePrepareResourcesRequest, callback: grpc.requestCallback<_v1beta1_NodePrepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  
  NodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  NodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  NodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  NodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, metadata: grpc.Metadata, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, options: grpc.CallOptions, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  nodeUnprepareResources(argument: _v1beta1_NodeUnprepareResourcesRequest, callback: grpc.requestCallback<_v1beta1_NodeUnprepareResourcesResponse__Output>): grpc.ClientUnaryCall;
  
}

export interface DRAPluginHandlers extends grpc.UntypedServiceImplementation {
  NodePrepareResources: grpc.handleUnaryCall<_v1beta1_NodePrepareResourcesRequest__Output, _v1beta1_NodePrepareResourcesResponse>;
  
  NodeUnprepareResources: grpc.handleUnaryCall<_v1beta1_NodeUnprepareResourcesRequest__Output, _v1beta1_NodeUnprepareResourcesResponse>;
  
}

export interface DRAPluginDefinition extends grpc.ServiceDefinition {
  NodePrepareResources: MethodDefinition<_v1beta1_NodePrepareResourcesRequest, _v1beta1_NodePrepareResourcesResponse, _v1beta1_NodePrepareResourcesRequest__Output, _v1beta1_NodePrepareResourcesResponse__Output>
  NodeUnprepareResources: MethodDefinition<_v1beta1_NodeUnprepareResourcesRequest, _v1beta1_NodeUnprepareResourcesResponse, _v1beta1_NodeUnprepareResourcesRequest__Output, _v1beta1_NodeUnprepareResourcesResponse__Output>
}
