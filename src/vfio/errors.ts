// The errors of the VFIO layer. Kernel failures are shaped like Node's own
// system errors (negative `errno`, string `code`, `syscall`, `path`), so code
// that already handles fs errors handles these too; the sequence's own
// failures carry a stable code, the group, the step and a remedy.
import { getSystemErrorMap } from 'node:util';
import { constants as osConstants } from 'node:os';

const errnoByCode: Record<string, number> = osConstants.errno as unknown as Record<string, number>;

/** The code a positive ioctl return is reported under (misaligned iova returns +1 on real kernels). */
export const UNEXPECTED_RETURN = 'ERR_VFIO_UNEXPECTED_RETURN';

export interface VfioErrorDetails {
  /** System call that failed: `open`, `ioctl`, `mmap`, `sendmsg`, ... */
  syscall: string;
  /** The /dev/vfio node (or other path) the fd was opened from, when known. */
  path?: string | undefined;
  /** The ioctl's name, for `syscall: 'ioctl'`: `VFIO_IOMMU_MAP_DMA`. */
  ioctl?: string | undefined;
  /** The fd the call was made on. */
  fd?: number | undefined;
}

/**
 * Errno names and messages beyond libuv's table (Node's getSystemErrorMap and
 * os.constants.errno know only the errnos libuv maps: EBADFD, ENOTBLK, EREMOTEIO,
 * ... are missing). The native addon exports the C library's own table
 * (strerrorname_np/strerror, compiled for the target) and registers it here;
 * the Linux values below cover what the simulated kernel raises when no addon
 * is loaded (asm-generic errno numbers, the same on powerpc and x86).
 */
const extraByErrno = new Map<number, { code: string; message: string }>();
const extraByCode = new Map<string, number>();

const LINUX_FALLBACK: Array<[number, string, string]> = [
  [77, 'EBADFD', 'File descriptor in bad state'],
  [15, 'ENOTBLK', 'Block device required'],
  [121, 'EREMOTEIO', 'Remote I/O error'],
  [524, 'ENOTSUPP', 'Operation is not supported'],
];

/**
 * Registers errno names and messages (the native addon's table, from the C
 * library). Entries for errnos libuv already names are ignored so both
 * bindings report the same code for the same errno.
 */
export function registerErrnoNames(table: Iterable<[number, string, string]>, fallback = false): void {
  const known = getSystemErrorMap();
  for (const [errno, code, message] of table) {
    if (!Number.isInteger(errno) || errno <= 0 || typeof code !== 'string' || !/^E[A-Z0-9]+$/.test(code)) continue;
    if (known.has(-errno)) continue;
    // The C library's entry replaces a built-in fallback; otherwise the first registration stays.
    if (extraByErrno.has(errno) && (fallback || !fallbackErrnos.has(errno))) continue;
    if (fallback) fallbackErrnos.add(errno);
    else fallbackErrnos.delete(errno);
    const previous = extraByErrno.get(errno);
    if (previous && extraByCode.get(previous.code) === errno) extraByCode.delete(previous.code);
    extraByErrno.set(errno, { code, message: typeof message === 'string' && message ? message : code });
    if (errnoByCode[code] === undefined && !extraByCode.has(code)) extraByCode.set(code, errno);
  }
}

const fallbackErrnos = new Set<number>();
registerErrnoNames(LINUX_FALLBACK, true);

/** Positive errno for a code name (`EINVAL` -> 22) on this platform, 0 when unknown. */
export function errnoOf(code: string): number {
  const unnamed = /^E(\d+)$/.exec(code);
  return errnoByCode[code] ?? extraByCode.get(code) ?? (unnamed ? Number(unnamed[1]) : 0);
}

/** Code name for a positive errno (22 -> `EINVAL`, 77 -> `EBADFD`), `E<n>` when unknown. */
export function codeOfErrno(errno: number): string {
  const n = Math.abs(errno);
  const entry = getSystemErrorMap().get(-n);
  if (entry) return entry[0];
  return extraByErrno.get(n)?.code ?? `E${n}`;
}

