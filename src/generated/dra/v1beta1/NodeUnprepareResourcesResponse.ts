// Original file: proto/dra/v1beta1/dra.proto

import type { NodeUnprepareResourceResponse as _v1beta1_NodeUnprepareResourceResponse, NodeUnprepareResourceResponse__Output as _v1beta1_NodeUnprepareResourceResponse__Output } from '../v1beta1/NodeUnprepareResourceResponse.js';

export interface NodeUnprepareResourcesResponse {
  'claims'?: ({[key: string]: _v1beta1_NodeUnprepareResourceResponse});
}

export interface NodeUnprepareResourcesResponse__Output {
  'claims': ({[key: string]: _v1beta1_NodeUnprepareResourceResponse__Output});
}
