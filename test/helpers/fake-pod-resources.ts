// A stand-in for the kubelet's PodResources v1 service on a unix socket:
// tests set which pods hold which devices, count List calls, and make it fail.
import { unlink } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { podResourcesProto } from '../../src/kubelet/proto.js';
import type { PodResourcesListerHandlers } from '../../src/generated/v1/PodResourcesLister.js';
import type { PodResources } from '../../src/generated/v1/PodResources.js';

export interface FakePod {
  name: string;
  namespace?: string;
  containers: Array<{ name: string; devices: Array<{ resource: string; ids: string[] }> }>;
}

export class FakePodResources {
  private server: grpc.Server | null = null;
  pods: FakePod[] = [];
  listCalls = 0;
  /** When set, List fails with UNAVAILABLE. */
  failing = false;

  constructor(readonly socketPath: string) {}

  async start(): Promise<void> {
    await unlink(this.socketPath).catch(() => undefined);
    const server = new grpc.Server();
    const handlers: PodResourcesListerHandlers = {
      List: (_call, callback) => {
        this.listCalls += 1;
        if (this.failing) {
          callback({ code: grpc.status.UNAVAILABLE, details: 'kubelet restarting' });
          return;
        }
        const pod_resources: PodResources[] = this.pods.map((p) => ({
          name: p.name,
          namespace: p.namespace ?? 'default',
          containers: p.containers.map((c) => ({
            name: c.name,
            devices: c.devices.map((d) => ({ resource_name: d.resource, device_ids: d.ids })),
            cpu_ids: [],
          })),
        }));
        callback(null, { pod_resources });
      },
      GetAllocatableResources: (_call, callback) => callback(null, { devices: [], cpu_ids: [] }),
      Get: (_call, callback) => callback({ code: grpc.status.UNIMPLEMENTED, details: 'not in this fake' }),
    };
    server.addService(podResourcesProto().v1.PodResourcesLister.service, handlers);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await unlink(this.socketPath).catch(() => undefined);
  }
}
