// Original file: proto/dra/v1beta1/dra.proto

import type { Claim as _v1beta1_Claim, Claim__Output as _v1beta1_Claim__Output } from '../v1beta1/Claim.js';

export interface NodeUnprepareResourcesRequest {
  'claims'?: (_v1beta1_Claim)[];
}

export interface NodeUnprepareResourcesRequest__Output {
  'claims': (_v1beta1_Claim__Output)[];
}
