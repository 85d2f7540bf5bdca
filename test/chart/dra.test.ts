// The chart's DRA front end: which kubelet API a release gets (kubeletApi auto,
// forced dra, forced device-plugin), what the DRA driver's pod is given (flags,
// host paths, RBAC), and the DeviceClasses, checked against kubernetes-models'
// resource.k8s.io/v1 schemas and read back through the plugin's own parsers.
import { basename, join } from 'node:path';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { effectivePreparation } from '../../src/dra/claim-config.js';
import {
  CLAIM_CONFIG_API_VERSION,
  CLAIM_CONFIG_KIND,
  DEFAULT_DRIVER_NAME,
  DEFAULT_PLUGINS_DIR,
  DEFAULT_PLUGINS_REGISTRY_DIR,
  DRA_SOCKET_NAME,
  registrationSocketName,
} from '../../src/dra/constants.js';
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

interface EnvVar {
  name: string;
  value?: string;
}
interface Pod {
  containers: { env: EnvVar[]; volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[] }[];
  volumes: { name: string; hostPath?: { path: string; type?: string } }[];
}
type DaemonSet = KubeObject & { spec: { template: { spec: Pod } } };
interface DeviceClassShape extends KubeObject {
  spec: {
    selectors: { cel: { expression: string } }[];
    extendedResourceName?: string;
    config?: { opaque: { driver: string; parameters: Record<string, unknown> } }[];
  };
}
interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

