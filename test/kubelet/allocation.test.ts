import { describe, it, expect } from 'vitest';
import { pciResourceEnvName, vfioGroupsEnvName } from '../../src/inventory/advertised.js';

describe('environment names', () => {
  it('follow KubeVirt: upper case, "/" and "." as "_", "-" kept', () => {
    expect(pciResourceEnvName('ibm.com/nvme-fast')).toBe('PCI_RESOURCE_IBM_COM_NVME-FAST');
    expect(vfioGroupsEnvName('example.org/gpu_a.b')).toBe('VFIO_GROUPS_EXAMPLE_ORG_GPU_A_B');
  });
});
