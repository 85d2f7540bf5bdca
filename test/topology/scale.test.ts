// Scale: large nodes scan without blocking the event loop, and one group
// rescans on its own. Timings are the benchmarks' business (npm run bench).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { discoverGroup, discoverTopology, TopologyWatcher } from '../../src/topology/discover.js';
import { buildTree, largeNode, type TestTree } from '../helpers/fixtures.js';

/**
 * How many times the event loop turned while `work` ran. An asynchronous scan
 * yields to the loop between reads; a synchronous one would not turn it at all.
 * Counting turns, not milliseconds, keeps the test steady on a loaded machine.
 */
async function loopTurns<T>(work: () => Promise<T>): Promise<{ result: T; turns: number }> {
  let turns = 0;
  let running = true;
  const spin = (): void => {
    if (!running) return;
    turns += 1;
    setImmediate(spin);
  };
  setImmediate(spin);
  try {
    return { result: await work(), turns };
  } finally {
    running = false;
  }
}

describe('a node with 256 groups of 4 functions', () => {
  let tree: TestTree;
  beforeAll(async () => {
    tree = await buildTree(largeNode(256, 4));
  }, 120_000);
  afterAll(async () => {
    await tree.cleanup();
  });

  it('scans fully while the event loop keeps ticking', async () => {
    const { result: topo, turns } = await loopTurns(() => discoverTopology(tree.roots));
    expect(topo.groups.size).toBe(256);
    expect(topo.issues).toEqual([]);
    expect([...topo.groups.values()].every((g) => g.usable && g.functions.length === 4)).toBe(true);
    // The loop kept turning throughout: a scan that blocked it would let it turn once or twice.
    // (I/O completions batch per turn, so the count depends on the machine's speed, not on the groups.)
    expect(turns).toBeGreaterThan(16);
  });

  it('rescans one group on its own', async () => {
    const { group, issues } = await discoverGroup(tree.roots, 100);
    expect(issues).toEqual([]);
    expect(group?.functions).toHaveLength(4);
  });

  it('a quiet poll rescans nothing', async () => {
    const watcher = new TopologyWatcher(tree.roots, { pollIntervalMs: 20 });
    try {
      await watcher.start();
      const polls = watcher.stats().polls;
      await new Promise<void>((resolve, reject) => {
        const deadline = Date.now() + 10_000;
        const check = (): void => {
          if (watcher.stats().polls >= polls + 2) resolve();
          else if (Date.now() > deadline) reject(new Error('No polls ran'));
          else setTimeout(check, 10);
        };
        check();
      });
      expect(watcher.stats()).toMatchObject({ fullScans: 1, groupRescans: 0 });
    } finally {
      await watcher.stop();
    }
  });
});
