// A reader for full scans and safety polls of large nodes: one worker thread answers requests
// in batches with synchronous system calls, so a request costs a system call
// or three instead of a trip through libuv's pool and back (a futex wake, an
// epoll wake-up and a promise each). The main thread only ships batches and
// reads the answers, so its event loop keeps turning; a read that hangs in
// the kernel holds the worker, never the event loop. The worker lives for one
// scan: close() ends it. Should it fail, the requests go to libuv's pool.
import { Worker } from 'node:worker_threads';
import { answer, ATTR_OPEN_FLAGS, MAX_ATTR, type ReadResult, type SysfsReader, type SysfsRequest, type SysfsRequestKind } from './sysfs-read.js';

/** Requests per message: big enough to amortise a message, small enough that answering one stays well under a millisecond of main-thread work per few hundred. */
const BATCH_LIMIT = 1024;

const KIND_CODES: Record<SysfsRequestKind, string> = { read: 'r', link: 'l', stat: 's', list: 'd' };

/**
 * The worker's code, plain JavaScript run with `eval` so the same text works
 * from the compiled build and from sources a test runner transforms. It knows
 * four system calls and nothing of PCI: what to read and what it means stays
 * with the scan. Its answers match the async readers in sysfs-read.ts: same
 * open flags, one read of at most MAX_ATTR bytes at offset 0, errors as codes.
 */
const WORKER_SOURCE = `
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
// Errors are answers here, and absent attributes are the norm: no stack traces to build.
Error.stackTraceLimit = 0;
const FLAGS = workerData.flags;
const MAX = workerData.max;
const buf = Buffer.allocUnsafe(MAX);
const codeOf = (e) => (e && typeof e.code === 'string' ? e.code : 'EUNKNOWN');
// Upper case: usually absent. A failed call builds an error object, which costs
// more than the call; lstat with throwIfNoEntry says "absent" without one.
function one(kind, path, ok, values, i) {
  try {
    if (kind === 'R' || kind === 'L') {
      if (fs.lstatSync(path, { throwIfNoEntry: false }) === undefined) {
        values[i] = 'ENOENT';
        return;
      }
      kind = kind === 'R' ? 'r' : 'l';
    }
    if (kind === 'r') {
      const fd = fs.openSync(path, FLAGS);
      try {
        const n = fs.readSync(fd, buf, 0, MAX, 0);
        values[i] = buf.toString('utf8', 0, n);
      } finally {
        try { fs.closeSync(fd); } catch {}
      }
    } else if (kind === 'l') {
      values[i] = fs.readlinkSync(path);
    } else if (kind === 's') {
      fs.statSync(path);
      values[i] = '';
    } else {
      values[i] = fs.readdirSync(path).join('/');
    }
    ok[i] = 1;
  } catch (e) {
    values[i] = codeOf(e);
  }
}
// A request is kinds[i] about dirs[dirOf[i]] + '/' + names[i], or the directory itself when the name is empty.
parentPort.on('message', (m) => {
  const n = m.names.length;
  const ok = new Uint8Array(n);
  const values = new Array(n);
  for (let i = 0; i < n; i++) {
    const dir = m.dirs[m.dirOf[i]];
    const name = m.names[i];
    one(m.kinds[i], name === '' ? dir : dir + '/' + name, ok, values, i);
  }
  parentPort.postMessage({ id: m.id, ok, values }, [ok.buffer]);
});
`;

interface Waiter {
  requests: readonly SysfsRequest[];
  resolve: (results: ReadResult[]) => void;
  reject: (reason: unknown) => void;
}

interface Batch {
  waiters: Waiter[];
}

interface Answer {
  id: number;
  ok: Uint8Array;
  values: string[];
}

export interface WorkerReaderStats {
  /** Messages sent to the worker. */
  batches: number;
  /** Requests answered by the worker. */
  requests: number;
  /** Set when the worker failed and libuv's pool took over: why. */
  fellBack?: string;
}

export class WorkerReader implements SysfsReader {
  #workers: Worker[] | null;
  #pending: Waiter[] = [];
  #pendingCount = 0;
  #flushScheduled = false;
  #inFlight = new Map<number, Batch>();
  #nextId = 0;
  #closed: { reason: unknown } | null = null;
  #stats: WorkerReaderStats = { batches: 0, requests: 0 };

