#!/usr/bin/env node
// The command line (entered through entry.ts): `run` serves the kubelet, `demo` shows the plugin
// at work on the built-in simulated POWER node.
// First: signals during the loading of everything below are kept, not fatal.
import { takeEarlySignals } from './early-signals.js';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, type Logger } from '../log.js';
import { ConfigError, PluginError } from '../errors.js';
import { parseCommandLine, resolveSettings, settingLabel, usage, type ResolveOptions, type Settings } from '../config/settings.js';
import { Lifecycle, describeStartupFailure, probeListenProblem, type NamedPath } from './lifecycle.js';
import { checkDevicePluginDir } from './startup-checks.js';
import { Daemon, type DraDeps } from '../daemon.js';
import { routeGrpcLogs } from './grpc-logging.js';
import { YOUNG_GENERATION_ENV, youngGenerationCapped } from './young-generation.js';
import { buildPreparer } from '../prepare/setup.js';
import { createMetrics } from '../report/metrics.js';
import type { NodeReporter } from '../report/node-reporter.js';
import { startProbeServer, type ProbeServer } from '../report/http-server.js';
import { readFile } from 'node:fs/promises';
import { readCpuCapabilities } from '../report/cpuinfo.js';
import { capabilitiesOf } from '../prepare/capabilities.js';
import type { GroupVerification } from '../vfio/container-sequence.js';

// What a run does not use is not loaded: the Kubernetes client (tens of MiB)
// comes with node reporting or the DRA front end, the simulated node with
// --simulate, the demo with `demo`. Type-only imports above cost nothing.

