import { describe, expect, it } from 'vitest';
import {
  ConditionReason,
  EventReason,
  MAX_CONDITION_MESSAGE,
  conditionFor,
  joinWithin,
  labelValue,
  labelsFor,
  pageSizesLabel,
  summaryMessage,
  transitionsBetween,
} from '../../src/report/node-report.js';
import type { NodeSnapshot } from '../../src/report/snapshot.js';

const NVME = 'ibm.com/nvme';
const NIC = 'ibm.com/nic';

function snap(resources: Record<string, Record<string, true | string>>, conflicts: NodeSnapshot['conflicts'] = []): NodeSnapshot {
  return {
    resources: Object.entries(resources).map(([name, devices]) => ({
      name,
      devices: Object.entries(devices).map(([id, state]) =>
        state === true ? { id, healthy: true } : { id, healthy: false, reason: state },
      ),
    })),
    conflicts,
  };
}

const VALID_LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

describe('conditionFor', () => {
  it('is True with AllDevicesHealthy when every group is healthy', () => {
    expect(conditionFor(snap({ [NVME]: { 1: true, 2: true }, [NIC]: { 7: true } }))).toEqual({
      status: 'True',
      reason: ConditionReason.AllDevicesHealthy,
      message: 'All 3 IOMMU groups are Healthy (ibm.com/nvme: 2, ibm.com/nic: 1)',
    });
  });

  it('is False with DevicesUnhealthy and names each unhealthy group, its resource and why', () => {
    const c = conditionFor(snap({ [NVME]: { 1: true, 10: 'the PE is frozen by EEH', 2: 'function 0030:01:00.0 is bound to nvme' }, [NIC]: { 7: true } }));
    expect(c.status).toBe('False');
    expect(c.reason).toBe(ConditionReason.DevicesUnhealthy);
    expect(c.message).toBe(
      '2 of 4 IOMMU groups are Unhealthy: ibm.com/nvme group 2: function 0030:01:00.0 is bound to nvme; ibm.com/nvme group 10: the PE is frozen by EEH',
    );
  });

  it('is True with NoDevices when nothing is advertised', () => {
    const c = conditionFor(snap({ [NVME]: {} }));
    expect(c).toMatchObject({ status: 'True', reason: ConditionReason.NoDevices });
  });

  it('is False with SelectionConflict when groups match several resources', () => {
    const c = conditionFor(snap({ [NVME]: { 1: true } }, [{ group: 4, resources: [NVME, NIC] }]));
    expect(c).toMatchObject({ status: 'False', reason: ConditionReason.SelectionConflict });
    expect(c.message).toContain('IOMMU group 4 matches several resources');
  });

  it('keeps the message within bounds when hundreds of groups are unhealthy, saying how many were left out', () => {
    const devices: Record<string, string> = {};
    for (let i = 0; i < 300; i += 1) devices[String(i)] = `the PE is frozen by EEH and ${'x'.repeat(300)}`;
    const c = conditionFor(snap({ [NVME]: devices }));
    expect(c.message.length).toBeLessThanOrEqual(MAX_CONDITION_MESSAGE);
    expect(c.message).toMatch(/^300 of 300 IOMMU groups are Unhealthy: ibm.com\/nvme group 0: /);
    expect(c.message).toMatch(/and \d+ more$/);
  });
});

describe('joinWithin', () => {
  it('joins everything that fits, else cuts at an entry and counts the rest', () => {
    expect(joinWithin(['a', 'b', 'c'], ', ', 100)).toBe('a, b, c');
    const out = joinWithin(['aaaa', 'bbbb', 'cccc', 'dddd'], ', ', 20);
    expect(out).toBe('aaaa, and 3 more');
    expect(out.length).toBeLessThanOrEqual(20);
  });
});

describe('labels', () => {
  it('makes valid label values of anything', () => {
    expect(labelValue('power9')).toBe('power9');
    expect(labelValue('POWER9 (raw)')).toBe('POWER9--raw');
    expect(labelValue('-x-')).toBe('x');
    expect(labelValue('a'.repeat(80))).toHaveLength(63);
    for (const raw of ['a b/c', '__', '.x.', 'ü', `${'a'.repeat(62)}-b`]) expect(labelValue(raw)).toMatch(VALID_LABEL_VALUE);
  });

  it('writes IOMMU page sizes ascending with units, cut at a whole size within 63 characters', () => {
    expect(pageSizesLabel([2 ** 30, 4096, 65536, 2 ** 21, 65536])).toBe('4K.64K.2M.1G');
    const many = Array.from({ length: 40 }, (_, i) => 2 ** (12 + i));
    const label = pageSizesLabel(many);
    expect(label.length).toBeLessThanOrEqual(63);
    expect(label.startsWith('4K.8K.16K')).toBe(true);
    expect(label).toMatch(VALID_LABEL_VALUE);
  });

  it('labels only the capabilities that are known, and the group count', () => {
    expect(
      labelsFor({ spaprTceV2: true, dynamicWindows: false, iommuPageSizes: [4096, 65536], powerGeneration: 'POWER9', platform: 'powernv' }, 5),
    ).toEqual({
      'power-vfio.ibm.com/spapr-tce-v2': 'true',
      'power-vfio.ibm.com/dynamic-windows': 'false',
      'power-vfio.ibm.com/iommu-page-sizes': '4K.64K',
      'power-vfio.ibm.com/power-generation': 'power9',
      'power-vfio.ibm.com/platform': 'powernv',
      'power-vfio.ibm.com/groups': '5',
    });
    expect(labelsFor({ groups: 12 }, 5)).toEqual({ 'power-vfio.ibm.com/groups': '12' });
  });
});

describe('transitionsBetween', () => {
  it('on the first snapshot reports only unhealthy groups', () => {
    const t = transitionsBetween(null, snap({ [NVME]: { 1: true, 2: 'frozen' } }));
    expect(t).toEqual([
      { type: 'Warning', reason: EventReason.DeviceUnhealthy, message: 'IOMMU group 2 of resource ibm.com/nvme is Unhealthy: frozen', resource: NVME, device: '2' },
    ]);
  });

  it('reports each health change, additions, removals and new conflicts', () => {
    const before = snap({ [NVME]: { 1: true, 2: 'frozen', 3: true } });
    const after = snap({ [NVME]: { 1: 'unbound', 2: true, 4: true } }, [{ group: 9, resources: [NVME, NIC] }]);
    const t = transitionsBetween(before, after);
    expect(t.map((x) => [x.type, x.reason, x.device])).toEqual([
      ['Warning', 'DeviceUnhealthy', '1'],
      ['Normal', 'DeviceHealthy', '2'],
      ['Normal', 'DeviceAdded', '4'],
      ['Warning', 'DeviceRemoved', '3'],
      ['Warning', 'SelectionConflict', '9'],
    ]);
    expect(t[0]?.message).toBe('IOMMU group 1 of resource ibm.com/nvme became Unhealthy: unbound');
  });

  it('reports nothing when only the reason of an unhealthy group changes', () => {
    expect(transitionsBetween(snap({ [NVME]: { 1: 'a' } }), snap({ [NVME]: { 1: 'b' } }))).toEqual([]);
  });

  it('summarises a burst in one line', () => {
    expect(summaryMessage(EventReason.DeviceUnhealthy, NVME, ['10', '2', '3'])).toBe(
      '3 IOMMU groups of resource ibm.com/nvme became Unhealthy: 2, 3, 10',
    );
  });
});