  /** `threads` workers take the batches in turn. */
  constructor(threads = 1) {
    this.#workers = Array.from({ length: Math.max(1, threads) }, () => {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { flags: ATTR_OPEN_FLAGS, max: MAX_ATTR } });
      worker.on('message', (m: Answer) => this.#answered(m));
      worker.on('error', (err) => this.#fallBack(`the worker failed: ${err.message}`));
      worker.on('messageerror', (err) => this.#fallBack(`an answer could not be read: ${err.message}`));
      worker.on('exit', (code) => this.#fallBack(`the worker exited (code ${code})`));
      return worker;
    });
  }

  stats(): WorkerReaderStats {
    return { ...this.#stats };
  }

  gather(requests: readonly SysfsRequest[]): Promise<ReadResult[]> {
    if (this.#closed !== null) return Promise.reject(this.#closed.reason);
    if (this.#workers === null) return Promise.all(requests.map(answer));
    return new Promise((resolve, reject) => {
      this.#pending.push({ requests, resolve, reject });
      this.#pendingCount += requests.length;
      if (this.#pendingCount >= BATCH_LIMIT) this.#flush();
      else if (!this.#flushScheduled) {
        // Everything asked for in this turn of the event loop goes in one message.
        this.#flushScheduled = true;
        setImmediate(() => {
          this.#flushScheduled = false;
          this.#flush();
        });
      }
    });
  }

  /**
   * Ends the worker. With a reason, requests still unanswered reject with it
   * (an aborted scan); without one they are expected to be none.
   */
  close(reason?: unknown): void {
    if (reason !== undefined) {
      this.#closed = { reason };
      for (const w of this.#takeAllWaiters()) w.reject(reason);
    }
    const workers = this.#workers;
    this.#workers = null;
    for (const worker of workers ?? []) {
      worker.removeAllListeners();
      // A worker stuck in a read cannot stop until the read returns: never wait for it here.
      void worker.terminate().catch(() => undefined);
    }
    // Anything still waiting is answered by libuv's pool.
    for (const w of this.#takeAllWaiters()) this.#viaPool(w);
  }

  #flush(): void {
    const workers = this.#workers;
    if (workers === null || this.#pending.length === 0) return;
    const waiters = this.#pending;
    this.#pending = [];
    this.#pendingCount = 0;
    // Directories go once per message: a function's requests share one.
    let count = 0;
    for (const w of waiters) count += w.requests.length;
    let kinds = '';
    const names: string[] = new Array(count);
    const dirOf = new Uint32Array(count);
    const dirs: string[] = [];
    const dirIndex = new Map<string, number>();
    let i = 0;
    for (const w of waiters) {
      for (const r of w.requests) {
        let d = dirIndex.get(r.dir);
        if (d === undefined) {
          d = dirs.length;
          dirs.push(r.dir);
          dirIndex.set(r.dir, d);
        }
        kinds += r.oftenAbsent === true ? KIND_CODES[r.kind].toUpperCase() : KIND_CODES[r.kind];
        names[i] = r.name;
        dirOf[i] = d;
        i++;
      }
    }
    const id = this.#nextId++;
    this.#inFlight.set(id, { waiters });
    this.#stats.batches++;
    (workers[id % workers.length] as Worker).postMessage({ id, kinds, dirs, dirOf, names }, [dirOf.buffer]);
  }

  #answered(m: Answer): void {
    const batch = this.#inFlight.get(m.id);
    if (batch === undefined) return;
    this.#inFlight.delete(m.id);
    this.#stats.requests += m.values.length;
    let i = 0;
    for (const w of batch.waiters) {
      const results: ReadResult[] = new Array(w.requests.length);
      for (let k = 0; k < w.requests.length; k++, i++) {
        const value = m.values[i] ?? 'EUNKNOWN';
        results[k] = m.ok[i] === 1 ? { ok: true, text: value } : { ok: false, code: value };
      }
      w.resolve(results);
    }
  }

  #takeAllWaiters(): Waiter[] {
    const all: Waiter[] = [];
    for (const b of this.#inFlight.values()) all.push(...b.waiters);
    this.#inFlight.clear();
    all.push(...this.#pending);
    this.#pending = [];
    this.#pendingCount = 0;
    return all;
  }

  #viaPool(w: Waiter): void {
    Promise.all(w.requests.map(answer)).then(w.resolve, w.reject);
  }

  #fallBack(why: string): void {
    if (this.#workers === null) return;
    this.#stats.fellBack = why;
    this.close();
  }
}
