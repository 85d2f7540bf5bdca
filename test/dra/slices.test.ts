// The pool as ResourceSlice objects: attributes, taints, the split into slices,
// names, and the limits of resource.k8s.io/v1 checked before anything is sent.
// Every slice built here also goes through kubernetes-models' schema.
import { describe, expect, it } from 'vitest';
import { ResourceSlice as ResourceSliceModel } from 'kubernetes-models/resource.k8s.io/v1/ResourceSlice';
import {
  LIMITS,
  MANAGED_BY_LABEL,
  buildSlices,
  deviceAttributes,
  deviceProblem,
  deviceTaints,
  formatPageSize,
  isDnsSubdomain,
  sameSliceContent,
  sliceName,
  validateSlice,
  type PublishedDevice,
  type ResourceSlice,
  type SliceContext,
} from '../../src/dra/slices.js';
import type { IommuGroup } from '../../src/topology/types.js';
import { fn, group } from '../helpers/groups.js';

const DRIVER = 'power-vfio.ibm.com';
const NODE = 'power9-node-1';
const NVME = 'ibm.com/nvme';

function ctx(overrides: Partial<SliceContext> = {}): SliceContext {
  return { driver: DRIVER, nodeName: NODE, platform: 'powernv', generation: 1, ...overrides };
}

function healthy(g: IommuGroup, resource = NVME): PublishedDevice {
  return { resource, device: { group: g, healthy: true } };
}

/** Group n on PHB n / 256 with one NVMe function; addresses sort in n order. */
function nvmeGroup(n: number): IommuGroup {
  const domain = (n >> 8).toString(16).padStart(4, '0');
  const bus = (n & 0xff).toString(16).padStart(2, '0');
  return group(n, [fn(`${domain}:${bus}:00.0`)]);
}

/** Checks a slice the way the API server would: schema (kubernetes-models) and the limits in code. */
function checkAsServer(slice: ResourceSlice): void {
  new ResourceSliceModel(structuredClone(slice) as never).validate();
  validateSlice(slice);
}

describe('device attributes', () => {
  it('carries the standard attributes and every POWER fact discovery and verification know', () => {
    const g = group(
      7,
      [
        fn('0030:00:00.0', { isBridge: true, classCode: '060400', driver: 'pcieport', numaNode: 8, pcieRoot: 'pci0030:00' }),
        fn('0030:01:00.0', {
          vendor: '1014',
          device: '034a',
          classCode: '010802',
          subsystemVendor: '1014',
          subsystemDevice: '04f8',
          numaNode: 8,
          pcieRoot: 'pci0030:00',
        }),
      ],
      { name: 'domain48-pe1fd', phb: 48, pe: 0x1fd, eeh: { hardwareState: 0x18, softwareState: 0, configAddr: 0x1fd, mode: 1, frozen: false, source: '0030:01:00.0' } },
    );
    const d: PublishedDevice = {
      resource: NVME,
      device: { group: g, healthy: true },
      verification: { spaprTceV2: true, dynamicWindows: true, iommuPageSizes: [4096, 65536, 2 ** 21, 2 ** 24], defaultWindowSize: 2 ** 31 },
    };
    expect(deviceAttributes(d, { platform: 'powernv' })).toEqual({
      'resource.kubernetes.io/pciBusID': { string: '0030:01:00.0' },
      'resource.kubernetes.io/pcieRoot': { string: 'pci0030:00' },
      'resource.kubernetes.io/numaNode': { int: 8 },
      resource: { string: NVME },
      iommuGroup: { int: 7 },
      phb: { int: 48 },
      pe: { int: 0x1fd },
      vendor: { string: '1014' },
      device: { string: '034a' },
      class: { string: '010802' },
      subsystemVendor: { string: '1014' },
      subsystemDevice: { string: '04f8' },
      functions: { int: 2 },
      driver: { string: 'vfio-pci' },
      platform: { string: 'powernv' },
      iommufd: { bool: false },
      eeh: { bool: true },
      spaprTceV2: { bool: true },
      dynamicWindows: { bool: true },
      iommuPageSizes: { string: '4Ki,64Ki,2Mi,16Mi' },
      defaultWindowSize: { int: 2 ** 31 },
    });
  });

  it('leaves out what is unknown rather than publishing placeholders', () => {
    const g = group(3, [fn('0001:00:01.0', { numaNode: -1, driver: null })]);
    const attrs = deviceAttributes(healthy(g), { platform: null });
    expect(Object.keys(attrs).sort()).toEqual(
      ['resource.kubernetes.io/pciBusID', 'resource', 'iommuGroup', 'phb', 'vendor', 'device', 'class', 'functions', 'iommufd', 'eeh'].sort(),
    );
    expect(attrs['phb']).toEqual({ int: 1 });
    expect(attrs['eeh']).toEqual({ bool: false });
  });

  it('writes page sizes in binary units', () => {
    expect([4096, 65536, 2 ** 21, 2 ** 24, 2 ** 30, 2 ** 34, 3000].map(formatPageSize)).toEqual(['4Ki', '64Ki', '2Mi', '16Mi', '1Gi', '16Gi', '3000']);
  });
});

