// Registering one resource's socket with the kubelet. The kubelet dials us
// back inside Register, so our server must already be serving.
import * as grpc from '@grpc/grpc-js';
import { PluginError } from '../errors.js';
import { devicePluginProto, DEVICE_PLUGIN_API_VERSION } from './proto.js';
import type { DevicePluginOptions } from '../generated/v1beta1/DevicePluginOptions.js';

export interface RegistrationRequest {
  /** Path of the kubelet's Registration socket (`.../device-plugins/kubelet.sock`). */
  kubeletSocket: string;
  /** Our socket's base name in the same directory. */
  endpoint: string;
  resourceName: string;
  options: DevicePluginOptions;
  /** Whole-call deadline; the kubelet itself allows 10 s for its dial back. */
  timeoutMs?: number;
  /** Cancels the call (shutdown must not wait out a kubelet that does not answer). */
  signal?: AbortSignal;
}

export async function registerWithKubelet(request: RegistrationRequest): Promise<void> {
  const { Registration } = devicePluginProto().v1beta1;
  const client = new Registration(`unix:${request.kubeletSocket}`, grpc.credentials.createInsecure());
  const deadline = Date.now() + (request.timeoutMs ?? 15_000);
  try {
    await new Promise<void>((resolve, reject) => {
      const call = client.Register(
        {
          version: DEVICE_PLUGIN_API_VERSION,
          endpoint: request.endpoint,
          resource_name: request.resourceName,
          options: request.options,
        },
        { deadline },
        (err) => {
          request.signal?.removeEventListener('abort', cancel);
          if (err) reject(err);
          else resolve();
        },
      );
      const cancel = () => call.cancel();
      if (request.signal?.aborted) cancel();
      else request.signal?.addEventListener('abort', cancel, { once: true });
    });
  } catch (err) {
    const e = err as grpc.ServiceError;
    throw new PluginError(
      'PVDP_ERR_REGISTRATION',
      `Registering ${request.resourceName} with the kubelet at ${request.kubeletSocket} failed: ${e.details || e.message}`,
      { cause: err },
    );
  } finally {
    client.close();
  }
}
