// A simulated Linux kernel for VFIO on POWER: the behaviour of vfio,
// vfio_iommu_spapr_tce and the pseries/powernv platform code as described in
// docs/spapr-vfio-facts.md section 3, written from those facts. It implements
// VfioBinding per simulated process, so the same sequence and the same
// contract suite run on it and on the real kernel. Where the two disagree, the
// real kernel is right and the simulator is fixed.
//
// Model: a kernel holds groups, open file descriptions and processes. Each
// process has an fd table and an mm (its mappings, its locked_vm, its
// registered memory regions). A container's mm is set by the first ENABLE,
// REGISTER_MEMORY, TCE_CREATE or TCE_REMOVE; IOMMU calls from another mm then
// fail with EPERM, as they do after fork() or an SCM_RIGHTS handoff.
//
// The parts live in simulated/, one per part of the kernel:
//   platform.ts           the ABI numbers and the pseries/powernv profiles
//   objects.ts            groups, containers, TCE driver and tables, mm, memfds, open files
//   kernel.ts             the kernel: groups, processes, fault injection, the call log
//   process.ts            one process's syscall table (the VfioBinding)
//   process-core.ts       fd table, ioctl bookkeeping and errno, shared lookups
//   container.ts          the container, SET_IOMMU, GET_INFO, ENABLE/DISABLE, driver release
//   tce-windows.ts        table sizes, the default window, TCE_CREATE/TCE_REMOVE and levels
//   dma-map.ts            MAP_DMA/UNMAP_DMA and device-side DMA through the TCEs
//   registered-memory.ts  locked_vm accounting and REGISTER/UNREGISTER_MEMORY
//   user-memory.ts        memfds, mmap/munmap, hugetlb reservations
//   files.ts              close, pread/pwrite, socket pairs and fd passing
//   groups.ts             /dev/vfio/N, group ioctls, device regions, EEH_PE_OP
import { SimulatedKernel, type SimulatedKernelOptions } from './simulated/kernel.js';
import type { SimulatedProcess } from './simulated/process.js';

export { SimulatedKernel, type SimulatedCall, type SimulatedGroupSpec, type SimulatedKernelOptions } from './simulated/kernel.js';
export { SimulatedProcess } from './simulated/process.js';
export { PLATFORM_PROFILES, SIMULATED_CONSTANTS, type PlatformProfile } from './simulated/platform.js';

/** A simulated kernel and its first process, for the common case. */
export function createSimulatedKernel(options: SimulatedKernelOptions): { kernel: SimulatedKernel; binding: SimulatedProcess } {
  const kernel = new SimulatedKernel(options);
  return { kernel, binding: kernel.process() };
}
