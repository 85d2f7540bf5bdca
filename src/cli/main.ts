#!/usr/bin/env node
// Command-line entry point: `run` serves the kubelet, `demo` shows the plugin
// at work on the built-in simulated POWER node.
import { mkdtemp, rm } from 'node:fs/promises';
import { createLogger, type Logger } from '../log.js';
import { ConfigError, PluginError } from '../errors.js';
import { parseCommandLine, resolveSettings, usage, type Settings } from '../config/settings.js';
import { Daemon, type DraDeps } from '../daemon.js';
import { apiClaimSource } from '../dra/claim-reader.js';
import { routeGrpcLogs } from './grpc-logging.js';
import { simulatedNodeConfig } from '../simulate/node-config.js';
import { writeSysfsTree } from '../simulate/sysfs-tree.js';
import { builtinPowerNode } from '../simulate/power-node.js';
import { runDemo } from './demo.js';
import { buildPreparer } from './preparation.js';
import { createMetrics } from '../report/metrics.js';
import { NodeReporter, loadKubeConfig } from '../report/node-reporter.js';
import { startProbeServer, type ProbeServer } from '../report/http-server.js';
import { readFile } from 'node:fs/promises';
import { readCpuCapabilities } from '../report/cpuinfo.js';
import { capabilitiesOf } from '../prepare/capabilities.js';
import type { GroupVerification } from '../vfio/container-sequence.js';

async function packageVersion(): Promise<string> {
  try {
    const text = await readFile(new URL('../../package.json', import.meta.url), 'utf8');
    return (JSON.parse(text) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Node reporting needs a node name and a way to the API server. */
function createReporter(settings: Settings, logger: Logger, metrics: ReturnType<typeof createMetrics>): NodeReporter | undefined {
  if (!settings.nodeName) {
    logger.info('Node reporting is off: no node name (set NODE_NAME or --node-name)');
    return undefined;
  }
  if (!settings.kubeconfig && !process.env.KUBERNETES_SERVICE_HOST) {
    logger.info('Node reporting is off: not in a cluster and no --kubeconfig');
    return undefined;
  }
  const kubeconfig = settings.kubeconfig ?? undefined;
  return new NodeReporter({
    kubeConfig: () => loadKubeConfig(kubeconfig),
    nodeName: settings.nodeName,
    logger,
    onStateChange: (status) => metrics.setApiReportingState(status.state),
    onRequestError: (err) => metrics.countApiRequestError(err.kind, err.operation),
  });
}

/** The DRA front end's ways to the API server: claims to read, slices to publish. */
async function draDeps(
  settings: Settings,
  logger: Logger,
  platform: string | null,
  lastVerification: (group: number) => GroupVerification | undefined,
): Promise<DraDeps> {
  if (!settings.nodeName) {
    throw new ConfigError('The DRA front end needs this node\'s name: set --node-name or NODE_NAME (the chart passes spec.nodeName)', ['node-name: required with --kubelet-api dra']);
  }
  const kubeconfig = settings.kubeconfig ?? undefined;
  const kubeConfig = () => loadKubeConfig(kubeconfig);
  const { SlicePublisher } = await import('../dra/slice-publisher.js');
  return {
    claims: apiClaimSource({ kubeConfig }),
    slices: new SlicePublisher({
      driver: settings.dra.driverName,
      nodeName: settings.nodeName,
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

async function runDaemon(settings: Settings, logger: Logger): Promise<number> {
  let simulatedDir: string | null = null;
  if (settings.simulate) {
    simulatedDir = await mkdtemp('/tmp/pvdp-sim-');
    const roots = await writeSysfsTree(simulatedDir, builtinPowerNode());
    settings = { ...settings, sysfsRoot: roots.sysfsRoot, devRoot: roots.devRoot };
    logger.info({ root: simulatedDir }, 'Running on the simulated POWER node');
  }
  const metrics = createMetrics({ version: await packageVersion() });
  const reporter = createReporter(settings, logger, metrics);
  // The simulated node is a POWER9 bare-metal server whatever the host is.
  const cpu = settings.simulate ? { powerGeneration: 'power9', platform: 'powernv' } : await readCpuCapabilities();
  reporter?.setCapabilities(cpu);
  const dra = settings.kubeletApi === 'dra';
  // Bound once the daemon exists: a verification adds attributes to the published devices.
  let onVerifiedLate: (() => void) | null = null;
  const preparation = await buildPreparer({
    simulate: settings.simulate,
    devRoot: settings.devRoot,
    resources: settings.resources,
    logger,
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
  });
  const daemon = new Daemon(settings, {
    ...(dra ? { dra: await draDeps(settings, logger, cpu.platform ?? null, preparation.lastVerification) } : {}),
    logger,
    metrics,
    ...(reporter ? { reporter } : {}),
    ...(preparation.preparer ? { preparer: preparation.preparer } : {}),
    handoff: preparation.handoff,
    ...(preparation.extendAllocation ? { extendAllocation: preparation.extendAllocation } : {}),
  });
  let probe: ProbeServer | null = null;
  if (settings.metricsPort !== null) {
    probe = await startProbeServer({
      host: settings.metricsBind,
      port: settings.metricsPort,
      metrics,
      logger,
      readiness: () => ({
        discoveryDone: daemon.discovered,
        resources: daemon.frontEnd.readiness(),
        ...(reporter ? { apiReporting: reporter.status() } : {}),
      }),
    });
  }
  const done = new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'Shutting down');
      daemon
        .stop()
        .then(() => probe?.close())
        .then(async () => {
          if (simulatedDir) await rm(simulatedDir, { recursive: true, force: true });
          resolve(0);
        })
        .catch((err: unknown) => {
          logger.error({ err: (err as Error).message }, 'Shutdown failed');
          resolve(1);
        });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  if (daemon.dra) {
    const driver = daemon.dra;
    onVerifiedLate = () => driver.refresh();
  }
  process.on('SIGHUP', () => {
    daemon.refresh().catch((err: unknown) => logger.error({ err: (err as Error).message }, 'Rescan failed'));
  });
  const topology = await daemon.start();
  logger.info(
    { groups: topology.groups.size, resources: settings.resources.map((r) => r.name), pluginDir: settings.devicePluginDir },
    'Plugin started',
  );
  return done;
}

export async function main(argv: readonly string[]): Promise<number> {
  const cli = parseCommandLine(argv, process.env);
  if (cli.values.help) {
    console.log(usage());
    return 0;
  }
  if (cli.command === 'demo') {
    return runDemo();
  }
  const simulate = cli.values.simulate === true;
  const settings = await resolveSettings(cli.values, simulate ? simulatedNodeConfig : undefined);
  const logger = createLogger({ level: settings.logLevel });
  routeGrpcLogs(logger);
  return runDaemon(settings, logger);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Give the asynchronous log destination a moment to flush, then leave.
    setTimeout(() => process.exit(code), 50).unref();
  },
  (err: unknown) => {
    if (err instanceof PluginError) {
      console.error(err.message);
      process.exit(2);
    }
    console.error(err);
    process.exit(1);
  },
);
