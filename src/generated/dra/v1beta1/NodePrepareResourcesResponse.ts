// Original file: proto/dra/v1beta1/dra.proto

import type { NodePrepareResourceResponse as _v1beta1_NodePrepareResourceResponse, NodePrepareResourceResponse__Output as _v1beta1_NodePrepareResourceResponse__Output } from '../v1beta1/NodePrepareResourceResponse.js';

export interface NodePrepareResourcesResponse {
  'claims'?: ({[key: string]: _v1beta1_NodePrepareResourceResponse});
}

export interface NodePrepareResourcesResponse__Output {
  'claims': ({[key: string]: _v1beta1_NodePrepareResourceResponse__Output});
}
