// Argument checks shared by both bindings, so hostile input fails the same way
// (TypeError / RangeError) before it reaches either kernel. Values that are
// well-typed but wrong (a closed fd, a misaligned address) are left for the
// kernel to refuse: that is what the contract suite checks.

import type { DmaMapRequest, DmaUnmapRequest, MemoryRegionRequest, TceCreateRequest, TceRemoveRequest } from './binding.js';

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

// The checked arguments of each container ioctl's request, in the order the
// kernel's struct lays them out; argsz defaults to that struct's size.

export function dmaMapArgs(containerFd: unknown, request: DmaMapRequest) {
  checkFd('containerFd', containerFd);
  const vaddr = checkU64('vaddr', request.vaddr);
  const iova = checkU64('iova', request.iova);
  const size = checkU64('size', request.size);
  const flags = checkU32('flags', request.flags);
  return { argsz: checkU32('argsz', request.argsz ?? 32), flags, vaddr, iova, size };
}

export function dmaUnmapArgs(containerFd: unknown, request: DmaUnmapRequest) {
  checkFd('containerFd', containerFd);
  const iova = checkU64('iova', request.iova);
  const size = checkU64('size', request.size);
  const flags = checkU32('flags', request.flags ?? 0);
  return { argsz: checkU32('argsz', request.argsz ?? 24), flags, iova, size };
}

export function memoryRegionArgs(containerFd: unknown, request: MemoryRegionRequest) {
  checkFd('containerFd', containerFd);
  const vaddr = checkU64('vaddr', request.vaddr);
  const size = checkU64('size', request.size);
  const flags = checkU32('flags', request.flags ?? 0);
  return { argsz: checkU32('argsz', request.argsz ?? 24), flags, vaddr, size };
}

export function tceCreateArgs(containerFd: unknown, request: TceCreateRequest) {
  checkFd('containerFd', containerFd);
  const pageShift = checkU32('pageShift', request.pageShift);
  const windowSize = checkU64('windowSize', request.windowSize);
  const levels = checkU32('levels', request.levels);
  const flags = checkU32('flags', request.flags ?? 0);
  return { argsz: checkU32('argsz', request.argsz ?? 40), flags, pageShift, windowSize, levels };
}

export function tceRemoveArgs(containerFd: unknown, request: TceRemoveRequest) {
  checkFd('containerFd', containerFd);
  const startAddr = checkU64('startAddr', request.startAddr);
  const flags = checkU32('flags', request.flags ?? 0);
  return { argsz: checkU32('argsz', request.argsz ?? 16), flags, startAddr };
}
