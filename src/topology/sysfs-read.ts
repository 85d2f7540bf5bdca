// Small non-blocking readers for sysfs attributes. Measured on a 2-vCPU VM:
// fs/promises readFile costs about 50 µs per attribute (FileHandle object,
// fstat, a read until EOF, close: four thread-pool round trips and promises),
// while one open/read/close through the callback API costs about 10 µs. A
// node scan reads ~10 attributes per function, so this is the difference
// between seconds and a fraction of one on large nodes. Still async: every
// call runs on libuv's pool, the event loop never blocks. Results are values,
// not exceptions, because absent attributes (physfn, eeh_*) are the norm.
import { close, open, read, readdir, readlink, stat, constants } from 'node:fs';

export type ReadResult = { ok: true; text: string } | { ok: false; code: string };

/** sysfs attributes we read are a few bytes; PAGE_SIZE is the kernel's own cap. */
export const MAX_ATTR = 4096;

/**
 * open(2) flags for an attribute. O_NONBLOCK: sysfs ignores it, but a FIFO in
 * a tree given as --sysfs-root would otherwise hold a thread in open() for
 * good, and with it discovery and the process's exit (libuv joins its threads
 * at exit).
 */
export const ATTR_OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

function codeOf(err: NodeJS.ErrnoException): string {
  return err.code ?? 'EUNKNOWN';
}

// Read buffers are reused: a fresh 4 KiB Buffer per read is too big for Node's
// shared pool, so each one was its own C-heap allocation, about 20 MiB of
// garbage per safety poll at 1024 groups, which kept V8's young generation and
// glibc's heap grown while the daemon idles. A read's text is decoded before
// its buffer goes back, so no caller ever sees a buffer.
const spareBuffers: Buffer[] = [];
/** As many as reads are in flight through the pool at once (scan concurrency). */
const MAX_SPARE_BUFFERS = 64;

function takeBuffer(): Buffer {
  return spareBuffers.pop() ?? Buffer.allocUnsafeSlow(MAX_ATTR);
}

function giveBack(buf: Buffer): void {
  if (spareBuffers.length < MAX_SPARE_BUFFERS) spareBuffers.push(buf);
}

/** Read a whole small attribute in one read() (sysfs serves it in one go). */
export function readAttr(path: string): Promise<ReadResult> {
  return new Promise((resolve) => {
    open(path, ATTR_OPEN_FLAGS, (err, fd) => {
      if (err !== null) {
        resolve({ ok: false, code: codeOf(err) });
        return;
      }
      const buf = takeBuffer();
      read(fd, buf, 0, MAX_ATTR, 0, (rerr, n) => {
        const result: ReadResult = rerr !== null ? { ok: false, code: codeOf(rerr) } : { ok: true, text: buf.toString('utf8', 0, n) };
        giveBack(buf);
        close(fd, () => resolve(result));
      });
    });
  });
}

/** readlink as a value. */
export function readLinkAttr(path: string): Promise<ReadResult> {
  return new Promise((resolve) => {
    readlink(path, (err, target) => {
      if (err !== null) resolve({ ok: false, code: codeOf(err) });
      else resolve({ ok: true, text: target });
    });
  });
}

/** stat as a value: `ok` when the path resolves (text empty). */
export function statAttr(path: string): Promise<ReadResult> {
  return new Promise((resolve) => {
    stat(path, (err) => {
      if (err !== null) resolve({ ok: false, code: codeOf(err) });
      else resolve({ ok: true, text: '' });
    });
  });
}

/** A directory's entry names, joined by `/` (no name contains one): see `listedNames`. */
export function listDirAttr(path: string): Promise<ReadResult> {
  return new Promise((resolve) => {
    readdir(path, (err, names) => {
      if (err !== null) resolve({ ok: false, code: codeOf(err) });
      else resolve({ ok: true, text: names.join('/') });
    });
  });
}

/** The names of a successful `list` request. */
export function listedNames(text: string): string[] {
  return text === '' ? [] : text.split('/');
}

// ---- batched requests ---------------------------------------------------------

/** One thing to learn about a path: its content, its link target, whether it resolves, its entries. */
export type SysfsRequestKind = 'read' | 'link' | 'stat' | 'list';

/**
 * A request about `dir/name`, or about `dir` itself when `name` is empty.
 * Kept in two parts so a function's requests share one directory string: a
 * full scan makes a few hundred thousand of them.
 */
export interface SysfsRequest {
  kind: SysfsRequestKind;
  /** A normalised path (as path.join makes it). */
  dir: string;
  /** One entry name, no slash; empty for `dir` itself. */
  name: string;
  /**
   * Usually absent (physfn on all but VFs, aer_dev_fatal where the kernel keeps
   * no AER statistics): a reader may look before it reads, when a failed read
   * costs more than a look. The answer is the same either way.
   */
  oftenAbsent?: boolean;
}

/** The path a request is about; equal to path.join(dir, name) for the paths requests are made of. */
export function requestPath(r: SysfsRequest): string {
  return r.name === '' ? r.dir : `${r.dir}/${r.name}`;
}

export const attrRequest = (dir: string, name = ''): SysfsRequest => ({ kind: 'read', dir, name });
export const linkRequest = (dir: string, name = ''): SysfsRequest => ({ kind: 'link', dir, name });
/** `attrRequest`/`linkRequest` for an entry that is usually absent. */
export const rareRequest = (kind: 'read' | 'link', dir: string, name: string): SysfsRequest => ({ kind, dir, name, oftenAbsent: true });
export const statRequest = (dir: string, name = ''): SysfsRequest => ({ kind: 'stat', dir, name });
export const listRequest = (dir: string, name = ''): SysfsRequest => ({ kind: 'list', dir, name });

/**
 * How a scan reads sysfs: every request of one call answered together, in
 * order. Each answer is exactly what the single readers above give for it.
 */
export interface SysfsReader {
  gather(requests: readonly SysfsRequest[]): Promise<ReadResult[]>;
}

/** Answer one request on libuv's pool. */
export function answer(request: SysfsRequest): Promise<ReadResult> {
  const path = requestPath(request);
  switch (request.kind) {
    case 'read':
      return readAttr(path);
    case 'link':
      return readLinkAttr(path);
    case 'stat':
      return statAttr(path);
    case 'list':
      return listDirAttr(path);
  }
}

/** Every request its own round trip through libuv's pool: cheap to start, right for a few groups. */
export const poolReader: SysfsReader = {
  gather: (requests) => Promise.all(requests.map(answer)),
};
