// `npm run bench`: runs every benchmark (or those named with --only), then
// writes latest.json and latest.md. Exits 0 when every benchmark ran, whatever
// the goals say; non-zero when one crashed.
//
//   node .bench-build/bench/run.js [--quick] [--only name[,name]] [--out dir] [--list]
import { execFileSync } from 'node:child_process';
import { existsSync, symlinkSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { BenchContext, type Benchmark } from './lib/context.js';
import { Recorder, renderMarkdown, type BenchmarkResult, type Machine, type RunReport } from './lib/report.js';
import { msSince } from './lib/stats.js';
import { discovery } from './discovery.js';
import { kubeletPath } from './kubelet-path.js';
import { health } from './health.js';
import { footprint } from './footprint.js';
import { preparation } from './preparation.js';
import { dra } from './dra.js';

export const BENCHMARKS: readonly Benchmark[] = [discovery, kubeletPath, health, footprint, preparation, dra];

/** The repository root: the nearest directory upwards holding package.json. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('package.json not found above the bench directory');
    dir = up;
  }
}

/**
 * The compiled sources find the .proto files at ../../proto from
 * src/kubelet: in the bench build that is .bench-build/proto, linked here.
 */
function linkProtos(root: string): void {
  const compiledRoot = dirname(dirname(fileURLToPath(import.meta.url)));
  if (compiledRoot === root) return;
  // The native addons too (build/Release, found the same way), for the command line's own runs.
  for (const name of ['proto', 'build']) {
    const link = join(compiledRoot, name);
    if (!existsSync(link) && existsSync(join(root, name))) symlinkSync(join(root, name), link);
  }
}

function git(root: string, args: string[]): string | null {
  try {
    return execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function machine(): Machine {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memoryBytes: os.totalmem(),
    platform: os.platform(),
    arch: os.arch(),
    kernel: os.release(),
    loadAverageStart: os.loadavg(),
    loadAverageEnd: [],
  };
}

export interface RunOptions {
  quick: boolean;
  only: string[] | null;
  outDir: string;
  log?: (line: string) => void;
}

export async function runBenchmarks(options: RunOptions): Promise<{ report: RunReport; crashed: number }> {
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`));
  const unknown = (options.only ?? []).filter((n) => !BENCHMARKS.some((b) => b.name === n));
  if (unknown.length > 0) throw new Error(`unknown benchmark(s) ${unknown.join(', ')}; known: ${BENCHMARKS.map((b) => b.name).join(', ')}`);
  const selected = options.only ? BENCHMARKS.filter((b) => options.only!.includes(b.name)) : [...BENCHMARKS];
  const root = repoRoot();
  linkProtos(root);
  const started = process.hrtime.bigint();
  const report: RunReport = {
    schema: 1,
    tool: 'power-vfio-device-plugin bench',
    date: new Date().toISOString(),
    quick: options.quick,
    only: options.only,
    node: process.version,
    commit: {
      hash: git(root, ['rev-parse', 'HEAD']) ?? 'unknown',
      dirty: ((): boolean | null => {
        const s = git(root, ['status', '--porcelain', '--untracked-files=no']);
        return s === null ? null : s.length > 0;
      })(),
    },
    machine: machine(),
    durationMs: 0,
    benchmarks: [],
    goals: [],
  };
  const ctx = await BenchContext.create({ quick: options.quick, log });
  try {
    for (const b of selected) {
      log(`[bench] ${b.name}: ${b.title}`);
      const rec = new Recorder();
      const t = process.hrtime.bigint();
      let error: string | undefined;
      try {
        await b.run(ctx, rec);
      } catch (err) {
        error = err instanceof Error ? (err.stack ?? err.message) : String(err);
        log(`[bench] ${b.name} CRASHED: ${error}`);
      }
      const result: BenchmarkResult = {
        name: b.name,
        title: b.title,
        ok: error === undefined,
        ...(error !== undefined ? { error: error.split('\n')[0] ?? error } : {}),
        durationMs: msSince(t),
        figures: rec.figures,
        tables: rec.tables,
        checks: rec.checks,
        notes: rec.notes,
      };
      report.benchmarks.push(result);
      for (const f of rec.figures) {
        if (f.goal) {
          log(`[bench]   ${f.label}: ${f.goal.observed.toFixed(3)} ${f.unit} (goal ${f.goal.stat} ${f.goal.atMost ? "≤" : "<"} ${f.goal.limit}) ${f.goal.met ? 'met' : 'MISSED'}`);
          report.goals.push({ benchmark: b.name, figure: f.id, label: f.label, unit: f.unit, ...f.goal });
        }
      }
      for (const c of rec.checks) if (!c.ok) log(`[bench]   check failed: ${c.label} (${c.detail})`);
      log(`[bench] ${b.name} done in ${(result.durationMs / 1000).toFixed(1)} s`);
    }
  } finally {
    await ctx.cleanup();
  }
  report.machine.loadAverageEnd = os.loadavg();
  report.durationMs = msSince(started);
  await mkdir(options.outDir, { recursive: true });
  await writeFile(join(options.outDir, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(join(options.outDir, 'latest.md'), renderMarkdown(report));
  log(`[bench] wrote ${join(options.outDir, 'latest.json')} and latest.md in ${(report.durationMs / 1000).toFixed(0)} s`);
  return { report, crashed: report.benchmarks.filter((b) => !b.ok).length };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string', multiple: true },
      out: { type: 'string' },
      list: { type: 'boolean', default: false },
    },
    strict: true,
  });
  if (values.list) {
    for (const b of BENCHMARKS) process.stdout.write(`${b.name}\t${b.title}\n`);
    return;
  }
  const only = values.only ? values.only.flatMap((s) => s.split(',')).map((s) => s.trim()).filter((s) => s !== '') : null;
  const outDir = resolve(values.out ?? join(repoRoot(), 'bench', 'results'));
  const { crashed } = await runBenchmarks({ quick: values.quick ?? false, only, outDir });
  // gRPC and timers of a crashed benchmark may hold the loop: leave explicitly.
  process.exit(crashed > 0 ? 1 : 0);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`[bench] failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(2);
  });
}
