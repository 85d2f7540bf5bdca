// What every step of the container sequence shares: the context of one preparation (the binding,
// the dev root, the logger, its teardown stack, the locked memory before it began) and the turning
// of a step's failure into a VfioPrepareError that says what failed and what to do about it.
import type { Logger } from '../log.js';
import type { VfioBinding } from './binding.js';
import { KernelOopsError, VfioPrepareError, isVfioError, type PrepareErrorCode } from './errors.js';
import { MiB, formatBytes } from './dma-plan.js';
import type { Teardown } from './teardown.js';

/** What every step of one preparation shares. */
export interface SequenceContext {
  binding: VfioBinding;
  devRoot: string;
  logger: Logger | undefined;
  teardown: Teardown;
  lockedBefore: bigint;
}

/** Throws the VfioPrepareError of a failed step. */
export function fail(code: PrepareErrorCode, step: string, group: number | undefined, problem: string, remedy: string, cause?: unknown): never {
  throw new VfioPrepareError(code, { group, step, problem, remedy, cause });
}

/** The message of a caught error, for a problem text. */
export function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Turns an ENOMEM from a charging ioctl into the memlock message with the numbers. */
export async function memlockFailure(ctx: SequenceContext, step: string, group: number | undefined, what: string, charge: bigint, cause: unknown): Promise<never> {
  const limit = ctx.binding.getMemlockLimit().soft;
  const locked = await ctx.binding.lockedMemoryBytes().catch(() => ctx.lockedBefore);
  const needed = locked + charge;
  const neededMiB = (needed + MiB - 1n) / MiB;
  const limitText = limit === null ? 'unlimited' : formatBytes(limit);
  return fail(
    'ERR_VFIO_MEMLOCK',
    step,
    group,
    `RLIMIT_MEMLOCK is ${limitText} but ${what} needs ${formatBytes(charge)} locked` +
      (locked > 0n ? ` on top of ${formatBytes(locked)} already locked` : ''),
    `raise the node's memlock limit for the plugin to at least ${neededMiB} MiB (LimitMEMLOCK= in the container runtime's systemd unit, ulimit -l), or give the plugin CAP_IPC_LOCK`,
    cause,
  );
}

/** An ioctl's failure as the step's VfioPrepareError: a foreign mm (EPERM), a vanished group (ENODEV), else the kernel. */
export function ioctlFailure(step: string, group: number | undefined, err: unknown): never {
  if (err instanceof KernelOopsError || err instanceof VfioPrepareError) throw err;
  if (isVfioError(err, 'EPERM') && step !== 'set-container') {
    fail('ERR_VFIO_FOREIGN_MM', step, group, `${step} was refused with EPERM (${describe(err)})`,
      'the container belongs to another process: prepare it in the process that keeps or hands over the fds', err);
  }
  if (isVfioError(err, 'ENODEV')) {
    fail('ERR_VFIO_GROUP_GONE', step, group, `group ${group ?? '?'} disappeared during ${step} (${describe(err)})`,
      'the device was removed or unbound; check the node (dmesg, lspci) and wait for the device to come back', err);
  }
  return fail('ERR_VFIO_KERNEL', step, group, `${step} failed: ${describe(err)}`,
    'check the kernel log (dmesg) for vfio messages; the group may need a reset or a reboot of the node', err);
}
