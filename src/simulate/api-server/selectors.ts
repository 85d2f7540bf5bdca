// Field and label selectors as the real server parses them for ResourceSlices.
import type { Json } from './json.js';

/** `key=value`, `key==value`, `key!=value`, `key` (exists), `!key` (absent), comma-separated (all must hold). */
interface Requirement {
  key: string;
  op: '=' | '!=' | 'exists' | '!exists';
  value: string;
}
export type Selector = Requirement[];

/** The selector, or the message of the 400 the server answers. */
export function parseSelector(text: string | null, kind: 'field' | 'label'): Selector | string {
  const out: Selector = [];
  if (!text) return out;
  for (const raw of text.split(',')) {
    const part = raw.trim();
    if (!part) continue;
    const match = /^([^!=]+?)\s*(==|!=|=)\s*(.*)$/.exec(part);
    if (match) {
      out.push({ key: match[1]!.trim(), op: match[2] === '!=' ? '!=' : '=', value: match[3]!.trim() });
    } else if (kind === 'label' && /^!?[A-Za-z0-9./_-]+$/.test(part)) {
      out.push(part.startsWith('!') ? { key: part.slice(1), op: '!exists', value: '' } : { key: part, op: 'exists', value: '' });
    } else {
      return `unable to parse requirement: ${part}`;
    }
  }
  return out;
}

export function matches(selector: Selector, lookup: (key: string) => string | undefined): boolean {
  return selector.every((r) => {
    const value = lookup(r.key);
    if (r.op === 'exists') return value !== undefined;
    if (r.op === '!exists') return value === undefined;
    if (r.op === '=') return value === r.value;
    return value !== r.value;
  });
}

/** The field selectors the real server supports for ResourceSlices. */
export const SLICE_FIELDS: Record<string, (slice: Json) => string | undefined> = {
  'metadata.name': (s) => (s['metadata'] as Json)['name'] as string,
  'spec.nodeName': (s) => ((s['spec'] as Json | undefined)?.['nodeName'] as string | undefined) ?? '',
  'spec.driver': (s) => ((s['spec'] as Json | undefined)?.['driver'] as string | undefined) ?? '',
};

/** True when a slice is selected by both selectors. */
export function sliceSelected(slice: Json, fields: Selector, labels: Selector): boolean {
  const sliceLabels = ((slice['metadata'] as Json)['labels'] ?? {}) as Record<string, string>;
  return matches(fields, (key) => SLICE_FIELDS[key]!(slice)) && matches(labels, (key) => sliceLabels[key]);
}
