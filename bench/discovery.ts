// Discovery at 16..4096 groups: full scans, the per-group cost as the node
// grows, how long the event loop is held during a full scan, the safety
// poll's fingerprint pass, one group rescanned on its own, and the watcher
// reacting to one change by rescanning that group only.
import { readFileSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { discoverGroup, discoverTopology, fingerprintGroups, listGroupIds, listVfioDevNodes, TopologyWatcher } from '../src/topology/discover.js';
import type { DiscoveryRoots, TopologyChange } from '../src/topology/types.js';
import { setEehState } from '../src/simulate/sysfs-tree.js';
import { EEH_HEALTHY } from '../test/helpers/fixtures.js';
import { largeNodeAddress, type BenchContext, type Benchmark } from './lib/context.js';
import type { Recorder } from './lib/report.js';
import { msSince, summarize } from './lib/stats.js';

const FROZEN = '0x00000000 0x00000801';

/** Resolves with the time (hrtime) of the first change event for which `pred` holds. */
function nextChange(watcher: TopologyWatcher, pred: (c: TopologyChange) => boolean, timeoutMs: number): Promise<bigint> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      watcher.off('change', on);
      reject(new Error(`no matching topology change within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (c: TopologyChange): void => {
      if (!pred(c)) return;
      const at = process.hrtime.bigint();
      clearTimeout(timer);
      watcher.off('change', on);
      resolve(at);
    };
    watcher.on('change', on);
  });
}

/** What one safety poll reads when nothing changed: the group list, /dev/vfio and every group's fingerprint. */
async function fingerprintPass(roots: DiscoveryRoots): Promise<number> {
  const [listing, dev] = await Promise.all([listGroupIds(roots), listVfioDevNodes(roots)]);
  const ids = [...new Set([...listing.ids, ...dev.groups])];
  // As the watcher's poll does it: through a reader thread from WORKER_MIN_GROUPS groups on.
  const prints = await fingerprintGroups(roots, ids, dev.groups);
  return prints.filter((p) => p !== null).length;
}

/** CPU time of the main thread so far, ms, from the scheduler's per-thread count; null where /proc has none. */
function mainThreadCpuMs(): number | null {
  try {
    return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
  } catch {
    return null;
  }
}

interface LoopHold {
  /** Longest gap between two ticks of a 1 ms interval timer, ms. */
  worstGapMs: number;
  /** CPU time the main thread itself ran within that gap, ms (the rest of the gap it was waiting for a core). */
  cpuInWorstGapMs: number | null;
  /** The most CPU time the main thread ran between two ticks, ms: the longest the scan's own work held the loop. */
  worstCpuBetweenTicksMs: number | null;
  /** RSS at its highest during the scan minus RSS before it, MiB. */
  rssRiseMiB: number;
}

/**
 * One full scan under a 1 ms interval timer. A gap between ticks is time the
 * event loop could not turn: the scan's own work on the main thread, or, on a
 * shared machine, the main thread waiting for a core. The thread's own CPU
 * time across the worst gap tells the two apart.
 */
async function scanWatchingTheLoop(roots: DiscoveryRoots, n: number): Promise<LoopHold> {
  const rss0 = process.memoryUsage.rss();
  let rssPeak = rss0;
  let last = performance.now();
  let lastCpu = mainThreadCpuMs();
  let worstGapMs = 0;
  let cpuInWorstGapMs: number | null = null;
  let worstCpuBetweenTicksMs: number | null = null;
  const tick = (): void => {
    const now = performance.now();
    const cpu = mainThreadCpuMs();
    const ran = cpu !== null && lastCpu !== null ? cpu - lastCpu : null;
    if (now - last > worstGapMs) {
      worstGapMs = now - last;
      cpuInWorstGapMs = ran;
    }
    if (ran !== null && ran > (worstCpuBetweenTicksMs ?? -1)) worstCpuBetweenTicksMs = ran;
    last = now;
    lastCpu = cpu;
    rssPeak = Math.max(rssPeak, process.memoryUsage.rss());
  };
  const timer = setInterval(tick, 1);
  try {
    const topo = await discoverTopology(roots);
    if (topo.groups.size !== n) throw new Error(`full scan found ${topo.groups.size} groups, expected ${n}`);
    tick();
  } finally {
    clearInterval(timer);
  }
  return { worstGapMs, cpuInWorstGapMs, worstCpuBetweenTicksMs, rssRiseMiB: (rssPeak - rss0) / 2 ** 20 };
}

async function runSize(ctx: BenchContext, rec: Recorder, n: number, perGroup: Map<number, number>, rows: (string | number)[][]): Promise<void> {
  const tree = await ctx.tree(n);
  const { roots } = tree;
  const q = ctx.quick;

  // Full scans (one warm-up, not counted).
  const warm = await discoverTopology(roots);
  if (warm.groups.size !== n) throw new Error(`full scan found ${warm.groups.size} groups, expected ${n}`);
  const reps = q ? 2 : n >= 4096 ? 5 : n >= 1024 ? 7 : 10;
  const full: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = process.hrtime.bigint();
    const topo = await discoverTopology(roots);
    full.push(msSince(t));
    if (topo.groups.size !== n) throw new Error(`full scan found ${topo.groups.size} groups, expected ${n}`);
  }
  const fullFig = rec.samples(
    `full-scan-${n}`,
    `full scan, ${n} groups`,
    'ms',
    full,
    n === 4096 ? { text: 'full scan of 4096 groups: median under 1 s', stat: 'median', limit: 1000 } : undefined,
  );
  const perGroupSamples = full.map((ms) => (ms * 1000) / n);
  rec.samples(`full-scan-per-group-${n}`, `full scan per group, ${n} groups`, 'µs/group', perGroupSamples);
  perGroup.set(n, summarize(perGroupSamples).median);

  // The event loop during a full scan (separate scans: the 1 ms timer costs time of its own).
  const holds: LoopHold[] = [];
  for (let i = 0; i < (q ? 2 : 3); i++) holds.push(await scanWatchingTheLoop(roots, n));
  const holdFig = rec.samples(
    `full-scan-loop-block-${n}`,
    `full scan, longest event-loop block (worst gap of a 1 ms timer), ${n} groups`,
    'ms',
    holds.map((h) => h.worstGapMs),
    n === 4096 ? { text: 'the event loop never blocked longer than 20 ms during a full scan of 4096 groups', stat: 'max', limit: 20 } : undefined,
  );
  const cpuInGaps = holds.map((h) => h.cpuInWorstGapMs).filter((v): v is number => v !== null);
  if (cpuInGaps.length > 0) {
    rec.samples(`full-scan-loop-block-cpu-${n}`, `full scan, main thread's own CPU time within the longest block, ${n} groups`, 'ms', cpuInGaps);
  }
  const cpuRuns = holds.map((h) => h.worstCpuBetweenTicksMs).filter((v): v is number => v !== null);
  if (cpuRuns.length > 0) {
    rec.samples(`full-scan-loop-cpu-run-${n}`, `full scan, most main-thread CPU time between two timer ticks, ${n} groups`, 'ms', cpuRuns);
  }
  rec.samples(`full-scan-rss-rise-${n}`, `full scan, RSS at its peak minus before the scan (reader thread included), ${n} groups`, 'MiB', holds.map((h) => h.rssRiseMiB));

  // The safety poll's quiet pass.
  const prints: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = process.hrtime.bigint();
    const count = await fingerprintPass(roots);
    prints.push(msSince(t));
    if (count !== n) throw new Error(`fingerprint pass saw ${count} groups, expected ${n}`);
  }
  const printFig = rec.samples(`poll-pass-${n}`, `safety poll, quiet (fingerprint every group), ${n} groups`, 'ms', prints);

  // One group scanned on its own (what a rescan reads).
  const single: number[] = [];
  const singleReps = q ? 5 : 50;
  for (let i = 0; i < singleReps; i++) {
    const id = (i * 7919) % n;
    const t = process.hrtime.bigint();
    const { group } = await discoverGroup(roots, id);
    single.push(msSince(t));
    if (group?.functions.length !== tree.functionsPerGroup) throw new Error(`group ${id} rescanned with ${group?.functions.length} functions`);
  }
  const singleFig = rec.samples(`group-scan-${n}`, `one group scanned alone (discoverGroup), ${n} groups`, 'ms', single);

  // The watcher: /dev/vfio/N vanishes and comes back, as devtmpfs reports a
  // group losing and regaining its last vfio-bound device. No poll runs (1 h
  // period), no debounce: the figure is event delivery plus the rescan and
  // the re-publication of the topology.
  const watcher = new TopologyWatcher(roots, { pollIntervalMs: 3_600_000, debounceMs: 0 });
  const rescans: number[] = [];
  let statsLine = '';
  try {
    await watcher.start();
    const before = watcher.stats();
    const trials = q ? 3 : 15;
    for (let i = 0; i < trials; i++) {
      const id = (i * 104_729 + 17) % n;
      const node = join(roots.devRoot, 'dev', 'vfio', String(id));
      for (const present of [false, true]) {
        const changed = nextChange(
          watcher,
          (c) => c.changed.includes(id) && c.topology.groups.get(id)?.usable === present,
          30_000,
        );
        if (present) await writeFile(node, '');
        else await rm(node);
        const t = process.hrtime.bigint();
        const at = await changed;
        rescans.push(Number(at - t) / 1e6);
      }
    }
    const after = watcher.stats();
    const fullScans = after.fullScans - before.fullScans;
    const groupRescans = after.groupRescans - before.groupRescans;
    statsLine = `${rescans.length} changes: fullScans +${fullScans}, groupRescans +${groupRescans}`;
    rec.check(`${n} groups: each change rescans one group, no full scan`, fullScans === 0 && groupRescans === rescans.length, statsLine);
  } finally {
    await watcher.stop();
  }
  const rescanFig = rec.samples(
    `rescan-one-change-${n}`,
    `rescan after one change (inotify on /dev/vfio, no debounce), ${n} groups`,
    'ms',
    rescans,
    n === 4096 ? { text: 'rescan after one change under 5 ms at 4096 groups', stat: 'median', limit: 5 } : undefined,
  );

  // A change only the safety poll can see (EEH freeze): still one group rescanned.
  const pollWatcher = new TopologyWatcher(roots, { pollIntervalMs: 100 });
  try {
    await pollWatcher.start();
    const id = (n >> 1) + 1 < n ? (n >> 1) + 1 : 0;
    const address = largeNodeAddress(id);
    const before = pollWatcher.stats();
    const frozen = nextChange(pollWatcher, (c) => c.changed.includes(id), 60_000);
    await setEehState(roots, address, FROZEN);
    await frozen;
    const mid = pollWatcher.stats();
    const healthy = nextChange(pollWatcher, (c) => c.changed.includes(id), 60_000);
    await setEehState(roots, address, EEH_HEALTHY);
    await healthy;
    const after = pollWatcher.stats();
    const ok = after.fullScans === before.fullScans && after.groupRescans - before.groupRescans === 2;
    rec.check(
      `${n} groups: an EEH freeze and its recovery found by the safety poll rescan that group only`,
      ok,
      `fullScans +${after.fullScans - before.fullScans}, groupRescans +${after.groupRescans - before.groupRescans} (freeze +${mid.groupRescans - before.groupRescans}), polls ${after.polls - before.polls}, rescanned ${after.recentRescans.slice(-2).join(',')}`,
    );
  } finally {
    await pollWatcher.stop();
  }

  rows.push([
    n,
    n * tree.functionsPerGroup,
    (tree.buildMs / 1000).toFixed(1),
    fullFig.summary!.median,
    perGroup.get(n)!,
    holdFig.summary!.max,
    printFig.summary!.median,
    (printFig.summary!.median * 1000) / n,
    singleFig.summary!.median,
    rescanFig.summary!.median,
    rescanFig.summary!.max,
    statsLine,
  ]);
}

