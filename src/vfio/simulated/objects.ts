// The simulated kernel's objects: groups and their devices, containers and their TCE driver,
// tables and their extents, each process's mm (mappings, registered regions, locked_vm), memfds
// and the open file descriptions an fd table points to.
import type { PciResource } from '../pci-device.js';

export interface Memfd {
  id: number;
  name: string;
  size: bigint;
  hugePageShift: number | null;
  chunks: Map<bigint, Buffer>;
}

export interface Mapping {
  addr: bigint;
  size: bigint;
  memfd: Memfd;
  offset: bigint;
  pageShift: number;
  hugePages: number;
}

/** A piece of user memory resolved to the file behind it (pinned pages). */
export interface Piece {
  vaddr: bigint;
  size: bigint;
  memfd: Memfd;
  offset: bigint;
  pageShift: number;
}

export interface Region {
  vaddr: bigint;
  size: bigint;
  pageShift: number;
  pieces: Piece[];
  users: number;
  chargedPages: number;
  leaked: boolean;
}

export class Mm {
  lockedPages = 0;
  /** Locked memory the process holds for other reasons (mlock, other drivers): fault injection. */
  externalLockedBytes = 0n;
  regions: Region[] = [];
  mappings: Mapping[] = [];
  nextAddr = 0x7e0000000000n;
  constructor(readonly id: number) {}
}

export interface Extent {
  /** First entry (iova >> pageShift, absolute). */
  first: bigint;
  count: bigint;
  vaddr: bigint;
  pieces: Piece[];
  write: boolean;
  read: boolean;
}

export interface Table {
  start: bigint;
  pageShift: number;
  entries: bigint;
  levels: number;
  chargedPages: number;
  isDefault: boolean;
  /** The window sits where the 32-bit default window lives (slot 0, dma32 start). */
  isDefaultSlot: boolean;
  extents: Extent[];
}

export interface TceDriver {
  v2: boolean;
  mm: Mm | null;
  enabled: boolean;
  enableLockedPages: number;
  tables: (Table | null)[];
  defWindowPending: boolean;
  prereg: Region[];
  groups: SimGroup[];
}

export interface Container {
  id: number;
  groups: SimGroup[];
  driver: TceDriver | null;
}

export interface PeState {
  ioStopped: boolean;
  dmaStopped: boolean;
  reset: boolean;
}

export interface SimDevice {
  hostDriver: string | null;
  vendorId: number;
  deviceId: number;
  configSize: number;
  resources: PciResource[];
  msixBar: number | null;
}

export interface SimGroup {
  number: number;
  devices: Map<string, SimDevice>;
  dynamicWindows: boolean;
  file: GroupFile | null;
  container: Container | null;
  deviceUsers: number;
  removed: boolean;
  busyElsewhere: boolean;
  pe: PeState | null;
  /**
   * pseries: a second TCE_CREATE while a dynamic window sat in slot 0 failed with ENODEV and left
   * the PE without DMA windows: every later window creation fails with ENODEV (seen on 6.12).
   */
  ddwBroken: boolean;
}

export interface FileBase {
  refs: number;
  path: string | undefined;
}
export interface ContainerFile extends FileBase {
  kind: 'container';
  container: Container;
}
export interface GroupFile extends FileBase {
  kind: 'group';
  group: SimGroup;
}
export interface DeviceFile extends FileBase {
  kind: 'device';
  group: SimGroup;
  groupFile: GroupFile;
  name: string;
}
export interface MemfdFile extends FileBase {
  kind: 'memfd';
  memfd: Memfd;
}
export interface SocketMessage {
  data: Buffer;
  files: OpenFile[];
}
export interface SocketFile extends FileBase {
  kind: 'socket';
  peer: SocketFile | null;
  queue: SocketMessage[];
}
export type OpenFile = ContainerFile | GroupFile | DeviceFile | MemfdFile | SocketFile;

export const CHUNK = 4096n;

export function isPow2(v: bigint): boolean {
  return v > 0n && (v & (v - 1n)) === 0n;
}

export function ilog2(v: bigint): number {
  let n = 0;
  while (v > 1n) {
    v >>= 1n;
    n++;
  }
  return n;
}

export function ctz(v: bigint): number {
  if (v === 0n) return 64;
  let n = 0;
  while ((v & 1n) === 0n) {
    v >>= 1n;
    n++;
  }
  return n;
}

export function tableEnd(t: Table): bigint {
  return t.start + (t.entries << BigInt(t.pageShift));
}

export function readMemfd(m: Memfd, offset: bigint, len: number): Buffer {
  const out = Buffer.alloc(len);
  let done = 0;
  while (done < len) {
    const abs = offset + BigInt(done);
    const idx = abs / CHUNK;
    const within = Number(abs % CHUNK);
    const n = Math.min(len - done, Number(CHUNK) - within);
    const chunk = m.chunks.get(idx);
    if (chunk) chunk.copy(out, done, within, within + n);
    done += n;
  }
  return out;
}

export function writeMemfd(m: Memfd, offset: bigint, data: Buffer): void {
  let done = 0;
  while (done < data.length) {
    const abs = offset + BigInt(done);
    const idx = abs / CHUNK;
    const within = Number(abs % CHUNK);
    const n = Math.min(data.length - done, Number(CHUNK) - within);
    let chunk = m.chunks.get(idx);
    if (!chunk) {
      chunk = Buffer.alloc(Number(CHUNK));
      m.chunks.set(idx, chunk);
    }
    data.copy(chunk, within, done, done + n);
    done += n;
  }
}