describe('device taints', () => {
  const cases: Array<[string, () => PublishedDevice, string]> = [
    [
      'a frozen PE',
      () => ({
        resource: NVME,
        device: {
          group: group(1, [fn('0030:01:00.0')], { eeh: { hardwareState: 0, softwareState: 1, configAddr: 1, mode: 1, frozen: true, source: '0030:01:00.0' } }),
          healthy: false,
          reason: 'the PE is frozen by EEH',
        },
      }),
      'EEHFrozen',
    ],
    [
      'AER fatal errors',
      () => ({ resource: NVME, device: { group: nvmeGroup(2), healthy: false, reason: 'PCIe AER fatal errors on 0000:02:00.0 rose from 0 to 1' } }),
      'AERFatal',
    ],
    ['a missing group node', () => ({ resource: NVME, device: { group: group(3, [fn('0000:03:00.0')], { devNode: false }), healthy: false, reason: '/dev/vfio/3 is missing' } }), 'DeviceNodeMissing'],
    ['an endpoint on a host driver', () => ({ resource: NVME, device: { group: group(4, [fn('0000:04:00.0', { driver: 'nvme' })]), healthy: false, reason: 'bound to nvme' } }), 'HostDriver'],
    ['anything else', () => ({ resource: NVME, device: { group: nvmeGroup(5), healthy: false, reason: 'the group is not viable' } }), 'Unusable'],
  ];
  for (const [what, make, cause] of cases) {
    it(`names ${what} as ${cause}`, () => {
      expect(deviceTaints(make(), DRIVER)).toEqual([{ key: `${DRIVER}/unhealthy`, value: cause, effect: 'NoSchedule' }]);
    });
  }

  it('are empty on a healthy device, and never carry timeAdded (the server sets it)', () => {
    expect(deviceTaints(healthy(nvmeGroup(1)), DRIVER)).toEqual([]);
    const [t] = deviceTaints({ resource: NVME, device: { group: nvmeGroup(1), healthy: false } }, DRIVER);
    expect(t).not.toHaveProperty('timeAdded');
  });
});

