// Shutting a grpc-js server down: let calls finish, but never wait forever
// for a peer that keeps a stream or connection open.
import type * as grpc from '@grpc/grpc-js';

export function shutdownServer(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
