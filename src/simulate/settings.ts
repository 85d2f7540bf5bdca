// Settings for a plugin on a simulated node under one scratch directory: the
// demo's and the tests' way to run the daemon without flags.
import { join } from 'node:path';
import type { Settings } from '../config/settings.js';
import type { ResourceConfig } from '../config/schema.js';
import type { DiscoveryRoots } from '../topology/types.js';
import { DEFAULT_HANDOFF_CONTAINER_DIR } from '../handoff/service.js';
import { DEFAULT_DRIVER_NAME } from '../dra/constants.js';

export function simulatedSettings(options: {
  roots: DiscoveryRoots;
  /** Scratch directory: device-plugins, the handoff directory and the PodResources socket go under it. */
  dir: string;
  resources: ResourceConfig[];
  pollIntervalMs?: number;
  /** Serve DRA instead of the device plugin API (registry, plugins and CDI directories under `dir`). */
  kubeletApi?: Settings['kubeletApi'];
}): Settings {
  return {
    configFile: null,
    kubeletApi: options.kubeletApi ?? 'device-plugin',
    dra: {
      driverName: DEFAULT_DRIVER_NAME,
      registryDir: join(options.dir, 'reg'),
      driverDir: join(options.dir, 'plugins', DEFAULT_DRIVER_NAME),
      cdiSpecDir: join(options.dir, 'cdi'),
    },
    sysfsRoot: options.roots.sysfsRoot,
    devRoot: options.roots.devRoot,
    devicePluginDir: join(options.dir, 'dp'),
    podResourcesSocket: join(options.dir, 'pr.sock'),
    pollIntervalMs: options.pollIntervalMs ?? 1000,
    logLevel: 'debug',
    simulate: true,
    cdiSpecDir: null,
    nodeName: null,
    kubeconfig: null,
    metricsPort: null,
    metricsBind: '127.0.0.1',
    handoffHostDir: join(options.dir, 'handoff'),
    handoffContainerDir: DEFAULT_HANDOFF_CONTAINER_DIR,
    resources: options.resources,
  };
}
