// The configuration the simulated POWER node runs with when no file is given:
// also a worked example of the file format for operators.
import { parseConfigText } from '../config/load.js';
import type { FileConfig } from '../config/schema.js';

export const SIMULATED_NODE_CONFIG_YAML = `# Resources advertised on the simulated POWER9 node.
resources:
  - name: ibm.com/gpu            # NVIDIA V100 GPUs (3D controller class 0302)
    selectors:
      vendors: ["10de"]
      classes: ["0302"]
    preparation:
      mode: verify
  - name: ibm.com/nvme           # NVMe controllers (class 010802) bound to vfio-pci
    selectors:
      classes: ["010802"]
    preparation:
      mode: verify
  - name: ibm.com/connectx5      # Mellanox ConnectX-5 physical functions
    selectors:
      vendors: ["15b3"]
      devices: ["1017"]
    preparation:
      mode: none
  - name: ibm.com/connectx5-vf   # ConnectX-5 SR-IOV virtual functions
    selectors:
      vendors: ["15b3"]
      devices: ["1018"]
    preparation:
      mode: verify
  - name: ibm.com/fpga           # Xilinx FPGAs (processing accelerator class 1200)
    selectors:
      vendors: ["10ee"]
    preparation:
      mode: handoff              # the pod receives a container with its DMA window already mapped
      handoff:
        memorySize: 256Mi
        claimTimeoutSeconds: 120
`;

export function simulatedNodeConfig(): FileConfig {
  return parseConfigText(SIMULATED_NODE_CONFIG_YAML, 'built-in simulated node configuration');
}
