// Original file: proto/dra/v1beta1/dra.proto

import type { Device as _v1beta1_Device, Device__Output as _v1beta1_Device__Output } from '../v1beta1/Device.js';

export interface NodePrepareResourceResponse {
  'devices'?: (_v1beta1_Device)[];
  'error'?: (string);
}

export interface NodePrepareResourceResponse__Output {
  'devices': (_v1beta1_Device__Output)[];
  'error': (string);
}