describe('building the pool', () => {
  it('spreads 1024 groups over 8 slices of 128, sorted, with one generation and the right count', () => {
    // Shuffled input: the order in the slices must not depend on it.
    const devices = Array.from({ length: 1024 }, (_, i) => healthy(nvmeGroup((i * 389) % 1024)));
    const slices = buildSlices(ctx({ generation: 5 }), devices);
    expect(slices).toHaveLength(8);
    const names = slices.flatMap((s) => s.spec.devices!.map((d) => d.name));
    expect(names).toHaveLength(1024);
    expect(new Set(names).size).toBe(1024);
    expect(names).toEqual([...names].sort());
    for (const [index, slice] of slices.entries()) {
      checkAsServer(slice);
      expect(slice.spec.devices).toHaveLength(128);
      expect(slice.metadata.name).toBe(`${NODE}-power-vfio-ibm-com-${index}`);
      expect(slice.spec).toMatchObject({ driver: DRIVER, nodeName: NODE, pool: { name: NODE, generation: 5, resourceSliceCount: 8 } });
      expect(slice.metadata.labels).toEqual({ [MANAGED_BY_LABEL]: 'power-vfio-device-plugin' });
    }
  });

  it('uses 64 devices a slice as soon as one device of the pool is tainted', () => {
    const devices = Array.from({ length: 200 }, (_, i) => healthy(nvmeGroup(i)));
    devices[150] = { resource: NVME, device: { group: nvmeGroup(150), healthy: false, reason: 'broken' } };
    const slices = buildSlices(ctx(), devices);
    expect(slices.map((s) => s.spec.devices!.length)).toEqual([64, 64, 64, 8]);
    for (const slice of slices) {
      checkAsServer(slice);
      expect(slice.spec.pool.resourceSliceCount).toBe(4);
    }
    const tainted = slices.flatMap((s) => s.spec.devices!).filter((d) => d.taints);
    expect(tainted.map((d) => d.name)).toEqual(['pci-0000-96-00-0']);
  });

  it('publishes an empty pool as one slice without devices', () => {
    const slices = buildSlices(ctx({ generation: 2 }), []);
    expect(slices).toHaveLength(1);
    expect(slices[0]!.spec.devices).toEqual([]);
    expect(slices[0]!.spec.pool).toEqual({ name: NODE, generation: 2, resourceSliceCount: 1 });
    checkAsServer(slices[0]!);
  });

  it('points at the Node as owner when its uid is known, not as controller', () => {
    const [withUid] = buildSlices(ctx({ nodeUid: 'f00-ba4' }), [healthy(nvmeGroup(1))]);
    expect(withUid!.metadata.ownerReferences).toEqual([{ apiVersion: 'v1', kind: 'Node', name: NODE, uid: 'f00-ba4', controller: false }]);
    checkAsServer(withUid!);
    const [without] = buildSlices(ctx(), [healthy(nvmeGroup(1))]);
    expect(without!.metadata).not.toHaveProperty('ownerReferences');
  });

  it('gives node names that would make no DNS subdomain a shortened, hashed, still distinct slice name', () => {
    // Too long overall; and short overall but with a last label that the suffix pushes past 63.
    const long = `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.${'d'.repeat(60)}`;
    const wideLabel = `node.${'w'.repeat(50)}`;
    for (const node of [long, wideLabel]) {
      expect(isDnsSubdomain(node)).toBe(true);
      const names = [0, 1, 12].map((i) => sliceName(DRIVER, node, i));
      for (const name of names) expect(isDnsSubdomain(name), name).toBe(true);
      expect(new Set(names).size).toBe(3);
      expect(sliceName(DRIVER, node, 0)).toBe(names[0]);
      expect(sliceName(DRIVER, `${node.slice(0, -1)}e`, 0)).not.toBe(names[0]);
      checkAsServer(buildSlices(ctx({ nodeName: node }), [healthy(nvmeGroup(1))])[0]!);
    }
    expect(sliceName(DRIVER, 'n1.example.com', 3)).toBe('n1.example.com-power-vfio-ibm-com-3');
  });
});

