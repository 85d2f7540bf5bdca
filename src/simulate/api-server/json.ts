// Plain JSON objects as the API server stand-in stores them, the two patch
// flavours the real server applies to the objects it serves, and the counters
// that give stored objects their resourceVersion and uid.

export type Json = Record<string, unknown>;

export function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function clone<T>(value: T): T {
  return structuredClone(value);
}

/** The server's time as it writes it into objects: seconds, UTC. */
export function serverTime(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** One resourceVersion sequence and one uid sequence for every kind the server stores. */
export class Versions {
  private next = 1;
  private uids = 0;

  /** A fresh resourceVersion. */
  bump(): string {
    return String(this.next++);
  }

  /** The newest resourceVersion handed out (what a list reports). */
  get latest(): string {
    return String(this.next - 1);
  }

  /** A number for a fresh uid. */
  uid(): number {
    return ++this.uids;
  }
}

/** RFC 7386 JSON merge patch. */
export function jsonMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const result: Json = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = jsonMergePatch(result[key], value);
  }
  return result;
}

/** List fields merged by a key in strategic merge patch (the ones Node and Event use here). */
const MERGE_KEYS: Record<string, string> = { conditions: 'type', addresses: 'type', taints: 'key' };

/** Strategic merge patch for the fields we use; other lists are replaced as the server does. */
export function strategicMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const result: Json = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith('$')) continue;
    const mergeKey = MERGE_KEYS[key];
    if (value === null) {
      delete result[key];
    } else if (mergeKey && Array.isArray(value)) {
      const current = Array.isArray(result[key]) ? [...(result[key] as unknown[])] : [];
      for (const item of value) {
        if (!isObject(item)) continue;
        const index = current.findIndex((c) => isObject(c) && c[mergeKey] === item[mergeKey]);
        if (item['$patch'] === 'delete') {
          if (index >= 0) current.splice(index, 1);
        } else if (index >= 0) {
          current[index] = strategicMergePatch(current[index], item);
        } else {
          current.push(strategicMergePatch({}, item));
        }
      }
      result[key] = current;
    } else {
      result[key] = strategicMergePatch(result[key], value);
    }
  }
  return result;
}

/** A name from metadata.name, or one made from metadata.generateName as the server makes it. */
export function nameFor(metadata: Json): string | undefined {
  if (typeof metadata['name'] === 'string' && metadata['name']) return metadata['name'];
  if (typeof metadata['generateName'] === 'string') return `${metadata['generateName']}${Math.random().toString(36).slice(2, 7)}`;
  return undefined;
}
