// The benchmark harness itself (npm run bench) at tiny sizes, so it cannot
// rot: it compiles, runs every benchmark with --quick and writes a report of
// the agreed shape. Timings and goals are not asserted here.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');

interface Summary {
  n: number;
  median: number;
  p10: number;
  p90: number;
  min: number;
  max: number;
}

let out: string;
let run: ReturnType<typeof spawnSync>;

beforeAll(async () => {
  out = await mkdtemp('/tmp/pvdp-bt-');
  const build = spawnSync(process.execPath, [tsc, '-p', join(root, 'bench', 'tsconfig.json')], { cwd: root, encoding: 'utf8' });
  expect(build.status, `${build.stdout}${build.stderr}`).toBe(0);
  run = spawnSync(process.execPath, [join(root, '.bench-build', 'bench', 'run.js'), '--quick', '--out', out], {
    cwd: root,
    encoding: 'utf8',
    timeout: 90_000,
  });
}, 120_000);

afterAll(async () => {
  await rm(out, { recursive: true, force: true });
});

describe('npm run bench --quick', () => {
  it('runs every benchmark without a crash and exits 0', () => {
    expect(run.status, `${String(run.stdout)}${String(run.stderr)}`).toBe(0);
  });

  it('writes latest.json in the agreed shape', async () => {
    const report = JSON.parse(await readFile(join(out, 'latest.json'), 'utf8'));
    expect(report).toMatchObject({ schema: 1, quick: true, node: process.version });
    expect(report.commit.hash).toMatch(/^([0-9a-f]{40}|unknown)$/);
    expect(report.machine.cores).toBeGreaterThan(0);
    expect(report.machine.memoryBytes).toBeGreaterThan(0);
    expect(typeof report.machine.cpuModel).toBe('string');
    expect(report.benchmarks.map((b: { name: string }) => b.name)).toEqual(['discovery', 'kubelet', 'health', 'footprint', 'preparation', 'dra']);
    for (const b of report.benchmarks) {
      expect(b.ok, `${b.name}: ${b.error}`).toBe(true);
      expect(b.figures.length, b.name).toBeGreaterThan(0);
      for (const f of b.figures) {
        expect(typeof f.label).toBe('string');
        expect(typeof f.unit).toBe('string');
        if (f.summary) {
          const s: Summary = f.summary;
          expect(s.n).toBeGreaterThan(0);
          expect(s.min).toBeLessThanOrEqual(s.median);
          expect(s.median).toBeLessThanOrEqual(s.max);
          expect(s.p10).toBeLessThanOrEqual(s.p90);
        } else {
          expect(Number.isFinite(f.value), f.id).toBe(true);
        }
        if (f.goal) expect(typeof f.goal.met).toBe('boolean');
      }
      for (const c of b.checks) expect(c.ok, `${b.name}: ${c.label} (${c.detail})`).toBe(true);
    }
    // Every goal of the issue is judged somewhere.
    const goals = report.goals.map((g: { figure: string }) => g.figure);
    for (const id of ['allocate-serial', 'allocate-burst', 'restart-to-registered', 'idle-rss', 'idle-cpu-percent-uevents', 'alloc-heap-growth']) {
      expect(goals).toContain(id);
    }
    expect(goals.some((g: string) => g.startsWith('fault-to-listandwatch-'))).toBe(true);
  });

  it('writes latest.md with the machine, the figures and the goals', async () => {
    const md = await readFile(join(out, 'latest.md'), 'utf8');
    for (const text of ['# Benchmark results', '| CPU |', '| Node.js |', '| commit |', '## Goals', '| median |', 'Discovery', 'Footprint']) {
      expect(md).toContain(text);
    }
  });
});
