// The per-allocation directories on the host: the record the plugin writes beside the mounted
// socket directory (and reads back, without trusting it, after a restart), and the names and
// paths derived from a resource and its group set.
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { ResourceConfig } from '../config/schema.js';
import { HANDOFF_RECORD_NAME } from './protocol.js';

export const ALLOCATION_DIR = /^alloc-[0-9a-f]{16}$/;
/** A record is a few hundred bytes; anything larger is not ours. */
const MAX_RECORD_BYTES = 4096;
const MAX_GROUP_ID = 1 << 20;

export interface AllocationFileRecord {
  version: 1;
  resource: string;
  groups: number[];
  createdMs: number;
}

/**
 * Reads an allocation record without trusting the file: no symlinks
 * (O_NOFOLLOW), no blocking on a FIFO or device (O_NONBLOCK, then fstat must
 * say regular file), at most MAX_RECORD_BYTES, and validated field by field.
 * Returns the record or a reason.
 */
export async function readAllocationRecord(path: string, nowMs: number): Promise<AllocationFileRecord | string> {
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK | fsConstants.O_NOCTTY);
  } catch (err) {
    return `cannot open ${HANDOFF_RECORD_NAME}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  let text: string;
  try {
    const st = await handle.stat();
    if (!st.isFile()) return `${HANDOFF_RECORD_NAME} is not a regular file`;
    if (st.size > MAX_RECORD_BYTES) return `${HANDOFF_RECORD_NAME} is larger than ${MAX_RECORD_BYTES} bytes`;
    const buffer = Buffer.alloc(MAX_RECORD_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_RECORD_BYTES) return `${HANDOFF_RECORD_NAME} is larger than ${MAX_RECORD_BYTES} bytes`;
    }
    text = buffer.subarray(0, length).toString('utf8');
  } catch (err) {
    return `cannot read ${HANDOFF_RECORD_NAME}: ${(err as Error).message}`;
  } finally {
    await handle.close().catch(() => undefined);
  }
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch {
    return `${HANDOFF_RECORD_NAME} is not JSON`;
  }
  if (typeof record !== 'object' || record === null || Array.isArray(record)) return `${HANDOFF_RECORD_NAME} is not an object`;
  const r = record as Record<string, unknown>;
  if (r['version'] !== 1) return `${HANDOFF_RECORD_NAME} has an unknown version`;
  const resource = r['resource'];
  if (typeof resource !== 'string' || resource.length === 0 || resource.length > 253 || !/^[A-Za-z0-9._/-]+$/.test(resource)) return `${HANDOFF_RECORD_NAME} has no valid resource`;
  const groups = r['groups'];
  if (!Array.isArray(groups) || groups.length === 0 || groups.length > 64 || !groups.every((g) => Number.isInteger(g) && (g as number) >= 0 && (g as number) < MAX_GROUP_ID)) {
    return `${HANDOFF_RECORD_NAME} has no valid groups`;
  }
  if (new Set(groups).size !== groups.length) return `${HANDOFF_RECORD_NAME} repeats a group`;
  const createdMs = r['createdMs'];
  if (typeof createdMs !== 'number' || !Number.isFinite(createdMs) || createdMs < 0 || createdMs > nowMs + 24 * 3600_000) return `${HANDOFF_RECORD_NAME} has no valid creation time`;
  return { version: 1, resource, groups: groups as number[], createdMs };
}

export function groupSetKey(resource: string, groups: readonly number[]): string {
  return `${resource}:${[...groups].sort((a, b) => a - b).join(',')}`;
}

export { containerDirFor } from './paths.js';

export function claimTimeoutMsOf(resource: ResourceConfig | null, fallbackMs: number): number {
  const seconds = resource?.preparation.handoff?.claimTimeoutSeconds;
  return seconds !== undefined ? seconds * 1000 : fallbackMs;
}
