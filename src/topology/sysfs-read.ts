// Small non-blocking readers for sysfs attributes. Measured on a 2-vCPU VM:
// fs/promises readFile costs about 50 µs per attribute (FileHandle object,
// fstat, a read until EOF, close: four thread-pool round trips and promises),
// while one open/read/close through the callback API costs about 10 µs. A
// node scan reads ~10 attributes per function, so this is the difference
// between seconds and a fraction of one on large nodes. Still async: every
// call runs on libuv's pool, the event loop never blocks. Results are values,
// not exceptions, because absent attributes (physfn, eeh_*) are the norm.
import { close, open, read, readlink, constants } from 'node:fs';

export type ReadResult = { ok: true; text: string } | { ok: false; code: string };

/** sysfs attributes we read are a few bytes; PAGE_SIZE is the kernel's own cap. */
const MAX_ATTR = 4096;

function codeOf(err: NodeJS.ErrnoException): string {
  return err.code ?? 'EUNKNOWN';
}

/**
 * Read a whole small attribute in one read() (sysfs serves it in one go).
 * O_NONBLOCK: sysfs ignores it, but a FIFO in a tree given as --sysfs-root
 * would otherwise hold a libuv thread in open() for good, and with it
 * discovery and the process's exit (libuv joins its threads at exit).
 */
export function readAttr(path: string): Promise<ReadResult> {
  return new Promise((resolve) => {
    open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY, (err, fd) => {
      if (err !== null) {
        resolve({ ok: false, code: codeOf(err) });
        return;
      }
      const buf = Buffer.allocUnsafe(MAX_ATTR);
      read(fd, buf, 0, MAX_ATTR, 0, (rerr, n) => {
        close(fd, () => {
          if (rerr !== null) resolve({ ok: false, code: codeOf(rerr) });
          else resolve({ ok: true, text: buf.toString('utf8', 0, n) });
        });
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