const NODE_REPORTING_RULES: Rule[] = [
  { apiGroups: [''], resources: ['nodes', 'nodes/status'], verbs: ['get', 'patch'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
];
const DRA_RULES: Rule[] = [
  { apiGroups: ['resource.k8s.io'], resources: ['resourceslices'], verbs: ['get', 'list', 'watch', 'create', 'update', 'delete'] },
  { apiGroups: ['resource.k8s.io'], resources: ['resourceclaims'], verbs: ['get'] },
  { apiGroups: [''], resources: ['nodes'], verbs: ['get'] },
];

/** What a live API server that serves DRA v1 tells Helm (group versions and kinds). */
const SERVES_DRA = ['--api-versions', 'resource.k8s.io/v1/DeviceClass'];
const FORCE_DRA = ['--set', 'kubeletApi=dra'];

const scratch = mkdtempSync('/tmp/pvdp-dra-');
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let configFiles = 0;
const settingsOf = (objects: KubeObject[]) => pluginSettings(objects, join(scratch, `config-${configFiles++}.yaml`));

function pod(objects: KubeObject[]): Pod {
  return find<DaemonSet>(objects, 'DaemonSet').spec.template.spec;
}
function env(objects: KubeObject[], name: string): string | undefined {
  return pod(objects).containers[0]!.env.find((e) => e.name === name)?.value;
}
/** The host path mounted at `path` in the container, with the mount and the volume. */
function mountAt(objects: KubeObject[], path: string) {
  const p = pod(objects);
  const m = p.containers[0]!.volumeMounts.find((v) => v.mountPath === path);
  const volume = m && p.volumes.find((v) => v.name === m.name);
  return m && volume ? { mount: m, volume } : undefined;
}
function rules(objects: KubeObject[]): Rule[] {
  return find<KubeObject & { rules: Rule[] }>(objects, 'ClusterRole').rules;
}
function deviceClasses(objects: KubeObject[]): DeviceClassShape[] {
  return objects.filter((o) => o.kind === 'DeviceClass') as DeviceClassShape[];
}

/** Expectations of a release that runs the device plugin front end. */
function expectDevicePlugin(objects: KubeObject[]): void {
  expect(env(objects, 'PVDP_KUBELET_API')).toBe('device-plugin');
  expect(deviceClasses(objects)).toEqual([]);
  expect(rules(objects)).toEqual(NODE_REPORTING_RULES);
  expect(mountAt(objects, '/var/lib/kubelet/device-plugins')?.volume.hostPath?.path).toBe('/var/lib/kubelet/device-plugins');
  expect(mountAt(objects, DEFAULT_PLUGINS_REGISTRY_DIR)).toBeUndefined();
  for (const name of ['PVDP_DRIVER_NAME', 'PVDP_PLUGINS_DIR', 'PVDP_PLUGINS_REGISTRY_DIR']) expect(env(objects, name), name).toBeUndefined();
}

/** Expectations of a release that runs the DRA front end with the default paths. */
function expectDra(objects: KubeObject[]): void {
  expect(env(objects, 'PVDP_KUBELET_API')).toBe('dra');
  expect(rules(objects)).toEqual([...NODE_REPORTING_RULES, ...DRA_RULES]);
  expect(mountAt(objects, '/var/lib/kubelet/device-plugins')).toBeUndefined();
  expect(env(objects, 'PVDP_DEVICE_PLUGIN_DIR')).toBeUndefined();
  expect(mountAt(objects, DEFAULT_PLUGINS_REGISTRY_DIR)?.volume.hostPath).toEqual({ path: DEFAULT_PLUGINS_REGISTRY_DIR, type: 'Directory' });
}

/** The chart's default values merged with a values file (lists replace, maps merge), as Helm does. */
function valuesOf(file?: string): Record<string, any> {
  const merge = (base: any, over: any): any => {
    if (typeof base !== 'object' || base === null || Array.isArray(base) || typeof over !== 'object' || over === null || Array.isArray(over)) return over;
    const out: Record<string, any> = { ...base };
    for (const [k, v] of Object.entries(over)) out[k] = merge(base[k], v);
    return out;
  };
  const defaults = parse(readFileSync(join(chartDir, 'values.yaml'), 'utf8'));
  return file ? merge(defaults, parse(readFileSync(file, 'utf8')) ?? {}) : defaults;
}

describe.skipIf(!setup.helm)('kubelet API selection', () => {
  it('auto without a cluster (helm template, no --api-versions): the device plugin', () => {
    expectDevicePlugin(renderChart());
  });

  it('auto with only the group version resource.k8s.io/v1: still the device plugin (Helm lists it whatever the cluster serves)', () => {
    expectDevicePlugin(renderChart([], ['--api-versions', 'resource.k8s.io/v1']));
  });

  it('auto on a cluster that serves resource.k8s.io/v1 DeviceClasses: DRA', async () => {
    const objects = renderChart([], SERVES_DRA);
    expectDra(objects);
    expect(deviceClasses(objects).map((c) => c.metadata.name)).toEqual(['vfio-pci.ibm.com']);
    const settings = await settingsOf(objects);
    expect(settings.kubeletApi).toBe('dra');
  });

  it('forced dra renders DRA without asking the cluster', () => {
    expectDra(renderChart([], FORCE_DRA));
  });

  it('forced device-plugin stays the device plugin on a cluster that serves DRA', async () => {
    const objects = renderChart([], ['--set', 'kubeletApi=device-plugin', ...SERVES_DRA]);
    expectDevicePlugin(objects);
    expect((await settingsOf(objects)).kubeletApi).toBe('device-plugin');
  });

  it('NOTES say which API was chosen and, for DRA, how to see the slices and classes', () => {
    // helm install has no --api-versions: DRA is forced here.
    const dra = runHelm(['install', RELEASE, chartDir, '--namespace', NAMESPACE, '--dry-run=client', ...FORCE_DRA]);
    expect(dra.status, dra.stderr).toBe(0);
    const notes = dra.stdout.slice(dra.stdout.indexOf('NOTES:'));
    expect(notes).toContain(`Kubelet API: Dynamic Resource Allocation (driver ${DEFAULT_DRIVER_NAME}).`);
    expect(notes).toContain(`kubectl get resourceslices --field-selector spec.driver=${DEFAULT_DRIVER_NAME}`);
    expect(notes).toContain('kubectl get deviceclasses vfio-pci.ibm.com');
    expect(notes).toContain('deviceClassName: vfio-pci.ibm.com');
    expect(notes).not.toContain('.status.allocatable.');
    const dp = runHelm(['install', RELEASE, chartDir, '--namespace', NAMESPACE, '--dry-run=client']);
    expect(dp.status, dp.stderr).toBe(0);
    const dpNotes = dp.stdout.slice(dp.stdout.indexOf('NOTES:'));
    expect(dpNotes).toContain('Kubelet API: device plugin (extended resources), chosen by kubeletApi: auto.');
    expect(dpNotes).not.toContain('resourceslices');
  });
});

describe.skipIf(!setup.helm)('the DRA driver pod', () => {
  it('passes the DRA flags, which the plugin reads back as its DRA settings', async () => {
    const objects = renderChart([], FORCE_DRA);
    expect(env(objects, 'PVDP_DRIVER_NAME')).toBe(DEFAULT_DRIVER_NAME);
    expect(env(objects, 'PVDP_PLUGINS_REGISTRY_DIR')).toBe(DEFAULT_PLUGINS_REGISTRY_DIR);
    expect(env(objects, 'PVDP_PLUGINS_DIR')).toBe(DEFAULT_PLUGINS_DIR);
    expect(env(objects, 'PVDP_CDI_SPEC_DIR')).toBe('/var/run/cdi');
    // The pool is named after the node: the DaemonSet gives the pod its node's name.
    const nodeName = pod(objects).containers[0]!.env.find((e) => e.name === 'NODE_NAME') as EnvVar & { valueFrom?: unknown };
    expect(nodeName.valueFrom).toEqual({ fieldRef: { fieldPath: 'spec.nodeName' } });
    const settings = await settingsOf(objects);
    expect(settings.kubeletApi).toBe('dra');
    expect(settings.dra).toEqual({
      driverName: DEFAULT_DRIVER_NAME,
      registryDir: DEFAULT_PLUGINS_REGISTRY_DIR,
      driverDir: `${DEFAULT_PLUGINS_DIR}/${DEFAULT_DRIVER_NAME}`,
      cdiSpecDir: '/var/run/cdi',
    });
  });

  it('mounts every directory the driver uses at its host path, read-write, and the device plugin mounts it still needs', async () => {
    const objects = renderChart([], FORCE_DRA);
    const settings = await settingsOf(objects);
    // The kubelet dials the endpoint path the driver announces, on the host: container path = host path.
    const driverDir = mountAt(objects, settings.dra.driverDir);
    expect(driverDir?.volume.hostPath).toEqual({ path: settings.dra.driverDir, type: 'DirectoryOrCreate' });
    const registry = mountAt(objects, settings.dra.registryDir);
    expect(registry?.volume.hostPath?.path).toBe(settings.dra.registryDir);
    // The runtime reads the per-claim CDI specs on the host.
    const cdi = mountAt(objects, settings.dra.cdiSpecDir);
    expect(cdi?.volume.hostPath).toEqual({ path: settings.dra.cdiSpecDir, type: 'DirectoryOrCreate' });
    for (const m of [driverDir!, registry!, cdi!]) expect(m.mount.readOnly).toBeFalsy();
    expect(mountAt(objects, '/host/sys')?.volume.hostPath?.path).toBe('/sys');
    expect(mountAt(objects, '/dev/vfio')?.volume.hostPath?.path).toBe('/dev/vfio');
    expect(mountAt(objects, settings.handoffHostDir)?.volume.hostPath?.path).toBe(settings.handoffHostDir);
    // Both sockets fit a unix socket path.
    expect(Buffer.byteLength(join(settings.dra.registryDir, registrationSocketName(settings.dra.driverName)))).toBeLessThanOrEqual(MAX_SOCKET_PATH);
    expect(Buffer.byteLength(join(settings.dra.driverDir, DRA_SOCKET_NAME))).toBeLessThanOrEqual(MAX_SOCKET_PATH);
  });

  it('with a managed-binding resource: sysfs read-write, the host /proc read-only at /host/proc, and the plugin reads the binding and procRoot back', async () => {
    const values = join(scratch, 'managed.yaml');
    writeFileSync(
      values,
      'config:\n  resources:\n    - name: ibm.com/nvme\n      selectors: { classes: ["010802"] }\n      binding: { mode: managed, allowedDrivers: [nvme], timeoutSeconds: 20 }\n    - name: ibm.com/gpu\n      selectors: { vendors: ["10de"] }\n      binding: static\n',
    );
    const objects = renderChart([values], FORCE_DRA);
    expect(mountAt(objects, '/host/sys')?.mount.readOnly).toBe(false);
    const proc = mountAt(objects, '/host/proc');
    expect(proc?.volume.hostPath).toEqual({ path: '/proc', type: 'Directory' });
    expect(proc?.mount.readOnly).toBe(true);
    const settings = await settingsOf(objects);
    expect(settings.procRoot).toBe('/host');
    expect(settings.sysfsRoot).toBe('/host');
    expect(settings.resources.map((r) => r.binding)).toEqual([{ mode: 'managed', allowedDrivers: ['nvme'], timeoutSeconds: 20 }, { mode: 'static', timeoutSeconds: 30 }]);
    // Without managed binding nothing changes: sysfs stays read-only and /proc is not mounted.
    const plain = renderChart([], FORCE_DRA);
    expect(mountAt(plain, '/host/sys')?.mount.readOnly).toBe(true);
    expect(mountAt(plain, '/host/proc')).toBeUndefined();
  });

  it('follows another driver name and kubelet root: flags, mounts, class selectors and config all agree', async () => {
    const objects = renderChart([], [
      ...FORCE_DRA,
      '--set', 'dra.driverName=vfio.example.com',
      '--set', 'dra.pluginsRegistryDir=/data/kubelet/plugins_registry',
      '--set', 'dra.pluginsDir=/data/kubelet/plugins/',
      '--set', 'dra.cdiSpecDir=/etc/cdi',
      '--set', 'cdi.enabled=true',
      '--set', 'cdi.specDir=/var/run/cdi',
    ]);
    const settings = await settingsOf(objects);
    expect(settings.dra).toEqual({
      driverName: 'vfio.example.com',
      registryDir: '/data/kubelet/plugins_registry',
      driverDir: '/data/kubelet/plugins/vfio.example.com',
      cdiSpecDir: '/etc/cdi',
    });
    expect(mountAt(objects, '/data/kubelet/plugins/vfio.example.com')?.volume.hostPath?.path).toBe('/data/kubelet/plugins/vfio.example.com');
    expect(mountAt(objects, '/data/kubelet/plugins_registry')?.volume.hostPath?.path).toBe('/data/kubelet/plugins_registry');
    // In DRA mode the driver's CDI directory is the one mounted, not the device plugin's.
    expect(mountAt(objects, '/etc/cdi')?.volume.hostPath?.path).toBe('/etc/cdi');
    expect(mountAt(objects, '/var/run/cdi')).toBeUndefined();
    const [cls] = deviceClasses(objects);
    expect(cls!.spec.selectors[0]!.cel.expression).toBe(
      'device.driver == "vfio.example.com" && device.attributes["vfio.example.com"].resource == "ibm.com/vfio-pci"',
    );
    expect(cls!.spec.config![0]!.opaque.driver).toBe('vfio.example.com');
    for (const obj of objects) validateObject(obj);
  });

  it('keeps the RBAC off with rbac.create: false', () => {
    const objects = renderChart([], [...FORCE_DRA, '--set', 'rbac.create=false']);
    expect(objects.some((o) => o.kind === 'ClusterRole' || o.kind === 'ClusterRoleBinding')).toBe(false);
    expect(deviceClasses(objects)).toHaveLength(1);
  });
});

describe.skipIf(!setup.helm)('DeviceClasses', () => {
  const cases: [string, string | undefined][] = [
    ['default values', undefined],
    ...ciValuesFiles().map((f): [string, string] => [`ci/${basename(f)}`, f]),
  ];

  describe.each(cases)('%s, DRA forced', (_label, file) => {
    const files = file ? [file] : [];
    const values = valuesOf(file);

    it('renders objects that all validate (DeviceClass resource.k8s.io/v1 included) and pass helm lint --strict', () => {
      const objects = renderChart(files, FORCE_DRA);
      for (const obj of objects) {
        expect(() => validateObject(obj), `${obj.kind}/${obj.metadata.name}`).not.toThrow();
        if (CLUSTER_SCOPED.has(obj.kind)) expect(obj.metadata.namespace, `${obj.kind} is cluster-scoped`).toBeUndefined();
      }
      const lint = runHelm(['lint', '--strict', chartDir, '--namespace', NAMESPACE, ...files.flatMap((f) => ['-f', f]), ...FORCE_DRA]);
      expect(lint.status, lint.stdout + lint.stderr).toBe(0);
    });

    it('renders one class per resource that selects exactly that resource of this driver', () => {
      const objects = renderChart(files, FORCE_DRA);
      const driver = values.dra.driverName as string;
      const resources = values.config.resources as { name: string; preparation?: Record<string, unknown> }[];
      const classes = deviceClasses(objects);
      expect(classes).toHaveLength(resources.length);
      resources.forEach((r, i) => {
        const cls = classes[i]!;
        const [domain, local] = r.name.split('/') as [string, string];
        expect(cls.metadata.name).toBe(`${local.toLowerCase().replace(/_/g, '-')}.${domain}`);
        expect(cls.metadata.namespace).toBeUndefined();
        expect(cls.spec.selectors).toEqual([
          { cel: { expression: `device.driver == "${driver}" && device.attributes["${driver}"].resource == "${r.name}"` } },
        ]);
        expect(cls.spec.extendedResourceName).toBe(r.name);
      });
    });

    it("carries each resource's preparation as opaque config the plugin's preparation schema accepts unchanged", () => {
      const objects = renderChart(files, FORCE_DRA);
      const parsed = parseConfig({ resources: values.config.resources }, 'values');
      const classes = deviceClasses(objects);
      (values.config.resources as { name: string; preparation?: object }[]).forEach((r, i) => {
        const cls = classes[i]!;
        if (!r.preparation) {
          expect(cls.spec.config, `${r.name} sets no preparation`).toBeUndefined();
          return;
        }
        expect(cls.spec.config).toHaveLength(1);
        const { driver, parameters } = cls.spec.config![0]!.opaque;
        expect(driver).toBe(values.dra.driverName);
        const { apiVersion, kind, ...preparation } = parameters;
        expect(apiVersion).toBe(CLAIM_CONFIG_API_VERSION);
        expect(kind).toBe(CLAIM_CONFIG_KIND);
        expect(preparation).toEqual(r.preparation);
        // The driver reads it as class configuration over a verify base and ends with the node's own preparation.
        const fromClass = effectivePreparation({ mode: 'verify' }, [{ index: 0, source: 'FromClass', requests: [], parameters }], 'r');
        expect(fromClass).toEqual(parsed.resources[i]!.preparation);
        // The API server refuses opaque parameters over 10 Ki.
        expect(Buffer.byteLength(JSON.stringify(parameters))).toBeLessThanOrEqual(10 * 1024);
      });
    });
  });

  it('the handoff class carries the window memory, the huge pages and the IOMMU choice', () => {
    const [nvme] = deviceClasses(renderChart([join(ciValuesDir, 'dra-values.yaml')]));
    expect(nvme!.metadata.name).toBe('nvme.ibm.com');
    expect(nvme!.spec.config![0]!.opaque.parameters).toEqual({
      apiVersion: 'power-vfio.ibm.com/v1alpha1',
      kind: 'VfioPreparation',
      mode: 'handoff',
      handoff: { memorySize: '256Mi', hugePageShift: '16Mi', claimTimeoutSeconds: 120, iommu: 'auto' },
    });
    const parameters = nvme!.spec.config![0]!.opaque.parameters;
    expect(effectivePreparation({ mode: 'none' }, [{ index: 0, source: 'FromClass', requests: [], parameters }], 'nvme').handoff).toMatchObject({
      memorySize: 256 * 2 ** 20,
      hugePageShift: 24,
    });
  });

  it('renders no classes with deviceClasses.create: false, and no extendedResourceName with extendedResources: false', () => {
    expect(deviceClasses(renderChart([], [...FORCE_DRA, '--set', 'dra.deviceClasses.create=false']))).toEqual([]);
    const classes = deviceClasses(renderChart([join(ciValuesDir, 'nvme-values.yaml')], [...FORCE_DRA, '--set', 'dra.deviceClasses.extendedResources=false']));
    expect(classes).toHaveLength(2);
    for (const cls of classes) {
      expect(cls.spec).not.toHaveProperty('extendedResourceName');
      validateObject(cls);
    }
  });

  it('makes DNS-subdomain class names from names with upper case and "_"', () => {
    const objects = renderChart([], [...FORCE_DRA, '--set', 'config.resources[0].name=example.com/NVMe_Fast', '--set', 'config.resources[0].selectors.drivers[0]=vfio-pci']);
    const [cls] = deviceClasses(objects);
    expect(cls!.metadata.name).toBe('nvme-fast.example.com');
    expect(cls!.spec.extendedResourceName).toBe('example.com/NVMe_Fast');
  });

  it('a misspelt DeviceClass field does not get past validation', () => {
    const [cls] = deviceClasses(renderChart([], FORCE_DRA));
    const typo = { ...cls!, spec: { ...cls!.spec, extendedResourceNmae: 'ibm.com/vfio-pci' } };
    expect(() => validateObject(typo)).toThrow(/unknown spec fields extendedResourceNmae/);
    const wrongType = { ...cls!, spec: { ...cls!.spec, extendedResourceName: 7 } };
    expect(() => validateObject(wrongType as KubeObject)).toThrow(/extendedResourceName/);
  });
});

if (!setup.helm) {
  describe('chart DRA front end', () => {
    it.skip(`skipped: ${setup.skipReason}`, () => {});
  });
}
