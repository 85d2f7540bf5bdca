import { describe, it, expect } from 'vitest';
import { serializeByGroup } from '../../src/prepare/serialize.js';
import { parseConfigText } from '../../src/config/load.js';
import { fn, group } from '../helpers/groups.js';

const resource = parseConfigText('resources: [{name: a.com/x, selectors: {all: true}}]').resources[0]!;
const g = (id: number) => group(id, [fn(`0030:0${id}:00.0`)]);

describe('one preparation per group at a time', () => {
  it('shares an identical request in flight and queues an overlapping one', async () => {
    const log: string[] = [];
    const open = new Set<number>();
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    let calls = 0;
    const prepare = serializeByGroup(async (_r, groups) => {
      calls += 1;
      for (const x of groups) {
        // A group opens once: a concurrent preparation would be EBUSY.
        if (open.has(x.id)) throw new Error(`EBUSY ${x.id}`);
        open.add(x.id);
      }
      log.push(`start ${groups.map((x) => x.id).join(',')}`);
      if (calls === 1) await gate;
      for (const x of groups) open.delete(x.id);
      log.push(`end ${groups.map((x) => x.id).join(',')}`);
    });
    const a = prepare(resource, [g(1), g(2)]);
    const same = prepare(resource, [g(2), g(1)]);
    const overlap = prepare(resource, [g(2), g(3)]);
    const other = prepare(resource, [g(4)]);
    await other;
    release();
    await Promise.all([a, same, overlap]);
    expect(calls).toBe(3);
    expect(log).toEqual(['start 1,2', 'start 4', 'end 4', 'end 1,2', 'start 2,3', 'end 2,3']);
    // Later calls prepare anew.
    await prepare(resource, [g(1), g(2)]);
    expect(calls).toBe(4);
  });

  it('a failure reaches every waiter of the same request and does not block the next', async () => {
    let fail = true;
    const prepare = serializeByGroup(async () => {
      if (fail) throw new Error('kernel says no');
    });
    const results = await Promise.allSettled([prepare(resource, [g(1)]), prepare(resource, [g(1)])]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    fail = false;
    await expect(prepare(resource, [g(1)])).resolves.toBeUndefined();
  });
});
