// Self-contained assertions for the contract suite: the suite runs under
// vitest on the simulator and under plain Node inside a ppc64le guest, so it
// cannot depend on a test framework.
import { VfioError } from './errors.js';

export class ContractAssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ContractAssertionError';
  }
}

/** Thrown by a case to be reported as SKIP with the reason. */
export class ContractSkip extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'ContractSkip';
  }
}

function show(v: unknown): string {
  if (typeof v === 'bigint') return `0x${v.toString(16)}n`;
  if (typeof v === 'string') return JSON.stringify(v);
  try {
    return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `0x${x.toString(16)}n` : x));
  } catch {
    return String(v);
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new ContractAssertionError(message);
}

export function equal<T>(actual: T, expected: T, what: string): void {
  if (actual !== expected) throw new ContractAssertionError(`${what}: expected ${show(expected)}, got ${show(actual)}`);
}

/** Awaits `p` and requires a VfioError with one of `codes`; returns it. */
export async function rejectsWith(p: Promise<unknown>, codes: string | string[], what: string): Promise<VfioError> {
  const list = Array.isArray(codes) ? codes : [codes];
  let value: unknown;
  try {
    value = await p;
  } catch (err) {
    if (err instanceof VfioError && list.includes(err.code)) return err;
    const detail = err instanceof VfioError ? `${err.code} (${err.message})` : err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    throw new ContractAssertionError(`${what}: expected ${list.join(' or ')}, got ${detail}`);
  }
  throw new ContractAssertionError(`${what}: expected ${list.join(' or ')}, but it succeeded (${show(value)})`);
}

/** Awaits `p` and requires a synchronous-style argument error (TypeError / RangeError), never a crash. */
export async function rejectsWithArgumentError(p: Promise<unknown> | (() => unknown), what: string): Promise<void> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    if (err instanceof TypeError || err instanceof RangeError) return;
    throw new ContractAssertionError(`${what}: expected TypeError or RangeError, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
  }
  throw new ContractAssertionError(`${what}: expected an argument error, but it succeeded`);
}

/** Awaits `p` and requires success; a failure is reported with its code. */
export async function succeeds<T>(p: Promise<T>, what: string): Promise<T> {
  try {
    return await p;
  } catch (err) {
    const detail = err instanceof VfioError ? `${err.code} (${err.message})` : err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    throw new ContractAssertionError(`${what}: expected success, got ${detail}`);
  }
}
