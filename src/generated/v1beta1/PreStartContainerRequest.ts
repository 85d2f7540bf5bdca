// Original file: proto/deviceplugin/v1beta1/deviceplugin.proto


export interface PreStartContainerRequest {
  'devices_ids'?: (string)[];
}

export interface PreStartContainerRequest__Output {
  'devices_ids': (string)[];
}
