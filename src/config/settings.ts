// Effective settings: command-line flags (kebab-case) win over environment
// variables (PVDP_ + the flag in upper snake case), which win over the
// configuration file, which wins over the defaults.
import { parseArgs } from 'node:util';
import { isAbsolute, join, resolve } from 'node:path';
import { ConfigError, UsageError } from '../errors.js';
import { loadConfigFile } from './load.js';
import type { FileConfig, ResourceConfig } from './schema.js';
import { DEFAULT_DEVICE_PLUGIN_DIR, DEFAULT_POD_RESOURCES_SOCKET, MAX_SOCKET_PATH, socketPathProblem } from '../kubelet/socket-path.js';
import { HANDOFF_SOCKET_DIR, HANDOFF_SOCKET_NAME } from '../handoff/protocol.js';
import { DEFAULT_HANDOFF_CONTAINER_DIR, DEFAULT_HANDOFF_HOST_DIR, containerDirFor } from '../handoff/paths.js';
import { cdiKindProblem } from '../cdi/names.js';
import {
  DEFAULT_DRIVER_NAME,
  DEFAULT_PLUGINS_DIR,
  DEFAULT_PLUGINS_REGISTRY_DIR,
  DRA_SOCKET_NAME,
  driverNameProblem,
  registrationSocketName,
} from '../dra/constants.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Which kubelet API serves the devices on this node. */
export type KubeletApi = 'device-plugin' | 'dra';

/** The DRA front end's settings (used when kubeletApi is dra). */
export interface DraSettings {
  /** ResourceSlice `spec.driver`, the kubelet plugin's name and the CDI vendor. */
  driverName: string;
  /** The kubelet's plugin registry directory (registration socket). */
  registryDir: string;
  /** The driver's own directory: `<plugins dir>/<driver>` (service socket, checkpoint). */
  driverDir: string;
  /** Directory of the per-claim CDI specs. */
  cdiSpecDir: string;
}

export interface Settings {
  configFile: string | null;
  /** The kubelet front end: the device plugin API or Dynamic Resource Allocation. */
  kubeletApi: KubeletApi;
  dra: DraSettings;
  sysfsRoot: string;
  /** Root under which `proc/` lives (managed binding's in-use checks); default `/`. */
  procRoot?: string;
  devRoot: string;
  devicePluginDir: string;
  podResourcesSocket: string;
  pollIntervalMs: number;
  logLevel: LogLevel;
  /** Run on the built-in simulated POWER node instead of the host's sysfs. */
  simulate: boolean;
  /** Directory of CDI specs when CDI is on, else null. */
  cdiSpecDir: string | null;
  /** This node's name, for node reporting (the DaemonSet passes spec.nodeName). */
  nodeName: string | null;
  /** Kubeconfig file; null means in-cluster configuration. */
  kubeconfig: string | null;
  /** Port of /metrics, /healthz and /readyz; 0 picks a free port, null turns the server off. */
  metricsPort: number | null;
  metricsBind: string;
  /** Host directory of the handoff mode's per-allocation directories. */
  handoffHostDir: string;
  /** Where a container sees its own handoff directory. */
  handoffContainerDir: string;
  resources: ResourceConfig[];
}

