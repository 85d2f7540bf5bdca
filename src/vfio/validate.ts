// Argument checks shared by both bindings, so hostile input fails the same way
// (TypeError / RangeError) before it reaches either kernel. Values that are
// well-typed but wrong (a closed fd, a misaligned address) are left for the
// kernel to refuse: that is what the contract suite checks.

const U64_MAX = (1n << 64n) - 1n;

export function checkFd(name: string, fd: unknown): number {
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < -1 || fd > 0x7fffffff) {
    throw new TypeError(`${name} must be an integer fd, got ${String(fd)}`);
  }
  return fd;
}

export function checkU32(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`${name} must be an integer in 0..2^32-1, got ${String(value)}`);
  }
  return value;
}

export function checkU64(name: string, value: unknown): bigint {
  if (typeof value !== 'bigint' || value < 0n || value > U64_MAX) {
    throw new RangeError(`${name} must be a bigint in 0..2^64-1, got ${String(value)}`);
  }
  return value;
}

export function checkLength(name: string, value: unknown, max = 0x7fffffff): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${name} must be an integer in 0..${max}, got ${String(value)}`);
  }
  return value;
}

export function checkGroupNumber(group: unknown): number {
  if (typeof group !== 'number' || !Number.isInteger(group) || group < 0 || group > 0x7fffffff) {
    throw new RangeError(`group must be a non-negative integer, got ${String(group)}`);
  }
  return group;
}

export function checkBytes(name: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new TypeError(`${name} must be a Uint8Array or Buffer`);
  return value;
}

export function checkString(name: string, value: unknown, max = 4096): string {
  if (typeof value !== 'string' || value.length > max || value.includes('\0')) {
    throw new TypeError(`${name} must be a string without NUL of at most ${max} characters`);
  }
  return value;
}
