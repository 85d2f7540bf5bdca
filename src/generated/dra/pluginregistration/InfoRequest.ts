// Original file: proto/pluginregistration/v1/registration.proto


export interface InfoRequest {
}

export interface InfoRequest__Output {
}
