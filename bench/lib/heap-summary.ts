// A V8 heap snapshot (.heapsnapshot, as v8.writeHeapSnapshot writes it) summed
// by what its objects are: constructor name for objects and closures, one row
// for all strings, V8's own names for compiled code and internal arrays.
// Self sizes only: retained sizes need the dominator tree of the whole graph,
// which costs more than this summary is worth here.
import { readFile } from 'node:fs/promises';

interface RawSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

export interface HeapRow {
  /** `Group (object)`, `(strings)`, `(compiled code) ...`. */
  what: string;
  count: number;
  selfBytes: number;
}

export interface HeapSummary {
  totalBytes: number;
  nodes: number;
  rows: HeapRow[];
}

const STRING_TYPES = new Set(['string', 'concatenated string', 'sliced string']);

function keyOf(type: string, name: string): string {
  if (STRING_TYPES.has(type)) return '(strings)';
  switch (type) {
    case 'object':
      return `${name} (object)`;
    case 'closure':
      return '(closures)';
    case 'code':
      return `(compiled code) ${name}`;
    case 'array':
      return `(internal array) ${name}`;
    case 'hidden':
    case 'object shape':
      return `(V8 internal) ${name}`;
    case 'native':
      return `(native) ${name}`;
    default:
      return `(${type})`;
  }
}

/** Sums self sizes per kind of object; rows sorted by size, largest first. */
export async function summarizeHeapSnapshot(path: string): Promise<HeapSummary> {
  const raw = JSON.parse(await readFile(path, 'utf8')) as RawSnapshot;
  const fields = raw.snapshot.meta.node_fields;
  const types = raw.snapshot.meta.node_types[0];
  const width = fields.length;
  const typeAt = fields.indexOf('type');
  const nameAt = fields.indexOf('name');
  const sizeAt = fields.indexOf('self_size');
  const rows = new Map<string, HeapRow>();
  let total = 0;
  for (let i = 0; i < raw.nodes.length; i += width) {
    const size = raw.nodes[i + sizeAt]!;
    const what = keyOf(types[raw.nodes[i + typeAt]!] ?? 'unknown', raw.strings[raw.nodes[i + nameAt]!] ?? '');
    let row = rows.get(what);
    if (!row) rows.set(what, (row = { what, count: 0, selfBytes: 0 }));
    row.count += 1;
    row.selfBytes += size;
    total += size;
  }
  return { totalBytes: total, nodes: raw.nodes.length / width, rows: [...rows.values()].sort((a, b) => b.selfBytes - a.selfBytes) };
}
