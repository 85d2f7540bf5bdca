// Builds a contract context on a fresh simulated kernel, as the guest runner
// builds one on the real kernel: the same devices, huge page sizes and groups
// as the QEMU guests (test/kernel/README.md).
import type { Platform } from '../../src/vfio/binding.js';
import type { ContractContext, OtherProcessOp, OtherProcessResult } from '../../src/vfio/contract-cases.js';
import { childScripts, type ChildProcessOptions, type ChildScriptArgs, type ChildScriptName } from '../../src/vfio/contract-child.js';
import { VfioError } from '../../src/vfio/errors.js';
import { SimulatedKernel, type SimulatedGroupSpec, type SimulatedProcess } from '../../src/vfio/simulated-kernel.js';

export const SIM_GROUPS = [
  { group: 1, devices: ['0001:00:01.0'] },
  { group: 2, devices: ['0002:00:01.0'] },
];

/** A group with a function on vfio-pci and a virtio device on its host driver (both guests have one). */
const NON_VIABLE = { group: 3, devices: ['0003:00:01.0', '0003:00:02.0'] };

/** The e1000e of the powernv9 guest: PCIe, BAR0 and BAR1 128 KiB, MSI-X in the 16 KiB BAR3 [seen]. */
function e1000e(group: number): Pick<SimulatedGroupSpec, 'vendorId' | 'deviceId' | 'pcie' | 'resources' | 'msixBar'> {
  const base = 0x600c000000000n + (BigInt(group) << 31n);
  const mem = (offset: bigint, size: bigint) => ({ start: base + offset, end: base + offset + size - 1n, flags: 0x40200n });
  const none = { start: 0n, end: 0n, flags: 0n };
  return {
    vendorId: 0x8086,
    deviceId: 0x10d3,
    pcie: true,
    resources: [mem(0n, 0x20000n), mem(0x20000n, 0x20000n), none, mem(0x40000n, 0x4000n), none, none, none],
    msixBar: 3,
  };
}

export function simulatedContext(platform: Platform): ContractContext {
  const pseries = platform === 'pseries';
  const groups: SimulatedGroupSpec[] = SIM_GROUPS.map((g) => (pseries ? { ...g } : { ...g, ...e1000e(g.group) }));
  groups.push({ ...NON_VIABLE });
  // The guest runner runs as root: CAP_IPC_LOCK, so the limit is not enforced (the charge still counts).
  // The pseries guest (radix) has 2M and 1G huge page sizes, the powernv9 one none [seen].
  const kernel = new SimulatedKernel({ platform, groups, capIpcLock: true, hugePageShifts: pseries ? [21, 30] : [] });
  kernel.bindHostDriver(NON_VIABLE.group, NON_VIABLE.devices[1]!, 'virtio-pci');
  const binding = kernel.process();
  return {
    binding,
    devRoot: '/',
    simulated: true,
    platform,
    groups: SIM_GROUPS,
    nonViableGroup: NON_VIABLE,
    sim: kernel,
    log: () => undefined,
    async inOtherProcess(fds: number[], op: OtherProcessOp, fdIndex: number, args: unknown[] = []): Promise<OtherProcessResult> {
      const child = (binding as SimulatedProcess).fork();
      try {
        const fn = child[op] as (fd: number, ...rest: unknown[]) => Promise<unknown>;
        return { ok: true, value: await fn.call(child, fds[fdIndex]!, ...args) };
      } catch (err) {
        if (err instanceof VfioError) return { ok: false, code: err.code };
        throw err;
      } finally {
        child.exit();
      }
    },
    async inChildProcess(script: ChildScriptName, args: ChildScriptArgs, options: ChildProcessOptions = {}) {
      const child = kernel.spawnProcess({ memlockLimit: options.memlockLimit ?? null, capIpcLock: !options.unprivileged });
      try {
        return await childScripts[script](child, args);
      } finally {
        child.exit();
      }
    },
    async pciDevice(name: string) {
      const dev = kernel.pciDevice(name);
      if (!dev) throw new Error(`the simulated kernel has no device ${name}`);
      return dev;
    },
    async hugePageShifts() {
      return kernel.hugePageSizes();
    },
  };
}
