// Shared bits of the reporting tests: captured log lines and polling with a deadline.
import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/log.js';

export interface LogLine {
  level: string;
  msg: string;
  [key: string]: unknown;
}

/** A real pino logger whose JSON lines are kept for assertions. */
export function capturedLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  let partial = '';
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      partial += chunk.toString('utf8');
      let index = partial.indexOf('\n');
      while (index >= 0) {
        const line = partial.slice(0, index);
        partial = partial.slice(index + 1);
        if (line.trim()) lines.push(JSON.parse(line) as LogLine);
        index = partial.indexOf('\n');
      }
      callback();
    },
  });
  return { logger: createLogger({ level: 'debug', destination }), lines };
}

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function until<T>(check: () => T | Promise<T>, what: string, timeoutMs = 5000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`Timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
