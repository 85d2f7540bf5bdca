// The daemon as the benchmarks run it: the bench configuration, settings resolved as the CLI
// would with --simulate, and the daemon on them (verify mode on the simulated POWER9 kernel).
import { join } from 'node:path';
import { buildPreparer } from '../../src/prepare/setup.js';
import { parseConfigText } from '../../src/config/load.js';
import { resolveSettings, type Settings } from '../../src/config/settings.js';
import { Daemon } from '../../src/daemon.js';
import { silentLogger } from '../../src/log.js';
import type { DiscoveryRoots } from '../../src/topology/types.js';
import type { UeventSource } from '../../src/topology/uevents.js';

/** The resource every benchmark advertises: the ConnectX-5 functions of `largeNode`. */
export const RESOURCE = 'ibm.com/cx5';

export const BENCH_CONFIG_YAML = `resources:
  - name: ${RESOURCE}
    selectors:
      vendors: ["15b3"]
      devices: ["1017"]
    preparation:
      mode: verify
`;

/**
 * Settings as the CLI resolves them from flags (so fields added to Settings
 * later get their defaults), with the bench configuration as the file.
 */
export function benchSettings(roots: DiscoveryRoots, dir: string, pollIntervalMs: number): Promise<Settings> {
  return resolveSettings(
    {
      'sysfs-root': roots.sysfsRoot,
      'dev-root': roots.devRoot,
      'device-plugin-dir': join(dir, 'dp'),
      'pod-resources-socket': join(dir, 'pr.sock'),
      'poll-interval': String(pollIntervalMs / 1000),
      'log-level': 'silent',
      simulate: true,
    },
    () => parseConfigText(BENCH_CONFIG_YAML, 'bench configuration'),
  );
}

export async function createDaemon(settings: Settings, uevents: UeventSource | null = null, ueventPollIntervalMs?: number): Promise<Daemon> {
  const logger = silentLogger();
  const { preparer } = await buildPreparer({ simulate: true, devRoot: settings.devRoot, resources: settings.resources, logger });
  return new Daemon(settings, {
    logger,
    uevents,
    ...(ueventPollIntervalMs !== undefined ? { ueventPollIntervalMs } : {}),
    ...(preparer ? { preparer } : {}),
  });
}
