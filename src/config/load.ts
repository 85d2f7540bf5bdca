// Reading and validating the YAML configuration file. A bad file is refused
// whole, with one line per bad field naming its path.
import { readFile } from 'node:fs/promises';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, type FileConfig } from './schema.js';
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

export async function loadConfigFile(path: string): Promise<FileConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new ConfigError(`Cannot read configuration file ${path}: ${e.code ?? e.message}`, [`${path}: ${e.code ?? e.message}`]);
  }
  return parseConfigText(text, `configuration file ${path}`);
}