async function packageVersion(): Promise<string> {
  try {
    const text = await readFile(new URL('../../package.json', import.meta.url), 'utf8');
    return (JSON.parse(text) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Node reporting needs a node name and a way to the API server. */
async function createReporter(settings: Settings, logger: Logger, metrics: ReturnType<typeof createMetrics>): Promise<NodeReporter | undefined> {
  if (!settings.nodeName) {
    logger.info('Node reporting is off: no node name (set NODE_NAME or --node-name)');
    return undefined;
  }
  if (!settings.kubeconfig && !process.env.KUBERNETES_SERVICE_HOST) {
    logger.info('Node reporting is off: not in a cluster and no --kubeconfig');
    return undefined;
  }
  const kubeconfig = settings.kubeconfig ?? undefined;
  const { NodeReporter, loadKubeConfig } = await import('../report/node-reporter.js');
  return new NodeReporter({
    kubeConfig: () => loadKubeConfig(kubeconfig),
    nodeName: settings.nodeName,
    logger,
    onStateChange: (status) => metrics.setApiReportingState(status.state),
    onRequestError: (err) => metrics.countApiRequestError(err.kind, err.operation),
  });
}

/** Where the simulated node keeps what it writes, unless the operator names a path. */
function simulatedPathDefaults(root: string): NonNullable<ResolveOptions['pathDefaults']> {
  return {
    devicePluginDir: join(root, 'device-plugins'),
    podResourcesSocket: join(root, 'pod-resources', 'kubelet.sock'),
    handoffHostDir: join(root, 'handoff'),
    cdiSpecDir: join(root, 'cdi'),
    pluginsRegistryDir: join(root, 'plugins_registry'),
    pluginsDir: join(root, 'plugins'),
  };
}

/** The simulated node's name when the operator gives none: the DRA pool is named after the node. */
const SIMULATED_NODE_NAME = 'power9-sim';

/**
 * The DRA front end's ways to the API server: claims to read, slices to
 * publish. The simulated node without a cluster gets the API server stand-in
 * on localhost, so the whole DRA side can be tried on any machine.
 */
async function draDeps(
  settings: Settings,
  logger: Logger,
  life: Lifecycle,
  platform: string | null,
  lastVerification: (group: number) => GroupVerification | undefined,
): Promise<DraDeps> {
  const nodeName = settings.nodeName;
  if (!nodeName) {
    throw new ConfigError('The DRA front end needs this node\'s name: set --node-name or NODE_NAME (the chart passes spec.nodeName)', ['node-name: required with --kubelet-api dra']);
  }
  let kubeConfig: () => import('@kubernetes/client-node').KubeConfig;
  if (settings.simulate && !settings.kubeconfig && !process.env.KUBERNETES_SERVICE_HOST) {
    const { startFakeApiServer } = await import('../simulate/api-server.js');
    const api = await life.step(startFakeApiServer(), (late) => late.close());
    life.defer('the API server stand-in', () => api.close());
    api.addNode(nodeName);
    logger.info({ url: api.url, node: nodeName }, 'No cluster: the simulated node publishes its ResourceSlices to an API server stand-in');
    kubeConfig = () => api.kubeConfig();
  } else {
    const kubeconfig = settings.kubeconfig ?? undefined;
    const { loadKubeConfig } = await import('../report/node-reporter.js');
    kubeConfig = () => loadKubeConfig(kubeconfig);
  }
  const { SlicePublisher } = await import('../dra/slice-publisher.js');
  const { apiClaimSource } = await import('../dra/claim-reader.js');
  return {
    claims: apiClaimSource({ kubeConfig }),
    slices: new SlicePublisher({
      driver: settings.dra.driverName,
      nodeName,
      platform: platform === 'powernv' || platform === 'pseries' ? platform : null,
      kubeConfig,
      logger,
    }),
    verification: (group) => {
      const v = lastVerification(group);
      return v ? { ...capabilitiesOf(v), defaultWindowSize: v.info.dma32WindowSize } : undefined;
    },
  };
}

/** The paths a start-up failure may be about, each with the setting that chose it. */
function pathsOf(settings: Settings, sources: ResolveOptions['sources']): NamedPath[] {
  const named: NamedPath[] = [
    { path: settings.devicePluginDir, label: settingLabel('device-plugin-dir', sources) },
    { path: settings.handoffHostDir, label: settingLabel('handoff-dir', sources) },
    { path: settings.podResourcesSocket, label: settingLabel('pod-resources-socket', sources) },
  ];
  if (settings.cdiSpecDir !== null) named.push({ path: settings.cdiSpecDir, label: settingLabel('cdi-spec-dir', sources) });
  if (settings.kubeletApi === 'dra') {
    named.push(
      { path: settings.dra.registryDir, label: settingLabel('plugins-registry-dir', sources) },
      { path: settings.dra.driverDir, label: settingLabel('plugins-dir', sources) },
      { path: settings.dra.cdiSpecDir, label: settingLabel('cdi-spec-dir', sources) },
    );
  }
  return named;
}

async function runDaemon(
  settings: Settings,
  logger: Logger,
  life: Lifecycle,
  sources: ResolveOptions['sources'],
  simulatedDir: string | null,
): Promise<number> {
  const dra = settings.kubeletApi === 'dra';
  if (simulatedDir !== null) {
    const [{ writeSysfsTree }, { builtinPowerNode }] = await Promise.all([import('../simulate/sysfs-tree.js'), import('../simulate/power-node.js')]);
    // Awaited, not abandoned on a signal: the tree is written into the directory the cleanup removes.
    const roots = await writeSysfsTree(simulatedDir, builtinPowerNode());
    life.signal.throwIfAborted();
    settings = { ...settings, sysfsRoot: roots.sysfsRoot, devRoot: roots.devRoot, nodeName: settings.nodeName ?? (dra ? SIMULATED_NODE_NAME : null) };
    logger.info(
      {
        root: simulatedDir,
        pluginDir: settings.devicePluginDir,
        podResourcesSocket: settings.podResourcesSocket,
        handoffDir: settings.handoffHostDir,
        cdiSpecDir: dra ? settings.dra.cdiSpecDir : settings.cdiSpecDir,
        ...(dra ? { registryDir: settings.dra.registryDir, driverDir: settings.dra.driverDir } : {}),
      },
      'Running on the simulated POWER node',
    );
  }
  // The simulated node's own directory has no kubelet to create it; one named by the operator is theirs.
  if (simulatedDir !== null && settings.devicePluginDir.startsWith(`${simulatedDir}/`)) {
    await life.step(mkdir(settings.devicePluginDir, { recursive: true }));
  }
  // A file is refused here; a missing directory is awaited (the plugin manager says so once).
  if (!dra) await life.step(checkDevicePluginDir(settings.devicePluginDir, settingLabel('device-plugin-dir', sources)));
  const metrics = createMetrics({ version: await life.step(packageVersion()) });
  const reporter = await createReporter(settings, logger, metrics);
  if (reporter) life.defer('node reporting', () => reporter.stop());
  // The simulated node is a POWER9 bare-metal server whatever the host is.
  const cpu = settings.simulate ? { powerGeneration: 'power9', platform: 'powernv' } : await life.step(readCpuCapabilities());
  reporter?.setCapabilities(cpu);
  // Bound once the daemon exists: a verification adds attributes to the published devices.
  let onVerifiedLate: (() => void) | null = null;
  const preparation = await life.step(
    buildPreparer({
      simulate: settings.simulate,
      devRoot: settings.devRoot,
      resources: settings.resources,
      logger,
      // With DRA a claim's own configuration may ask for any mode.
      allModes: dra,
      onVerified: (v: GroupVerification) => {
        reporter?.setCapabilities(capabilitiesOf(v));
        onVerifiedLate?.();
      },
      handoff: {
        hostDir: settings.handoffHostDir,
        containerDir: settings.handoffContainerDir,
        // With DRA, NodeUnprepareResources says when a claim's groups are free.
        podResourcesSocket: dra ? null : settings.podResourcesSocket,
      },
    }),
  );
  const draWays = dra ? await draDeps(settings, logger, life, cpu.platform ?? null, preparation.lastVerification) : null;
  const daemon = new Daemon(settings, {
    ...(draWays ? { dra: draWays } : {}),
    logger,
    metrics,
    ...(reporter ? { reporter } : {}),
    ...(preparation.preparer ? { preparer: preparation.preparer } : {}),
    handoff: preparation.handoff,
    ...(preparation.extendAllocation ? { extendAllocation: preparation.extendAllocation } : {}),
  });
  life.defer('the daemon', () => daemon.stop());
  if (daemon.dra) {
    const driver = daemon.dra;
    onVerifiedLate = () => driver.refresh();
  }
  if (settings.metricsPort !== null) {
    const host = settings.metricsBind;
    const port = settings.metricsPort;
    const probe = await life.step(
      startProbeServer({
        host,
        port,
        metrics,
        logger,
        readiness: () => ({
          discoveryDone: daemon.discovered,
          waitingFor: daemon.manager?.waitingFor() ?? null,
          resources: daemon.frontEnd.readiness(),
          ...(reporter ? { apiReporting: reporter.status() } : {}),
        }),
      }).catch((err: unknown) => {
        throw probeListenProblem(err, host, port, { port: settingLabel('metrics-port', sources), bind: settingLabel('metrics-bind', sources) });
      }),
      (late) => late.close(),
    );
    life.defer('the HTTP probe server', () => probe.close());
  }
  life.onReload(() => {
    daemon.refresh().catch((err: unknown) => logger.error({ err: (err as Error).message }, 'Rescan failed'));
  });
  const topology = await life.step(daemon.start());
  logger.info(
    {
      groups: topology.groups.size,
      resources: settings.resources.map((r) => r.name),
      kubeletApi: settings.kubeletApi,
      ...(dra ? { registryDir: settings.dra.registryDir, driverDir: settings.dra.driverDir } : { pluginDir: settings.devicePluginDir }),
    },
    'Plugin started',
  );
  const signal = await life.stopped();
  logger.info({ signal }, 'Shutting down');
  const failures = await life.cleanup();
  for (const failure of failures) logger.error({ err: failure }, 'Shutdown failed');
  return failures.length > 0 ? 1 : 0;
}

/** Start-up: every failure is one line naming the flag or file and the remedy, exit 2, and nothing left behind. */
export async function main(argv: readonly string[], life = new Lifecycle(process, takeEarlySignals)): Promise<number> {
  let logger: Logger | null = null;
  let namedPaths: NamedPath[] = [];
  try {
    const cli = parseCommandLine(argv, process.env);
    if (cli.values.help) {
      console.log(usage());
      return 0;
    }
    if (cli.command === 'demo') {
      // The demo cleans up after itself on its own terms; signals keep their default.
      life.dispose();
      const { runDemo } = await import('./demo.js');
      return await runDemo();
    }
    const simulate = cli.values.simulate === true;
    let simulatedRoot: string | null = null;
    if (simulate) {
      // Created first, removed last: every path the simulated node writes defaults to under it.
      simulatedRoot = await life.step(mkdtemp(join(tmpdir(), 'pvdp-sim-')), (late) => rm(late, { recursive: true, force: true }));
      const root = simulatedRoot;
      life.defer('the simulated node', () => rm(root, { recursive: true, force: true }));
    }
    const simulatedConfig = simulate ? (await import('../simulate/node-config.js')).simulatedNodeConfig : undefined;
    const settings = await life.step(
      resolveSettings(cli.values, simulatedConfig, {
        sources: cli.sources,
        signal: life.signal,
        ...(simulatedRoot !== null ? { pathDefaults: simulatedPathDefaults(simulatedRoot) } : {}),
      }),
    );
    namedPaths = pathsOf(settings, cli.sources);
    logger = createLogger({ level: settings.logLevel });
    routeGrpcLogs(logger);
    logger.debug({ capped: youngGenerationCapped(), variable: YOUNG_GENERATION_ENV }, 'V8 young generation');
    return await runDaemon(settings, logger, life, cli.sources, simulatedRoot);
  } catch (err) {
    const failures = await life.cleanup();
    for (const failure of failures) {
      if (logger) logger.error({ err: failure }, 'Cleanup failed');
      else console.error(`Cleanup failed: ${failure}`);
    }
    if (life.signal.aborted) {
      logger?.info({ signal: life.stopSignal }, 'Stopped during start-up');
      return failures.length > 0 ? 1 : 0;
    }
    const line = describeStartupFailure(err, namedPaths);
    logger?.error({ code: err instanceof PluginError ? err.code : (err as NodeJS.ErrnoException).code }, line.split('\n')[0]!);
    console.error(line);
    return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Give the asynchronous log destination a moment to flush, then leave.
    setTimeout(() => process.exit(code), 50).unref();
  },
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
