// Reading and validating the YAML configuration file. A bad file is refused
// whole, with one line per bad field naming its path.
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, formatByteSize, type FileConfig } from './schema.js';
import { ConfigError } from '../errors.js';

/** Keys that read unambiguously after a dot; any other (empty, spaces, ": ", newlines) is quoted. */
const PLAIN_KEY = /^[A-Za-z_$][\w$-]*$/;

/** `resources[0].selectors.vendors` from a validation issue's path. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else if (typeof part === 'string' && PLAIN_KEY.test(part)) out += out === '' ? part : `.${part}`;
    else out += `[${JSON.stringify(String(part))}]`;
  }
  return out === '' ? '(top level)' : out;
}

/** One line per bad field, each naming its path. */
export function describeIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => `${formatPath([...issue.path, key])}: unknown field`).join('\n');
    }
    return `${formatPath(issue.path)}: ${issue.message}`;
  });
}

/** A value's kind for messages, safe on objects without a prototype (zod's own naming throws on them). */
function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number' && Number.isNaN(value)) return 'NaN';
  return typeof value;
}

/** Validates an already-parsed object; throws ConfigError listing every bad field. */
export function parseConfig(value: unknown, source = 'configuration'): FileConfig {
  if (value === null || value === undefined) {
    const problem = `${source} is empty: ${WHAT_IT_MUST_CONTAIN}`;
    throw new ConfigError(`${problem[0]!.toUpperCase()}${problem.slice(1)}`, [`(top level): ${problem}`]);
  }
  if (typeof value !== 'object' || Array.isArray(value)) {
    const problem = `(top level): must be a mapping with a "resources:" list, not ${Array.isArray(value) ? 'a list' : `the ${typeof value} ${JSON.stringify(value).slice(0, 40)}`}`;
    throw new ConfigError(`Invalid ${source}:\n  ${problem}`, [problem]);
  }
  let result: ReturnType<typeof configSchema.safeParse>;
  let issues: readonly z.core.$ZodIssue[] = [];
  try {
    result = configSchema.safeParse(value ?? {}, {
      error: (issue) => (issue.code === 'invalid_type' ? `Invalid input: expected ${issue.expected}, received ${kindOf(issue.input)}` : undefined),
    });
    if (!result.success) issues = result.error.issues;
  } catch (err) {
    // Whatever the value, the answer is a ConfigError, never a crash.
    const problem = `(top level): cannot be read as a configuration (${(err as Error).message})`;
    throw new ConfigError(`Invalid ${source}:\n  ${problem}`, [problem]);
  }
  if (!result.success) {
    const problems = describeIssues(issues).flatMap((line) => line.split('\n'));
    throw new ConfigError(`Invalid ${source}:\n  ${problems.join('\n  ')}`, problems);
  }
  return result.data;
}

/** Parses YAML text; syntax errors name the line and column. */
export function parseConfigText(text: string, source = 'configuration'): FileConfig {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const problems = doc.errors.map((error) => {
      const pos = error.linePos?.[0];
      const where = pos ? `line ${pos.line}, column ${pos.col}` : 'YAML';
      return `${where}: ${error.message.split('\n')[0]}`;
    });
    throw new ConfigError(`Invalid ${source}:\n  ${problems.join('\n  ')}`, problems);
  }
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (err) {
    // For example an alias bomb, which the YAML library stops.
    const problem = `YAML: ${(err as Error).message}`;
    throw new ConfigError(`Invalid ${source}:\n  ${problem}`, [problem]);
  }
  return parseConfig(value, source);
}

const WHAT_IT_MUST_CONTAIN =
  'it must contain a "resources:" list naming each resource and its selectors, for example "resources: [{name: ibm.com/nvme, selectors: {classes: [\'010802\']}}]"';

/** A configuration lists a few resources: a few KiB. Anything near this is the wrong file. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/** A local file reads in milliseconds; a hung network mount must not hold start-up forever. */
export const CONFIG_READ_TIMEOUT_MS = 10_000;