function describeErrno(errno: number): string {
  const n = Math.abs(errno);
  const entry = getSystemErrorMap().get(-n);
  if (entry) return entry[1];
  return extraByErrno.get(n)?.message ?? 'unknown error';
}

/**
 * A failed system call. `errno` is negative like Node's (`-22`), `code` is the
 * name (`EINVAL`). A positive ioctl return is a failure too: `code` is then
 * ERR_VFIO_UNEXPECTED_RETURN, `errno` 0 and `returnValue` the value.
 */
export class VfioError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  readonly path: string | undefined;
  readonly ioctl: string | undefined;
  readonly fd: number | undefined;
  readonly returnValue: number | undefined;

  constructor(code: string, details: VfioErrorDetails, returnValue?: number) {
    const isReturn = code === UNEXPECTED_RETURN;
    const errno = isReturn ? 0 : errnoOf(code);
    const what = details.ioctl ? `${details.syscall} ${details.ioctl}` : details.syscall;
    const text = isReturn ? `unexpected return value ${returnValue ?? '?'}` : describeErrno(errno);
    super(`${code}: ${text}, ${what}${details.path !== undefined ? ` '${details.path}'` : ''}`);
    this.name = 'VfioError';
    this.errno = -errno;
    this.code = code;
    this.syscall = details.syscall;
    this.path = details.path;
    this.ioctl = details.ioctl;
    this.fd = details.fd;
    this.returnValue = returnValue;
  }

  static fromErrno(errno: number, details: VfioErrorDetails): VfioError {
    return new VfioError(codeOfErrno(errno), details);
  }
}

/**
 * The simulated kernel crashed (a MAP_DMA past a window's end Oopses real
 * pseries kernels). Distinct from VfioError on purpose: nothing should catch
 * it as an ordinary failure, and after it every call on that kernel fails.
 */
export class KernelOopsError extends Error {
  readonly code = 'ERR_VFIO_KERNEL_OOPS';
  constructor(message: string) {
    super(`Kernel Oops: ${message}`);
    this.name = 'KernelOopsError';
  }
}

/** Stable codes of the sequence's own failures, documented for users. */
export type PrepareErrorCode =
  | 'ERR_VFIO_GROUP_MISSING'
  | 'ERR_VFIO_GROUP_BUSY'
  | 'ERR_VFIO_GROUP_NOT_VIABLE'
  | 'ERR_VFIO_GROUP_GONE'
  | 'ERR_VFIO_ACCESS'
  | 'ERR_VFIO_API'
  | 'ERR_VFIO_NO_SPAPR_IOMMU'
  | 'ERR_VFIO_IOMMU_REFUSED'
  | 'ERR_VFIO_MEMLOCK'
  | 'ERR_VFIO_MEMORY'
  | 'ERR_VFIO_WINDOW'
  | 'ERR_VFIO_WINDOW_BOUNDS'
  | 'ERR_VFIO_MAP'
  | 'ERR_VFIO_EEH_FROZEN'
  | 'ERR_VFIO_FOREIGN_MM'
  | 'ERR_VFIO_RELEASE'
  | 'ERR_VFIO_KERNEL';

/** A preparation (verify or handoff) failed: what, which group, which step, and what to do. */
export class VfioPrepareError extends Error {
  readonly code: PrepareErrorCode;
  readonly group: number | undefined;
  readonly step: string;
  readonly remedy: string;

  constructor(
    code: PrepareErrorCode,
    options: { group?: number | undefined; step: string; problem: string; remedy: string; cause?: unknown },
  ) {
    super(`${options.problem}: ${options.remedy}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'VfioPrepareError';
    this.code = code;
    this.group = options.group;
    this.step = options.step;
    this.remedy = options.remedy;
  }
}

/** True when `err` is a VfioError with one of `codes`. */
export function isVfioError(err: unknown, ...codes: string[]): err is VfioError {
  return err instanceof VfioError && (codes.length === 0 || codes.includes(err.code));
}
