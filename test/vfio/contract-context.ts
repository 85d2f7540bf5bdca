// Builds a contract context on a fresh simulated kernel, as the guest runner
// builds one on the real kernel.
import type { Platform } from '../../src/vfio/binding.js';
import type { ContractContext, OtherProcessOp, OtherProcessResult } from '../../src/vfio/contract-cases.js';
import { VfioError } from '../../src/vfio/errors.js';
import { SimulatedKernel, type SimulatedProcess } from '../../src/vfio/simulated-kernel.js';

export const SIM_GROUPS = [
  { group: 1, devices: ['0001:00:01.0'] },
  { group: 2, devices: ['0002:00:01.0'] },
];

export function simulatedContext(platform: Platform): ContractContext {
  // The guest runner runs as root: CAP_IPC_LOCK, so the limit is not enforced (the charge still counts).
  const kernel = new SimulatedKernel({ platform, groups: SIM_GROUPS, capIpcLock: true });
  const binding = kernel.process();
  return {
    binding,
    devRoot: '/',
    simulated: true,
    platform,
    groups: SIM_GROUPS,
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
  };
}
