// Reading and validating the YAML configuration file. A bad file is refused
// whole, with one line per bad field naming its path.
import { readFile } from 'node:fs/promises';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, type FileConfig } from './schema.js';
import { ConfigError } from '../errors.js';

/** `resources[0].selectors.vendors` from a validation issue's path. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out === '' ? '(top level)' : out;
}

/** One line per bad field, each naming its path. */
export function describeIssues(issues: readonly z.core.$ZodIssue[]): string[] {
  return issues.map((issue) => {
    if (issue.code === 'unrecognized_keys') {
      const base = formatPath(issue.path);
      return issue.keys
        .map((key) => `${base === '(top level)' ? key : `${base}.${key}`}: unknown field`)
        .join('\n');
    }
    return `${formatPath(issue.path)}: ${issue.message}`;
  });
}

/** Validates an already-parsed object; throws ConfigError listing every bad field. */
export function parseConfig(value: unknown, source = 'configuration'): FileConfig {
  const result = configSchema.safeParse(value ?? {});
  if (!result.success) {
    const problems = describeIssues(result.error.issues).flatMap((line) => line.split('\n'));
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
