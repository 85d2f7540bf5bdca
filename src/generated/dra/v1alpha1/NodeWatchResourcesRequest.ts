// Original file: proto/dra-health/v1alpha1/health.proto


export interface NodeWatchResourcesRequest {
}

export interface NodeWatchResourcesRequest__Output {
}