/** Flags, their types and help; each also reads PVDP_<NAME> from the environment. */
export const FLAGS = {
  config: { type: 'string', help: 'YAML configuration file (resources, selectors, preparation modes)' },
  'sysfs-root': { type: 'string', help: 'Root under which sys/ is read (default /)' },
  'dev-root': { type: 'string', help: 'Root under which dev/vfio is read (default /)' },
  'device-plugin-dir': { type: 'string', help: `Kubelet device-plugins directory (default ${DEFAULT_DEVICE_PLUGIN_DIR})` },
  'pod-resources-socket': { type: 'string', help: `Kubelet PodResources socket (default ${DEFAULT_POD_RESOURCES_SOCKET})` },
  'poll-interval': {
    type: 'string',
    help: 'Seconds between safety rescans of sysfs (default 10; while kernel uevents arrive, at least 60)',
  },
  'log-level': { type: 'string', help: 'fatal, error, warn, info, debug, trace or silent (default info)' },
  simulate: { type: 'boolean', help: 'Run on the built-in simulated POWER node' },
  cdi: { type: 'boolean', help: 'Write CDI specs and name CDI devices in Allocate (default off)' },
  'node-name': { type: 'string', help: 'This node\'s name for node reporting (default: NODE_NAME)' },
  kubeconfig: { type: 'string', help: 'Kubeconfig for node reporting (default: in-cluster)' },
  'metrics-port': { type: 'string', help: 'Port for /metrics, /healthz and /readyz; "off" disables (default 9101)' },
  'metrics-bind': { type: 'string', help: 'Address the metrics port listens on (default 0.0.0.0)' },
  'handoff-dir': { type: 'string', help: `Host directory for handoff preparations (default ${DEFAULT_HANDOFF_HOST_DIR})` },
  'handoff-container-dir': {
    type: 'string',
    help: `Where a container sees its handoff directory (default ${DEFAULT_HANDOFF_CONTAINER_DIR})`,
  },
  'cdi-spec-dir': { type: 'string', help: 'Directory for CDI specs (default /var/run/cdi)' },
  'kubelet-api': { type: 'string', help: 'Kubelet API to serve: device-plugin or dra (default device-plugin)' },
  'driver-name': { type: 'string', help: `DRA driver name (default ${DEFAULT_DRIVER_NAME})` },
  'plugins-registry-dir': { type: 'string', help: `Kubelet plugin registry directory for DRA (default ${DEFAULT_PLUGINS_REGISTRY_DIR})` },
  'plugins-dir': { type: 'string', help: `Kubelet plugins directory for DRA; the driver uses <dir>/<driver name> (default ${DEFAULT_PLUGINS_DIR})` },
  help: { type: 'boolean', help: 'Show this help' },
} as const;

export type FlagName = keyof typeof FLAGS;

export function envNameOf(flag: string): string {
  return `PVDP_${flag.toUpperCase().replace(/-/g, '_')}`;
}

export function usage(): string {
  const lines = Object.entries(FLAGS).map(([name, spec]) => {
    const arg = spec.type === 'string' ? ` <value>` : '';
    const env = name === 'help' ? '' : ` [env ${envNameOf(name)}]`;
    return `  --${name}${arg}`.padEnd(34) + `${spec.help}${env}`;
  });
  return [
    'Usage: power-vfio-device-plugin [run|demo] [flags]',
    '',
    '  run    Serve the kubelet (default)',
    '  demo   Run on the simulated POWER node with a built-in kubelet and show what happens',
    '',
    ...lines,
  ].join('\n');
}

export interface ParsedCommandLine {
  command: 'run' | 'demo';
  values: Partial<Record<FlagName, string | boolean>>;
  /** Where each value came from, so an error names what the operator wrote. */
  sources: Partial<Record<FlagName, 'flag' | 'env'>>;
}

