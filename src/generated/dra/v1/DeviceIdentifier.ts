// Original file: proto/dra-health/v1/health.proto


export interface DeviceIdentifier {
  'pool_name'?: (string);
  'device_name'?: (string);
}

export interface DeviceIdentifier__Output {
  'pool_name': (string);
  'device_name': (string);
}
