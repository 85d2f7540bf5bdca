// Original file: proto/dra/v1beta1/dra.proto

import type { Claim as _v1beta1_Claim, Claim__Output as _v1beta1_Claim__Output } from '../v1beta1/Claim.js';

export interface NodePrepareResourcesRequest {
  'claims'?: (_v1beta1_Claim)[];
}

export interface NodePrepareResourcesRequest__Output {
  'claims': (_v1beta1_Claim__Output)[];
}
