import { describe, it, expect, afterEach } from 'vitest';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { TopologyWatcher } from '../../src/topology/discover.js';
import { createLogger } from '../../src/log.js';
import { builtinPowerNode } from '../../src/simulate/power-node.js';
import { addGroup, bindDriver, removeGroup, writeSysfsTree } from '../../src/simulate/sysfs-tree.js';
import type { TopologyChange } from '../../src/topology/types.js';
import { buildTree, makeTmpDir, nvme, pnvGroup, waitFor, type TmpDir } from '../helpers/fixtures.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A watcher on the builtin node; the long default poll proves the watches did the work. */
async function started(pollIntervalMs = 60_000, debounceMs = 10, readerThreadMinGroups?: number): Promise<{ tree: TmpDir & { roots: { sysfsRoot: string; devRoot: string } }; watcher: TopologyWatcher; changes: TopologyChange[]; lines: Array<Record<string, unknown>> }> {
  const tree = await buildTree(builtinPowerNode());
  cleanups.push(() => tree.cleanup());
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({ level: 'debug', destination: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } });
  const watcher = new TopologyWatcher(tree.roots, { pollIntervalMs, debounceMs, logger, ...(readerThreadMinGroups !== undefined ? { readerThreadMinGroups } : {}) });
  cleanups.push(() => watcher.stop());
  const changes: TopologyChange[] = [];
  watcher.on('change', (c) => changes.push(c));
  const topo = await watcher.start();
  expect(topo.groups.size).toBe(9);
  return { tree, watcher, changes, lines };
}