export interface LoadConfigOptions {
  /** How the operator named the file (`--config`, `PVDP_CONFIG`), for the remedy. */
  setting?: string;
  maxBytes?: number;
  timeoutMs?: number;
  /** Cancels the read (a signal during start-up). */
  signal?: AbortSignal;
}

function fileKindOf(stats: { isDirectory(): boolean; isFIFO(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isSocket(): boolean }): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  if (stats.isSocket()) return 'a socket';
  return 'not a regular file';
}

const sizeText = formatByteSize;

/**
 * Reads at most `limit + 1` bytes: a file that grows after fstat (or a
 * special file that claims size 0) still cannot make us read without end.
 */
async function readBounded(handle: FileHandle, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  while (total <= limit) {
    const buf = Buffer.allocUnsafe(Math.min(64 * 1024, limit + 1 - total));
    const { bytesRead } = await handle.read(buf, 0, buf.length, null);
    if (bytesRead === 0) break;
    chunks.push(buf.subarray(0, bytesRead));
    total += bytesRead;
  }
  return Buffer.concat(chunks, total);
}

/**
 * Reads the configuration file: only a regular file of at most
 * MAX_CONFIG_BYTES, within a time limit. Opened non-blocking, so a FIFO
 * named by mistake is refused instead of waiting for a writer.
 */
export async function loadConfigFile(path: string, options: LoadConfigOptions = {}): Promise<FileConfig> {
  const setting = options.setting ?? '--config';
  const limit = options.maxBytes ?? MAX_CONFIG_BYTES;
  const timeoutMs = options.timeoutMs ?? CONFIG_READ_TIMEOUT_MS;
  const refuse = (what: string, remedy: string): never => {
    throw new ConfigError(`Configuration file ${path} ${what}: ${remedy}`, [`${path}: ${what}`]);
  };
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const code = e.code ?? e.message;
    const remedy =
      code === 'ENOENT'
        ? `check the path given with ${setting}`
        : code === 'EACCES' || code === 'EPERM'
          ? 'make it readable by the plugin'
          : `check the path given with ${setting}`;
    return refuse(`cannot be opened (${code})`, remedy);
  }
  let text: string;
  let timer: NodeJS.Timeout | undefined;
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) refuse(`is ${fileKindOf(stats)}, not a regular file`, `point ${setting} at a YAML file`);
    if (stats.size > limit) {
      refuse(`is ${sizeText(stats.size)}; the limit is ${sizeText(limit)}`, `a configuration lists resources and takes a few KiB: check that ${setting} names the right file`);
    }
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new ConfigError(`Reading configuration file ${path} took longer than ${timeoutMs / 1000} s: check the file system it is on, or copy it to a local disk and point ${setting} at the copy`, [`${path}: read timed out`])),
        timeoutMs,
      );
      timer.unref();
    });
    const aborted = new Promise<never>((_, reject) => {
      if (options.signal?.aborted) reject(options.signal.reason);
      options.signal?.addEventListener('abort', () => reject(options.signal!.reason), { once: true });
    });
    const bytes = await Promise.race([readBounded(handle, limit), timedOut, aborted]);
    if (bytes.length > limit) {
      refuse(`is larger than the limit of ${sizeText(limit)}`, `a configuration lists resources and takes a few KiB: check that ${setting} names the right file`);
    }
    if (bytes.includes(0)) refuse('holds NUL bytes, so it is not YAML text', `point ${setting} at the YAML configuration file`);
    text = bytes.toString('utf8');
  } catch (err) {
    if (err instanceof ConfigError || options.signal?.aborted) throw err;
    const e = err as NodeJS.ErrnoException;
    return refuse(`cannot be read (${e.code ?? e.message})`, `check the file and the path given with ${setting}`);
  } finally {
    if (timer) clearTimeout(timer);
    // Not awaited: a read stuck past the time limit must not hold the error back.
    handle.close().catch(() => undefined);
  }
  if (text.trim() === '') {
    throw new ConfigError(`Configuration file ${path} is empty: ${WHAT_IT_MUST_CONTAIN}`, [`${path}: empty`]);
  }
  return parseConfigText(text, `configuration file ${path}`);
}
