// The chart renders, lints and validates for its default values and for every
// realistic values file in charts/power-vfio-device-plugin/ci/, and the
// configuration file it renders is one the plugin's own parser accepts.
import { basename, join } from 'node:path';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseConfig, parseConfigText } from '../../src/config/load.js';
import { FLAGS, envNameOf, parseCommandLine, resolveSettings } from '../../src/config/settings.js';
import { pciResourceEnvName, vfioGroupsEnvName } from '../../src/inventory/advertised.js';
import { HANDOFF_SOCKET_DIR, HANDOFF_SOCKET_NAME } from '../../src/handoff/protocol.js';
import { MAX_SOCKET_PATH } from '../../src/kubelet/socket-path.js';
import {
  CLUSTER_SCOPED,
  NAMESPACE,
  RELEASE,
  chartDir,
  ciValuesDir,
  ciValuesFiles,
  find,
  helmSetup,
  pluginSettings,
  renderChart,
  runHelm,
  validateObject,
  type KubeObject,
} from './chart-helpers.js';

const setup = helmSetup();

interface Container {
  name: string;
  image: string;
  args?: string[];
  env: { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[];
  ports: { name: string; containerPort: number }[];
  livenessProbe?: { httpGet: { path: string; port: string | number } };
  readinessProbe?: { httpGet: { path: string; port: string | number } };
  securityContext: { privileged?: boolean; runAsUser?: number; readOnlyRootFilesystem?: boolean };
  volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  configMap?: { name: string };
  emptyDir?: object;
}
interface DaemonSetShape extends KubeObject {
  spec: {
    selector: { matchLabels: Record<string, string> };
    updateStrategy: { type: string; rollingUpdate: { maxUnavailable: number | string; maxSurge: number | string } };
    template: {
      metadata: { labels: Record<string, string>; annotations: Record<string, string> };
      spec: {
        serviceAccountName: string;
        priorityClassName: string;
        nodeSelector?: Record<string, string>;
        tolerations?: object[];
        affinity?: object;
        containers: Container[];
        volumes: Volume[];
      };
    };
  };
}
interface ConfigMapShape extends KubeObject {
  data: Record<string, string>;
}

const KNOWN_ENV = new Set(Object.keys(FLAGS).filter((f) => f !== 'help').map(envNameOf));

/** Helm's merge of values: maps merge key by key, lists and scalars replace, null deletes. */
function mergeValues(base: any, override: any): any {
  if (override === null) return undefined;
  if (typeof base !== 'object' || base === null || Array.isArray(base)) return override;
  if (typeof override !== 'object' || Array.isArray(override)) return override;
  const out: Record<string, any> = { ...base };
  for (const [k, v] of Object.entries(override)) {
    const merged = mergeValues(base[k], v);
    if (merged === undefined) delete out[k];
    else out[k] = merged;
  }
  return out;
}

function valuesOf(file: string | undefined): Record<string, any> {
  const defaults = parse(readFileSync(`${chartDir}/values.yaml`, 'utf8'));
  return file ? mergeValues(defaults, parse(readFileSync(file, 'utf8')) ?? {}) : defaults;
}

function container(ds: DaemonSetShape): Container {
  return ds.spec.template.spec.containers[0]!;
}
function env(ds: DaemonSetShape, name: string): string | undefined {
  return container(ds).env.find((e) => e.name === name)?.value;
}
function mount(ds: DaemonSetShape, path: string) {
  const m = container(ds).volumeMounts.find((v) => v.mountPath === path);
  if (!m) throw new Error(`No volume mounted at ${path}`);
  const volume = ds.spec.template.spec.volumes.find((v) => v.name === m.name);
  if (!volume) throw new Error(`Mount ${m.name} has no volume`);
  return { mount: m, volume };
}

/** The rendered config file through the plugin's own parser, and its raw cdi and handoff sections. */
function parseRenderedConfig(text: string) {
  const raw = parse(text) as Record<string, unknown>;
  return { config: parseConfigText(text, 'rendered config'), cdi: raw.cdi, handoff: raw.handoff };
}

const scratch = mkdtempSync('/tmp/pvdp-chart-');
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** The plugin's effective settings in the rendered pod (file and PVDP_* env through its own parsers). */
function settingsOf(objects: KubeObject[], name: string) {
  return pluginSettings(objects, join(scratch, `${name}.yaml`));
}

const cases: [string, string | undefined][] = [
  ['default values', undefined],
  ...ciValuesFiles().map((f): [string, string] => [`ci/${basename(f)}`, f]),
];

describe.skipIf(!setup.helm)(`chart with ${setup.version ?? 'helm'}`, () => {
  it('has realistic values files to test (GPUs, NVMe, ConnectX VFs, FPGAs, several resources, monitoring, DRA)', () => {
    const names = ciValuesFiles().map((f) => basename(f));
    for (const expected of ['gpus', 'nvme', 'connectx', 'fpgas', 'several-resources-monitoring', 'simulate', 'handoff', 'dra']) {
      expect(names.some((n) => n.startsWith(expected)), `ci/${expected}*.yaml`).toBe(true);
    }
  });

  describe.each(cases)('%s', (_label, file) => {
    const files = file ? [file] : [];
    const values = valuesOf(file);

    it('passes helm lint --strict', () => {
      const run = runHelm(['lint', '--strict', chartDir, '--namespace', NAMESPACE, ...files.flatMap((f) => ['-f', f])]);
      expect(run.status, run.stdout + run.stderr).toBe(0);
      expect(run.stdout).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    });

    it('renders only objects that validate against their Kubernetes schemas', () => {
      const objects = renderChart(files);
      expect(objects.length).toBeGreaterThanOrEqual(2);
      for (const obj of objects) {
        expect(() => validateObject(obj), `${obj.kind}/${obj.metadata.name}`).not.toThrow();
        if (!CLUSTER_SCOPED.has(obj.kind)) {
          const expectedNs = obj.kind === 'ServiceMonitor' ? values.metrics?.serviceMonitor?.namespace || NAMESPACE : NAMESPACE;
          expect(obj.metadata.namespace, `${obj.kind} namespace`).toBe(expectedNs);
        }
      }
    });

    it("renders a config file the plugin's parser accepts, with exactly the resources of the values", () => {
      const objects = renderChart(files);
      const cm = find<ConfigMapShape>(objects, 'ConfigMap');
      expect(Object.keys(cm.data)).toEqual(['config.yaml']);
      const { config, cdi, handoff } = parseRenderedConfig(cm.data['config.yaml']!);
      // Both sides through the project's parser: the chart dropped, added and re-typed nothing.
      // Simulated, the file names no host directory: the plugin keeps them under its temporary root.
      const cdiValues = values.simulate ? { enabled: values.cdi.enabled } : { enabled: values.cdi.enabled, specDir: values.cdi.specDir };
      const handoffValues = values.simulate
        ? { containerDir: values.handoff.containerDir }
        : { hostDir: values.handoff.hostDir, containerDir: values.handoff.containerDir };
      expect(cdi).toEqual(cdiValues);
      expect(handoff).toEqual(handoffValues);
      expect(config).toEqual(parseConfig({ resources: values.config.resources, handoff: handoffValues, cdi: cdiValues }, 'values'));
      // The DaemonSet reads the file where the ConfigMap is mounted.
      const ds = find<DaemonSetShape>(objects, 'DaemonSet');
      const { mount: m, volume } = mount(ds, '/etc/power-vfio-device-plugin');
      expect(volume.configMap?.name).toBe(cm.metadata.name);
      expect(m.readOnly).toBe(true);
      expect(env(ds, 'PVDP_CONFIG')).toBe('/etc/power-vfio-device-plugin/config.yaml');
    });

    it('sets only PVDP_* variables that are flags of the plugin', () => {
      const ds = find<DaemonSetShape>(renderChart(files), 'DaemonSet');
      const names = container(ds).env.map((e) => e.name).filter((n) => n.startsWith('PVDP_'));
      expect(names.length).toBeGreaterThan(5);
      for (const name of names) expect(KNOWN_ENV.has(name), name).toBe(true);
      expect(env(ds, 'PVDP_LOG_LEVEL')).toBe(values.logLevel);
      expect(Number(env(ds, 'PVDP_POLL_INTERVAL'))).toBe(values.pollIntervalSeconds);
      expect(Number(env(ds, 'PVDP_METRICS_PORT'))).toBe(values.metrics.port);
      expect(env(ds, 'PVDP_SIMULATE')).toBe(values.simulate ? 'true' : undefined);
    });

    it.skipIf(values.simulate)('mounts the handoff host directory at the same path in the plugin as on the host, and the plugin uses it', async () => {
      const objects = renderChart(files);
      const ds = find<DaemonSetShape>(objects, 'DaemonSet');
      const hostDir = values.handoff.hostDir as string;
      // Allocate returns the plugin's path of each per-allocation directory as the host path.
      const { mount: m, volume } = mount(ds, hostDir);
      expect(volume.hostPath).toEqual({ path: hostDir, type: 'DirectoryOrCreate' });
      expect(m.readOnly).toBeFalsy();
      expect(env(ds, 'PVDP_HANDOFF_DIR')).toBe(hostDir);
      const settings = await settingsOf(objects, basename(file ?? 'default'));
      expect(settings.handoffHostDir).toBe(hostDir);
      expect(settings.handoffContainerDir).toBe(values.handoff.containerDir);
      expect(settings.metricsPort).toBe(values.metrics.port);
      expect(settings.cdiSpecDir).toBe(values.cdi.enabled ? values.cdi.specDir : null);
      // The longest socket the plugin makes there fits a unix socket path.
      expect(Buffer.byteLength(join(hostDir, 'alloc-0123456789abcdef', HANDOFF_SOCKET_DIR, HANDOFF_SOCKET_NAME))).toBeLessThanOrEqual(MAX_SOCKET_PATH);
      if (values.cdi.enabled) expect(mount(ds, values.cdi.specDir).volume.hostPath?.path).toBe(values.cdi.specDir);
    });

    it.runIf(values.simulate)('simulated, mounts no host path but the device-plugins directory, and the plugin writes and polls only under its temporary root', async () => {
      const objects = renderChart(files);
      const ds = find<DaemonSetShape>(objects, 'DaemonSet');
      const hostPaths = ds.spec.template.spec.volumes.filter((v) => v.hostPath).map((v) => v.hostPath!.path);
      expect(hostPaths).toEqual([values.kubelet.devicePluginDir]);
      for (const name of ['PVDP_HANDOFF_DIR', 'PVDP_POD_RESOURCES_SOCKET', 'PVDP_CDI_SPEC_DIR', 'PVDP_SYSFS_ROOT']) expect(env(ds, name), name).toBeUndefined();
      // The plugin's own settings from the rendered file and env, with the simulated node's root as main.ts gives it.
      const cm = find<ConfigMapShape>(objects, 'ConfigMap');
      const configFile = join(scratch, `${basename(file ?? 'default')}-sim.yaml`);
      // CDI turned on in the file as rendered, to see where its specs would go.
      writeFileSync(configFile, cm.data['config.yaml']!.replace('enabled: false', 'enabled: true'));
      const envs: NodeJS.ProcessEnv = { PVDP_CONFIG: configFile };
      for (const e of container(ds).env) if (e.value !== undefined && e.name.startsWith('PVDP_') && e.name !== 'PVDP_CONFIG') envs[e.name] = e.value;
      const root = '/tmp/pvdp-sim-chart';
      const settings = await resolveSettings(parseCommandLine([], envs).values, undefined, {
        pathDefaults: { handoffHostDir: `${root}/handoff`, podResourcesSocket: `${root}/pr.sock`, cdiSpecDir: `${root}/cdi`, devicePluginDir: `${root}/dp` },
      });
      expect(settings.simulate).toBe(true);
      expect(settings.handoffHostDir).toBe(`${root}/handoff`);
      expect(settings.podResourcesSocket).toBe(`${root}/pr.sock`);
      expect(settings.cdiSpecDir).toBe(`${root}/cdi`);
      expect(settings.devicePluginDir).toBe(values.kubelet.devicePluginDir);
    });

    it('serves metrics, /healthz and /readyz on one named port that the Service targets', () => {
      const objects = renderChart(files);
      const ds = find<DaemonSetShape>(objects, 'DaemonSet');
      const c = container(ds);
      expect(c.ports).toEqual([{ name: 'metrics', containerPort: values.metrics.port, protocol: 'TCP' }]);
      if (values.probes?.enabled !== false) {
        expect(c.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
        expect(c.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'metrics' });
      } else {
        expect(c.livenessProbe).toBeUndefined();
      }
      const services = objects.filter((o) => o.kind === 'Service') as (KubeObject & { spec: any })[];
      if (values.metrics.service?.enabled === false) {
        expect(services).toHaveLength(0);
        return;
      }
      expect(services).toHaveLength(1);
      const svc = services[0]!;
      expect(svc.spec.ports).toEqual([{ name: 'metrics', port: values.metrics.port, targetPort: 'metrics', protocol: 'TCP' }]);
      // The Service selects exactly the plugin's pods.
      for (const [k, v] of Object.entries(svc.spec.selector as Record<string, string>)) {
        expect(ds.spec.template.metadata.labels[k]).toBe(v);
      }
    });
  });

  describe('default values', () => {
    const objects = () => renderChart();
    const ds = () => find<DaemonSetShape>(objects(), 'DaemonSet');

    it('runs on ppc64le nodes, node-critical, with rolling updates one node at a time and no surge', () => {
      const d = ds();
      expect(d.spec.template.spec.nodeSelector).toEqual({ 'kubernetes.io/arch': 'ppc64le' });
      expect(d.spec.template.spec.priorityClassName).toBe('system-node-critical');
      expect(d.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } });
      expect(d.spec.template.spec.tolerations).toEqual(
        expect.arrayContaining([expect.objectContaining({ operator: 'Exists', effect: 'NoSchedule' })]),
      );
      const selector = d.spec.selector.matchLabels;
      for (const [k, v] of Object.entries(selector)) expect(d.spec.template.metadata.labels[k]).toBe(v);
    });

    it('mounts the host paths the plugin needs, /sys read-only, the kubelet sockets read-write', () => {
      const d = ds();
      const plugins = mount(d, '/var/lib/kubelet/device-plugins');
      expect(plugins.volume.hostPath).toEqual({ path: '/var/lib/kubelet/device-plugins', type: 'Directory' });
      expect(plugins.mount.readOnly).toBeFalsy();
      const podResources = mount(d, '/var/lib/kubelet/pod-resources');
      expect(podResources.volume.hostPath).toEqual({ path: '/var/lib/kubelet/pod-resources', type: 'Directory' });
      expect(podResources.mount.readOnly).toBeFalsy();
      expect(env(d, 'PVDP_POD_RESOURCES_SOCKET')).toBe('/var/lib/kubelet/pod-resources/kubelet.sock');
      expect(env(d, 'PVDP_DEVICE_PLUGIN_DIR')).toBe('/var/lib/kubelet/device-plugins');
      const vfio = mount(d, '/dev/vfio');
      expect(vfio.volume.hostPath?.path).toBe('/dev/vfio');
      expect(env(d, 'PVDP_DEV_ROOT')).toBe('/');
      const sys = mount(d, '/host/sys');
      expect(sys.volume.hostPath).toEqual({ path: '/sys', type: 'Directory' });
      expect(sys.mount.readOnly).toBe(true);
      expect(env(d, 'PVDP_SYSFS_ROOT')).toBe('/host');
      const handoff = mount(d, '/var/run/power-vfio-device-plugin');
      expect(handoff.volume.hostPath?.path).toBe('/var/run/power-vfio-device-plugin');
      expect(env(d, 'PVDP_HANDOFF_DIR')).toBe('/var/run/power-vfio-device-plugin');
      expect(container(d).volumeMounts.some((m) => m.name === 'cdi')).toBe(false);
    });

    it('runs privileged as root with a read-only root filesystem, and knows its node', () => {
      const d = ds();
      expect(container(d).securityContext).toMatchObject({ privileged: true, runAsUser: 0, readOnlyRootFilesystem: true });
      expect(container(d).env.find((e) => e.name === 'NODE_NAME')?.valueFrom).toEqual({ fieldRef: { fieldPath: 'spec.nodeName' } });
      expect(container(d).args).toEqual(['run']);
      expect(container(d).image).toMatch(/^[^:@]+:0\.1\.0$/);
    });

    it('grants node reporting exactly get/patch on nodes and nodes/status and create/patch on events', () => {
      const objs = objects();
      const role = find<KubeObject & { rules: object[] }>(objs, 'ClusterRole');
      expect(role.rules).toEqual([
        { apiGroups: [''], resources: ['nodes', 'nodes/status'], verbs: ['get', 'patch'] },
        { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
      ]);
      const binding = find<KubeObject & { roleRef: any; subjects: any[] }>(objs, 'ClusterRoleBinding');
      const sa = find(objs, 'ServiceAccount');
      expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role.metadata.name });
      expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: NAMESPACE }]);
      expect(find<DaemonSetShape>(objs, 'DaemonSet').spec.template.spec.serviceAccountName).toBe(sa.metadata.name);
    });

    it('renders no ServiceMonitor unless asked', () => {
      expect(objects().some((o) => o.kind === 'ServiceMonitor')).toBe(false);
    });

    it('rolls the pods when the configuration changes (config checksum on the pod template)', () => {
      const before = ds().spec.template.metadata.annotations['checksum/config'];
      const after = find<DaemonSetShape>(renderChart([], ['--set', 'config.resources[0].preparation.mode=none', '--set', 'config.resources[0].name=ibm.com/vfio-pci', '--set', 'config.resources[0].selectors.drivers[0]=vfio-pci']), 'DaemonSet')
        .spec.template.metadata.annotations['checksum/config'];
      expect(before).toMatch(/^[0-9a-f]{64}$/);
      expect(after).toMatch(/^[0-9a-f]{64}$/);
      expect(after).not.toBe(before);
    });

    it('prints NOTES that tell the operator how to check the DaemonSet, the allocatable resources and the logs', () => {
      const run = runHelm(['install', RELEASE, chartDir, '--namespace', NAMESPACE, '--dry-run=client', '-f', `${ciValuesDir}/nvme-values.yaml`]);
      expect(run.status, run.stderr).toBe(0);
      const notes = run.stdout.slice(run.stdout.indexOf('NOTES:'));
      expect(notes).toContain(`kubectl -n ${NAMESPACE} get daemonset ${RELEASE}-power-vfio-device-plugin`);
      expect(notes).toContain(String.raw`.status.allocatable.example\.com/nvme-fast`);
      expect(notes).toContain(String.raw`.status.allocatable.example\.com/nvme'`);
      expect(notes).toContain(`kubectl -n ${NAMESPACE} logs -l app.kubernetes.io/instance=${RELEASE}`);
      // The plugin's own spelling (KubeVirt's): upper case, only "/" and "." as "_".
      expect(notes).toContain(pciResourceEnvName('example.com/nvme-fast'));
      expect(notes).toContain(vfioGroupsEnvName('example.com/nvme-fast'));
      expect(notes).toContain('PCI_RESOURCE_EXAMPLE_COM_NVME-FAST');
      expect(notes).not.toContain('power-vfio-handoff');
    });
  });

  describe('realistic values', () => {
    it('GPU nodes: the custom nodeSelector and tolerations are used as given', () => {
      const d = find<DaemonSetShape>(renderChart([`${ciValuesDir}/gpus-values.yaml`]), 'DaemonSet');
      const values = valuesOf(`${ciValuesDir}/gpus-values.yaml`);
      expect(d.spec.template.spec.nodeSelector).toEqual(values.nodeSelector);
      expect(d.spec.template.spec.tolerations).toEqual(values.tolerations);
    });

    it('several resources with monitoring: a ServiceMonitor that selects the metrics Service, CDI mounted', () => {
      const file = `${ciValuesDir}/several-resources-monitoring-values.yaml`;
      const objects = renderChart([file]);
      const sm = find<KubeObject & { spec: any }>(objects, 'ServiceMonitor');
      const svc = find(objects, 'Service');
      expect(sm.metadata.namespace).toBe('monitoring');
      expect(sm.metadata.labels?.release).toBe('prometheus');
      expect(sm.spec.namespaceSelector).toEqual({ matchNames: [NAMESPACE] });
      for (const [k, v] of Object.entries(sm.spec.selector.matchLabels as Record<string, string>)) expect(svc.metadata.labels?.[k]).toBe(v);
      expect(sm.spec.endpoints[0]).toMatchObject({ port: 'metrics', path: '/metrics', interval: '15s', scrapeTimeout: '5s' });
      const d = find<DaemonSetShape>(objects, 'DaemonSet');
      expect(mount(d, '/etc/cdi').volume.hostPath?.path).toBe('/etc/cdi');
      expect(d.spec.template.spec.affinity).toBeDefined();
      expect(d.spec.updateStrategy.rollingUpdate.maxUnavailable).toBe('25%');
      expect(container(d).env.find((e) => e.name === 'UV_THREADPOOL_SIZE')?.value).toBe('8');
    });

    it('simulate: no nodeSelector, the simulate flag set, no RBAC, the default ServiceAccount', () => {
      const objects = renderChart([`${ciValuesDir}/simulate-values.yaml`]);
      const d = find<DaemonSetShape>(objects, 'DaemonSet');
      expect(d.spec.template.spec.nodeSelector).toBeUndefined();
      expect(env(d, 'PVDP_SIMULATE')).toBe('true');
      expect(objects.map((o) => o.kind).sort()).toEqual(['ConfigMap', 'DaemonSet']);
      expect(d.spec.template.spec.serviceAccountName).toBe('default');
    });

    it('handoff: the plugin reads handoff resources with their options, and NOTES explain the claim', async () => {
      const file = `${ciValuesDir}/handoff-values.yaml`;
      const objects = renderChart([file]);
      const settings = await settingsOf(objects, 'handoff-check');
      const handoff = settings.resources.filter((r) => r.preparation.mode === 'handoff');
      expect(handoff.map((r) => r.name)).toEqual(['example.com/nvme-handoff', 'xilinx.com/fpga-handoff']);
      expect(handoff[0]!.preparation.handoff).toEqual({ memorySize: 256 * 2 ** 20, claimTimeoutSeconds: 300, iommu: 'auto' });
      expect(handoff[1]!.preparation.handoff).toEqual({ memorySize: 2 ** 30, hugePageShift: 21, claimTimeoutSeconds: 120, iommu: 'auto' });
      expect(settings.handoffHostDir).toBe('/run/pvdp-handoff');
      expect(settings.handoffContainerDir).toBe('/run/vfio-handoff');
      const d = find<DaemonSetShape>(objects, 'DaemonSet');
      expect(mount(d, '/run/pvdp-handoff').volume.hostPath?.path).toBe('/run/pvdp-handoff');
      // The plugin's memory cgroup carries the handed-off DMA memory: the limit covers it.
      const limit = (d.spec.template.spec.containers[0] as unknown as { resources: { limits: { memory: string } } }).resources.limits.memory;
      expect(Number(/^(\d+)Mi$/.exec(limit)?.[1])).toBeGreaterThanOrEqual(4 * 256 + 2 * 1024);
      const run = runHelm(['install', RELEASE, chartDir, '--namespace', NAMESPACE, '--dry-run=client', '-f', file]);
      expect(run.status, run.stderr).toBe(0);
      const notes = run.stdout.slice(run.stdout.indexOf('NOTES:'));
      expect(notes).toContain('Handoff mode (example.com/nvme-handoff, xilinx.com/fpga-handoff)');
      expect(notes).toContain('power-vfio-handoff exec -- <your program>');
      expect(notes).toContain(pciResourceEnvName('example.com/nvme-handoff'));
    });

    it('a digest pins the image', () => {
      const d = find<DaemonSetShape>(renderChart([`${ciValuesDir}/fpgas-values.yaml`]), 'DaemonSet');
      expect(container(d).image).toBe(
        'registry.example.com/mirror/power-vfio-device-plugin@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef',
      );
    });
  });
});

if (!setup.helm) {
  describe('chart', () => {
    it.skip(`skipped: ${setup.skipReason}`, () => {});
  });
}