export function parseCommandLine(argv: readonly string[], env: NodeJS.ProcessEnv): ParsedCommandLine {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: Object.fromEntries(Object.entries(FLAGS).map(([k, v]) => [k, { type: v.type }])) as Record<
        string,
        { type: 'string' | 'boolean' }
      >,
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage()}`);
  }
  const [command = 'run', ...extra] = parsed.positionals;
  if (command !== 'run' && command !== 'demo') throw new UsageError(`Unknown command "${command}"\n\n${usage()}`);
  if (extra.length > 0) throw new UsageError(`Unexpected arguments: ${extra.join(' ')}`);
  const values: Partial<Record<FlagName, string | boolean>> = {};
  const sources: Partial<Record<FlagName, 'flag' | 'env'>> = {};
  for (const name of Object.keys(FLAGS) as FlagName[]) {
    const fromFlag = parsed.values[name];
    if (fromFlag !== undefined) {
      values[name] = fromFlag as string | boolean;
      sources[name] = 'flag';
      continue;
    }
    if (name === 'help') continue;
    const fromEnv = env[envNameOf(name)];
    if (fromEnv === undefined || fromEnv === '') continue;
    if (FLAGS[name].type === 'boolean') {
      if (!/^(1|0|true|false|yes|no)$/i.test(fromEnv)) {
        throw new UsageError(`${envNameOf(name)}=${fromEnv}: expected true or false`);
      }
      values[name] = /^(1|true|yes)$/i.test(fromEnv);
    } else {
      values[name] = fromEnv;
    }
    sources[name] = 'env';
  }
  return { command, values, sources };
}

/** Options of resolveSettings beyond the values themselves. */
export interface ResolveOptions {
  /** Where each value came from (parseCommandLine's `sources`); errors name the variable or the flag. */
  sources?: ParsedCommandLine['sources'];
  /**
   * Defaults of the paths the daemon writes or polls, used when neither a
   * flag, the environment nor the file names them (the simulated node keeps
   * them under its temporary root).
   */
  pathDefaults?: Partial<Pick<Settings, 'devicePluginDir' | 'podResourcesSocket' | 'handoffHostDir'>> & {
    cdiSpecDir?: string;
    /** DRA: the plugin registry directory and the parent of the driver's directory. */
    pluginsRegistryDir?: string;
    pluginsDir?: string;
  };
  /** Cancels reading the configuration file (a signal during start-up). */
  signal?: AbortSignal;
}

/** How an error names a setting: the flag, or the environment variable it came from. */
export function settingLabel(name: FlagName, sources: ResolveOptions['sources']): string {
  return sources?.[name] === 'env' ? envNameOf(name) : `--${name}`;
}

// Decimal only: Number() would also take "0x10", "1e3", " " (as 0) and "".
const DECIMAL_SECONDS = /^[0-9]+(\.[0-9]+)?$/;
const DECIMAL_PORT = /^[0-9]{1,5}$/;

function positiveSeconds(text: string, what: string): number {
  const n = DECIMAL_SECONDS.test(text) ? Number(text) : Number.NaN;
  // At least 0.1 s: a poll interval that rounds to 0 ms would rescan back to back.
  if (!Number.isFinite(n) || n < 0.1 || n > 3600) {
    throw new UsageError(`${what}: "${text}" is not a number of seconds in [0.1, 3600]: write decimal seconds, for example 10 or 2.5`);
  }
  return n;
}

/** A TCP port in decimal, or null for "off". */
export function parseMetricsPort(text: string, what: string): number | null {
  if (text === 'off') return null;
  const port = DECIMAL_PORT.test(text) ? Number(text) : Number.NaN;
  if (!Number.isInteger(port) || port > 65535) {
    throw new UsageError(`${what}: "${text}" is not a port number: write a decimal port in [0, 65535] (0 picks a free one) or "off"`);
  }
  return port;
}

/**
 * Combines flags, environment and file. `fallbackConfig` supplies resources
 * when no file is named (the simulated node's built-in configuration).
 */
export async function resolveSettings(
  values: ParsedCommandLine['values'],
  fallbackConfig?: () => FileConfig,
  options: ResolveOptions = {},
): Promise<Settings> {
  const label = (name: FlagName) => settingLabel(name, options.sources);
  const paths = options.pathDefaults ?? {};
  const configFile = typeof values.config === 'string' ? values.config : null;
  const simulate = values.simulate === true;
  let file: FileConfig | undefined;
  if (configFile !== null) {
    file = await loadConfigFile(configFile, { setting: label('config'), ...(options.signal ? { signal: options.signal } : {}) });
  } else if (fallbackConfig) {
    file = fallbackConfig();
  }
  if (!file) {
    throw new ConfigError('No configuration: pass --config <file> (or PVDP_CONFIG) naming the resources to advertise', [
      'config: required',
    ]);
  }
  const str = (name: FlagName) => (typeof values[name] === 'string' ? (values[name] as string) : undefined);
  const level = str('log-level') ?? file.logLevel ?? 'info';
  if (!LOG_LEVELS.includes(level as LogLevel)) {
    throw new UsageError(`${label('log-level')}: "${level}" is not one of ${LOG_LEVELS.join(', ')}`);
  }
  // Normal, absolute form: socket names are derived from it and the kubelet gets their base names.
  const devicePluginDir = resolve(str('device-plugin-dir') ?? file.devicePluginDir ?? paths.devicePluginDir ?? DEFAULT_DEVICE_PLUGIN_DIR);
  const socketProblem = socketPathProblem(devicePluginDir, file.resources.map((r) => r.name));
  if (socketProblem) throw new ConfigError(`Invalid ${label('device-plugin-dir')}: ${socketProblem}`, [`device-plugin-dir: ${socketProblem}`]);
  const handoffHostDir = resolve(str('handoff-dir') ?? file.handoff?.hostDir ?? paths.handoffHostDir ?? DEFAULT_HANDOFF_HOST_DIR);
  // Each preparation's socket lives at <dir>/alloc-<16 hex>/sock/handoff.sock: refuse at start, not per pod.
  const handoffSocket = join(handoffHostDir, `alloc-${'0'.repeat(16)}`, HANDOFF_SOCKET_DIR, HANDOFF_SOCKET_NAME);
  if (file.resources.some((r) => r.preparation.mode === 'handoff') && Buffer.byteLength(handoffSocket) > MAX_SOCKET_PATH) {
    const problem = `handoff sockets under ${handoffHostDir} would be ${Buffer.byteLength(handoffSocket)} bytes long; unix socket paths are limited to ${MAX_SOCKET_PATH}: use a directory of at most ${MAX_SOCKET_PATH - (Buffer.byteLength(handoffSocket) - Buffer.byteLength(handoffHostDir))} bytes`;
    throw new ConfigError(`Invalid ${label('handoff-dir')}: ${problem}`, [`handoff-dir: ${problem}`]);
  }
  const handoffContainerDir = str('handoff-container-dir') ?? file.handoff?.containerDir ?? DEFAULT_HANDOFF_CONTAINER_DIR;
  if (!isAbsolute(handoffContainerDir)) {
    throw new UsageError(`${label('handoff-container-dir')}: "${handoffContainerDir}" must be an absolute path`);
  }
  // The path the pod connects to must fit too: <containerDir>/<resource>/handoff.sock.
  for (const r of file.resources.filter((x) => x.preparation.mode === 'handoff')) {
    const inPod = join(containerDirFor(handoffContainerDir, r.name), HANDOFF_SOCKET_NAME);
    if (Buffer.byteLength(inPod) > MAX_SOCKET_PATH) {
      const problem = `the handoff socket of ${r.name} would be ${inPod} in the container, ${Buffer.byteLength(inPod)} bytes; unix socket paths are limited to ${MAX_SOCKET_PATH}: use a shorter handoff container directory or resource name`;
      throw new ConfigError(`Invalid handoff settings: ${problem}`, [`handoff.containerDir: ${problem}`]);
    }
  }
  const metricsPort = parseMetricsPort(str('metrics-port') ?? '9101', label('metrics-port'));
  const dra = resolveDraSettings(str, file, label, paths);
  const managed = file.resources.findIndex((r) => r.binding?.mode === 'managed');
  if (managed >= 0 && dra.kubeletApi !== 'dra') {
    const problem = `${file.resources[managed]!.name} asks for managed binding, which needs the DRA front end (--kubelet-api dra): the device plugin API has no prepare step to rebind in`;
    throw new ConfigError(`Invalid configuration: ${problem}`, [`resources[${managed}].binding.mode: ${problem}`]);
  }
  const pollSeconds = str('poll-interval') !== undefined ? positiveSeconds(str('poll-interval')!, label('poll-interval')) : (file.pollIntervalSeconds ?? 10);
  return {
    configFile,
    kubeletApi: dra.kubeletApi,
    dra: dra.settings,
    sysfsRoot: str('sysfs-root') ?? file.sysfsRoot ?? '/',
    procRoot: file.procRoot ?? '/',
    devRoot: str('dev-root') ?? file.devRoot ?? '/',
    devicePluginDir,
    podResourcesSocket: str('pod-resources-socket') ?? file.podResourcesSocket ?? paths.podResourcesSocket ?? DEFAULT_POD_RESOURCES_SOCKET,
    pollIntervalMs: Math.round(pollSeconds * 1000),
    logLevel: level as LogLevel,
    simulate,
    cdiSpecDir: (values.cdi ?? file.cdi?.enabled ?? false) ? (str('cdi-spec-dir') ?? file.cdi?.specDir ?? paths.cdiSpecDir ?? '/var/run/cdi') : null,
    nodeName: str('node-name') ?? (process.env.NODE_NAME || null),
    kubeconfig: str('kubeconfig') ?? null,
    metricsPort,
    metricsBind: str('metrics-bind') ?? '0.0.0.0',
    handoffHostDir,
    handoffContainerDir,
    resources: file.resources,
  };
}

/** The front-end choice and the DRA paths; socket paths are checked against the kernel's limit here, not at the first kubelet call. */
function resolveDraSettings(
  str: (name: FlagName) => string | undefined,
  file: FileConfig,
  label: (name: FlagName) => string,
  paths: NonNullable<ResolveOptions['pathDefaults']>,
): { kubeletApi: KubeletApi; settings: DraSettings } {
  const api = str('kubelet-api') ?? file.kubeletApi ?? 'device-plugin';
  if (api !== 'device-plugin' && api !== 'dra') {
    throw new UsageError(`${label('kubelet-api')}: "${api}" is not one of device-plugin, dra`);
  }
  const driverName = str('driver-name') ?? file.dra?.driverName ?? DEFAULT_DRIVER_NAME;
  // The driver name is also the vendor of the per-claim CDI specs (`<driver>/vfio=<device>`).
  const nameProblem = driverNameProblem(driverName) ?? cdiKindProblem(`${driverName}/vfio`);
  if (nameProblem) throw new ConfigError(`Invalid ${label('driver-name')}: ${nameProblem}`, [`driver-name: ${nameProblem}`]);
  const registryDir = resolve(str('plugins-registry-dir') ?? file.dra?.pluginsRegistryDir ?? paths.pluginsRegistryDir ?? DEFAULT_PLUGINS_REGISTRY_DIR);
  const driverDir = join(resolve(str('plugins-dir') ?? file.dra?.pluginsDir ?? paths.pluginsDir ?? DEFAULT_PLUGINS_DIR), driverName);
  const cdiSpecDir = resolve(str('cdi-spec-dir') ?? file.cdi?.specDir ?? paths.cdiSpecDir ?? '/var/run/cdi');
  if (api === 'dra') {
    for (const [flag, socket] of [
      ['plugins-registry-dir', join(registryDir, registrationSocketName(driverName))],
      ['plugins-dir', join(driverDir, DRA_SOCKET_NAME)],
    ] as const) {
      if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
        const problem = `the socket path ${socket} is ${Buffer.byteLength(socket)} bytes; unix socket paths are limited to ${MAX_SOCKET_PATH}: use a shorter directory`;
        throw new ConfigError(`Invalid ${label(flag)}: ${problem}`, [`${flag}: ${problem}`]);
      }
    }
  }
  return { kubeletApi: api, settings: { driverName, registryDir, driverDir, cdiSpecDir } };
}
