import { describe, it, expect } from 'vitest';
import { SimulatedKernel } from '../../src/vfio/simulated-kernel.js';
import { verifyGroups } from '../../src/vfio/verify-groups.js';
import { capabilitiesOf } from '../../src/prepare/capabilities.js';
import { labelsFor } from '../../src/report/node-report.js';

describe('capabilities from a verification', () => {
  it('powernv9: sPAPR TCE v2 with dynamic windows and 4K, 64K, 2M and 1G IOMMU pages', async () => {
    const kernel = new SimulatedKernel({ platform: 'powernv9', groups: [{ group: 3, devices: ['0030:01:00.0'] }], memlockLimit: 64n << 20n });
    const [v] = await verifyGroups(kernel.process(), [3], { devRoot: '/' });
    const caps = capabilitiesOf(v!);
    expect(caps).toEqual({ spaprTceV2: true, dynamicWindows: true, iommuPageSizes: [4096, 65536, 2 ** 21, 2 ** 30] });
    const labels = labelsFor(caps, 1);
    expect(Object.values(labels)).toContain('4K.64K.2M.1G');
  });

  it('a PE without dynamic windows falls back to v1 and claims no page sizes', async () => {
    const kernel = new SimulatedKernel({
      platform: 'pseries',
      groups: [{ group: 1, devices: ['0001:00:01.0'], dynamicWindows: false }],
      capIpcLock: true,
    });
    const [v] = await verifyGroups(kernel.process(), [1], { devRoot: '/' });
    expect(capabilitiesOf(v!)).toEqual({ spaprTceV2: false, dynamicWindows: false, iommuPageSizes: [] });
  });
});