describe('limits', () => {
  it('refuses a string attribute over 64 characters, naming the device', () => {
    const resource = `example.com/${'x'.repeat(60)}`;
    expect(() => buildSlices(ctx(), [healthy(nvmeGroup(9), resource)])).toThrow(
      /device pci-0000-09-00-0 \(IOMMU group 9, resource example\.com\/x+\) cannot be published: attribute resource: .* longer than 64 characters/,
    );
  });

  it('refuses the same group twice in one pool', () => {
    expect(() => buildSlices(ctx(), [healthy(nvmeGroup(9)), healthy(nvmeGroup(9), 'ibm.com/other')])).toThrow(/device pci-0000-09-00-0 .* offered twice/);
  });

  it('refuses names that are not DNS subdomains', () => {
    expect(() => buildSlices(ctx({ driver: 'Power_VFIO' }), [])).toThrow(/driver name "Power_VFIO"/);
    expect(() => buildSlices(ctx({ nodeName: 'node_1' }), [])).toThrow(/node name "node_1"/);
  });

  it('knows the per-device and per-slice limits of the API', () => {
    const attributes = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`a${i}`, { int: i }]));
    expect(deviceProblem({ name: 'd', attributes })).toMatch(/33 attributes, more than the 32/);
    expect(deviceProblem({ name: 'd', attributes: { [`a${'b'.repeat(32)}`]: { bool: true } } })).toMatch(/not a C identifier of at most 32/);
    expect(deviceProblem({ name: 'd', attributes: { '9lives': { bool: true } } })).toMatch(/not a C identifier/);
    expect(deviceProblem({ name: 'd', attributes: { 'Bad_Domain/x': { bool: true } } })).toMatch(/not a DNS subdomain/);
    expect(deviceProblem({ name: 'd', attributes: { x: { bool: true, int: 1 } } })).toMatch(/exactly one of/);
    expect(deviceProblem({ name: 'd', attributes: { x: { version: '1.2' } } })).toMatch(/not a semantic version/);
    expect(deviceProblem({ name: 'd', attributes: { x: { version: '1.2.3-rc.1' } } })).toBeNull();
    expect(deviceProblem({ name: 'Pci.0', attributes: {} })).toMatch(/not a DNS label/);
    const taints = Array.from({ length: 17 }, (_, i) => ({ key: `k${i}`, effect: 'NoSchedule' as const }));
    expect(deviceProblem({ name: 'd', taints })).toMatch(/17 taints, more than the 16/);
    expect(deviceProblem({ name: 'd', taints: [{ key: 'a/b', value: 'not a label value', effect: 'NoSchedule' }] })).toMatch(/taint value/);

    const slice = buildSlices(ctx(), [healthy(nvmeGroup(1))])[0]!;
    const many = { ...slice, spec: { ...slice.spec, devices: Array.from({ length: 129 }, (_, i) => ({ name: `d${i}` })) } };
    expect(() => validateSlice(many)).toThrow(/129 devices, more than the 128/);
    const tainted = {
      ...slice,
      spec: { ...slice.spec, devices: Array.from({ length: 65 }, (_, i) => ({ name: `d${i}`, taints: [{ key: 'k', effect: 'NoSchedule' as const }] })) },
    };
    expect(() => validateSlice(tainted)).toThrow(/65 devices, more than the 64 allowed when devices have taints/);
    expect(LIMITS.devicesPerSlice).toBe(128);
  });
});

describe('comparing slices', () => {
  it('ignores what the server adds and sees what we change', () => {
    const unhealthy: PublishedDevice = { resource: NVME, device: { group: nvmeGroup(1), healthy: false } };
    const [ours] = buildSlices(ctx(), [unhealthy]);
    const stored = structuredClone(ours!) as ResourceSlice;
    stored.metadata = { ...stored.metadata, uid: 'u', resourceVersion: '42', creationTimestamp: '2026-01-01T00:00:00Z' };
    stored.spec.devices![0]!.taints![0]!.timeAdded = '2026-01-01T00:00:00Z';
    // Key order differs after a round trip through the server; it must not matter.
    stored.spec = JSON.parse(JSON.stringify({ nodeName: stored.spec.nodeName, devices: stored.spec.devices, pool: stored.spec.pool, driver: stored.spec.driver }));
    expect(sameSliceContent(ours!, stored)).toBe(true);
    const [healthyAgain] = buildSlices(ctx(), [healthy(nvmeGroup(1))]);
    expect(sameSliceContent(ours!, healthyAgain!)).toBe(false);
    const [nextGeneration] = buildSlices(ctx({ generation: 2 }), [unhealthy]);
    expect(sameSliceContent(ours!, nextGeneration!)).toBe(false);
  });
});