describe('TopologyWatcher', () => {
  it('picks up a hot-plugged group through the iommu_groups watch', async () => {
    const { tree, watcher, changes } = await started();
    await addGroup(tree.roots, pnvGroup(9, 0x4, [nvme('0030:05:00.0', { numaNode: 8 })]));
    await waitFor(() => watcher.current().groups.get(9)?.usable, { what: 'group 9 usable' });
    expect(changes.some((c) => c.added.includes(9))).toBe(true);
    expect(watcher.stats().fullScans).toBe(1);
    expect(watcher.stats().polls).toBe(0);
  });

  it('drops a hot-unplugged group', async () => {
    const { tree, watcher, changes } = await started();
    await removeGroup(tree.roots, 8);
    await waitFor(() => !watcher.current().groups.has(8), { what: 'group 8 gone' });
    expect(changes.flatMap((c) => c.removed)).toEqual([8]);
  });

  it('a new /dev/vfio/N rescans that group only', async () => {
    const { tree, watcher, changes, lines } = await started();
    await writeFile(join(tree.dir, 'dev/vfio/0'), '');
    const change = await waitFor(() => changes.find((c) => c.changed.includes(0)), { what: 'change of group 0' });
    expect(change).toMatchObject({ added: [], removed: [], changed: [0] });
    expect(change.topology.groups.get(0)?.devNode).toBe(true);
    expect(watcher.stats()).toMatchObject({ fullScans: 1, polls: 0, groupRescans: 1, recentRescans: [0] });
    expect(lines).toContainEqual(expect.objectContaining({ msg: 'Rescanned groups', groupIds: [0], reason: 'watch' }));
    expect(lines).toContainEqual(expect.objectContaining({ msg: 'Topology changed', changed: [0], level: 'info' }));
  });

  // The builtin node is small: its polls go through libuv's pool unless the reader thread is asked for.
  it.each([
    ['libuv\'s pool', undefined],
    ['the reader thread', 1],
  ])('the poll (through %s) finds a driver rebinding that no watch sees, rescanning only that group', async (_how, readerThreadMinGroups) => {
    const { tree, watcher, changes } = await started(40, 10, readerThreadMinGroups);
    // /dev/vfio/3 stays (the other function keeps vfio-pci), so only the poll can tell.
    await bindDriver(tree.roots, '0030:01:00.1', 'mlx5_core');
    // bindDriver removes the old driver link before it makes the new one: a poll in between sees
    // the function unbound (a change of group 3, still usable). Wait for the final state.
    const g = await waitFor(() => {
      const group = watcher.current().groups.get(3);
      return group?.usable === false ? group : null;
    }, { what: 'group 3 unusable' });
    const change = changes.find((c) => c.changed.includes(3));
    expect(change?.changed).toEqual([3]);
    expect(changes.every((c) => c.added.length === 0 && c.removed.length === 0 && c.changed.join() === '3')).toBe(true);
    expect(g?.problems).toEqual(['Function 0030:01:00.1 is bound to host driver mlx5_core; bind it to vfio-pci']);
    const stats = watcher.stats();
    expect(stats.fullScans).toBe(1);
    expect(new Set(stats.recentRescans)).toEqual(new Set([3]));
  });

  it.each([
    ['libuv\'s pool', undefined],
    ['the reader thread', 1],
  ])('the poll (through %s) notices an EEH freeze', async (_how, readerThreadMinGroups) => {
    const { tree, watcher } = await started(40, 10, readerThreadMinGroups);
    await writeFile(join(tree.dir, 'sys/bus/pci/devices/0035:01:00.0/eeh_pe_state'), '0x00000000 0x00000801\n');
    await waitFor(() => watcher.current().groups.get(5)?.eeh?.frozen, { what: 'group 5 frozen' });
  });

  it('refresh() rescans everything and emits only on a change', async () => {
    // The /dev/vfio watch sees the removal below too: with the usual 10 ms debounce its rescan can
    // publish the change before refresh() runs (the rm resolving late on a loaded machine), and
    // refresh() would then find nothing new. An hour of debounce leaves the work to refresh().
    const { tree, watcher, changes } = await started(60_000, 3_600_000);
    const none = await watcher.refresh();
    expect(none).toMatchObject({ added: [], removed: [], changed: [] });
    expect(changes).toHaveLength(0);
    await rm(join(tree.dir, 'dev/vfio/vfio'));
    const c = await watcher.refresh();
    expect(c.containerNodeChanged).toBe(true);
    expect(watcher.current().containerNode).toBe(false);
    expect(watcher.stats().fullScans).toBeGreaterThanOrEqual(2);
  });

  it('starts on a node without sysfs groups or /dev/vfio and finds them when they appear', async () => {
    const tmp = await makeTmpDir();
    cleanups.push(() => tmp.cleanup());
    const roots = { sysfsRoot: tmp.dir, devRoot: tmp.dir };
    const watcher = new TopologyWatcher(roots, { pollIntervalMs: 30, debounceMs: 5 });
    cleanups.push(() => watcher.stop());
    const first = await watcher.start();
    expect(first.groups.size).toBe(0);
    await writeSysfsTree(tmp.dir, builtinPowerNode());
    await waitFor(() => watcher.current().groups.size === 9 && watcher.current().containerNode, { what: 'nine groups' });
    // Once the directories exist, the watches are armed: unplug is seen too.
    await removeGroup(roots, 7);
    await waitFor(() => !watcher.current().groups.has(7), { what: 'group 7 gone' });
  });

  it('a throwing listener does not stop later updates', async () => {
    const { tree, watcher } = await started();
    watcher.on('change', () => {
      throw new Error('listener bug');
    });
    await writeFile(join(tree.dir, 'dev/vfio/0'), '');
    await waitFor(() => watcher.current().groups.get(0)?.devNode, { what: 'group 0 node' });
    await rm(join(tree.dir, 'dev/vfio/0'));
    await waitFor(() => watcher.current().groups.get(0)?.devNode === false, { what: 'group 0 node gone' });
  });

  it('stop() releases every watch and timer and emits nothing afterwards', async () => {
    const count = (): Record<string, number> => {
      const c: Record<string, number> = {};
      for (const r of process.getActiveResourcesInfo()) c[r] = (c[r] ?? 0) + 1;
      return c;
    };
    const before = count();
    const { tree, watcher, changes } = await started(20);
    // Let a poll run so the timer chain is live.
    await waitFor(() => watcher.stats().polls > 0, { what: 'a poll' });
    const during = count();
    expect((during['FSEventWrap'] ?? 0) - (before['FSEventWrap'] ?? 0)).toBe(2);
    await watcher.stop();
    const after = count();
    expect(after['FSEventWrap'] ?? 0).toBe(before['FSEventWrap'] ?? 0);
    expect(after['Timeout'] ?? 0).toBeLessThanOrEqual(before['Timeout'] ?? 0);
    const polls = watcher.stats().polls;
    await writeFile(join(tree.dir, 'dev/vfio/0'), '');
    await bindDriver(tree.roots, '0030:01:00.1', 'mlx5_core');
    // Nothing may run after stop: give a would-be timer several intervals.
    await new Promise((r) => setTimeout(r, 100));
    expect(watcher.stats().polls).toBe(polls);
    expect(changes).toHaveLength(0);
  });
});
