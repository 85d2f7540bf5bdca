// Original file: proto/podresources/v1/podresources.proto


export interface AllocatableResourcesRequest {
}

export interface AllocatableResourcesRequest__Output {
}