export const discovery: Benchmark = {
  name: 'discovery',
  title: 'Discovery',
  async run(ctx, rec) {
    const sizes = ctx.quick ? [16, 64] : [16, 256, 1024, 4096];
    const perGroup = new Map<number, number>();
    const rows: (string | number)[][] = [];
    for (const n of sizes) {
      ctx.log(`  ${n} groups`);
      await runSize(ctx, rec, n, perGroup, rows);
    }
    rec.table(
      'Scaling, side by side (medians)',
      ['groups', 'functions', 'tree written (s)', 'full scan (ms)', 'full scan per group (µs)', 'longest loop block (ms)', 'quiet poll (ms)', 'quiet poll per group (µs)', 'one group alone (ms)', 'rescan after one change (ms)', 'rescan worst (ms)', 'watcher counters'],
      rows,
    );
    const base = ctx.quick ? 16 : 256;
    const top = sizes[sizes.length - 1]!;
    const ratio = perGroup.get(top)! / perGroup.get(base)!;
    rec.value(
      `per-group-ratio-${top}-vs-${base}`,
      `full-scan cost per group, ${top} groups / ${base} groups`,
      'ratio',
      ratio,
      { text: `cost per group stays flat (taken here as: the ${top}-group cost per group under 1.5x the ${base}-group one)`, stat: 'value', limit: 1.5 },
    );
    rec.note(
      'Rescan figures time one change from the moment the file system change is complete to the watcher\'s `change` event, with the debounce set to 0 (the daemon\'s default debounce adds 50 ms on purpose, to merge bursts). The change is /dev/vfio/N vanishing and coming back, which is what devtmpfs reports when a group loses or regains its last vfio-bound device; changes real sysfs does not announce (driver of one function, EEH) wait for the safety poll, whose cost is the "quiet poll" row.',
    );
    rec.note(
      'Full scans and quiet polls of 128 groups or more read through a worker thread (sysfs-worker.ts); smaller ones and one group rescanned alone go through libuv\'s pool. The longest event-loop block is the worst gap between ticks of a 1 ms timer during a scan; on a shared machine part of it is the main thread waiting for a core, which the "main thread\'s own CPU time" rows separate out (from /proc/self/task/<pid>/schedstat): the longest stretch the scan\'s own work held the loop is the "most main-thread CPU time between two timer ticks" row.',
    );
    rec.note('The trees are real directories and symlinks on the machine\'s file system (here tmpfs or disk, not sysfs): a real sysfs read costs differently, so the shape (per-group cost, one-group rescans) matters more than the absolute times.');
  },
};
