#!/usr/bin/env node
// The kernel preparation benchmark: boots the kernel test harness's guests (Debian 6.12 ppc64le
// under qemu TCG) with more RAM, and inside each runs bench/kernel/prep-bench.mjs: the time and the
// number of ioctls to prepare 256 MiB and 1 GiB windows with prepareContainer (one MAP_DMA per
// contiguous range) against mapping the same memory in the same window 1, 8 and 32 IOMMU pages per
// MAP_DMA (the way a POWER guest maps through hypercalls). Medians over the repeats; writes
// bench/results/kernel-preparation.{json,md}.
//
//   node bench/kernel/run.mjs [--machine pseries|powernv9]... [--sizes 256M,1G] [--repeats 3]
//                             [--chunks 1,8,32] [--memory 4G] [--no-write] [--verbose]
//
// TCG emulates the CPU: absolute times are not a POWER machine's; the ratios are the result.
import { writeFileSync, mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { provision, runInGuest, SkipError, REPO_ROOT } from '../../test/kernel/harness.mjs';
import { buildAddonPpc64le } from '../../test/kernel/lib/addon.mjs';
import { buildDist } from '../../test/kernel/suites/contract.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const argv = process.argv.slice(2);
const o = { machines: [], sizes: '256M,1G', repeats: '3', chunks: '1,8,32', memory: '4G', write: true, verbose: false };
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--machine') o.machines.push(argv[++i]);
  else if (a === '--sizes') o.sizes = argv[++i];
  else if (a === '--repeats') o.repeats = argv[++i];
  else if (a === '--chunks') o.chunks = argv[++i];
  else if (a === '--memory') o.memory = argv[++i];
  else if (a === '--no-write') o.write = false;
  else if (a === '--verbose' || a === '-v') o.verbose = true;
  else throw new Error(`unknown argument ${a}`);
}
if (!o.machines.length) o.machines = ['pseries', 'powernv9'];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? null : n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const fmtSize = (n) => (n >= 2 ** 30 ? `${n / 2 ** 30} GiB` : `${n / 2 ** 20} MiB`);
const r1 = (x) => Math.round(x * 10) / 10;
const r2 = (x) => Math.round(x * 100) / 100;

let manifest;
try {
  manifest = provision();
} catch (err) {
  if (err instanceof SkipError) {
    console.log(`SKIP: kernel preparation benchmark: ${err.reason}`);
    process.exit(Number(process.env.PVDP_KERNEL_SKIP_EXIT ?? 0));
  }
  throw err;
}
const dist = buildDist();
const addon = buildAddonPpc64le({ repoRoot: REPO_ROOT });
const node = addon.nodeFiles.find((f) => f.endsWith('/vfio_native.node')) ?? addon.nodeFiles[0];
const files = {
  'package.json': JSON.stringify({ name: 'pvdp-guest-bench', private: true, type: 'module' }),
  dist: { hostDir: dist, filter: (rel) => !/\.(map|d\.ts)$/.test(rel) && !rel.endsWith('.tsbuildinfo') },
  'vfio_native.node': { hostPath: node, mode: 0o755 },
  'prep-bench.mjs': { hostPath: join(HERE, 'prep-bench.mjs'), mode: 0o644 },
};
const command = `exec node prep-bench.mjs --dist /payload/dist --addon /payload/vfio_native.node --sizes ${o.sizes} --repeats ${o.repeats} --chunks ${o.chunks}`;

const t0 = Date.now();
const runs = await Promise.all(
  o.machines.map(async (machine) => {
    const r = await runInGuest({
      machine,
      files,
      command,
      timeoutMs: 1_200_000,
      memory: o.memory,
      devices: 1,
      onOutput: o.verbose ? (s) => process.stderr.write(s.replace(/^/gm, `[${machine}] `)) : undefined,
    });
    const rows = [...r.payloadOutput.matchAll(/^BENCH (\{.*\})$/gm)].map((m) => JSON.parse(m[1]));
    const errors = [...r.payloadOutput.matchAll(/^BENCH-ERROR (.*)$/gm)].map((m) => m[1]);
    const header = /^# kernel preparation benchmark .*$/m.exec(r.payloadOutput)?.[0] ?? null;
    if (!rows.length || r.exitCode !== 0) {
      console.error(`${machine}: exit ${r.exitCode}${r.error ? ` (${r.error})` : ''}; ${errors.join(' | ')}`);
      console.error(r.output.trimEnd().split('\n').slice(-30).join('\n'));
    }
    return { machine, exitCode: r.exitCode, error: r.error, totalMs: r.totalMs, header, rows, errors };
  }),
);

// Summaries: per machine and size, medians over repeats.
const summary = [];
for (const run of runs) {
  const bySize = new Map();
  for (const row of run.rows) bySize.set(row.size, [...(bySize.get(row.size) ?? []), row]);
  for (const [size, rows] of bySize) {
    const first = rows[0];
    const prepareMs = median(rows.map((r) => r.prepare.ms));
    const mapInPrepareMs = median(rows.map((r) => r.prepare.mapDmaMs));
    const wholeMs = median(rows.map((r) => r.map.whole.ms));
    const entry = {
      machine: run.machine,
      platform: first.platform,
      size,
      repeats: rows.length,
      iommu: first.iommu,
      window: first.window,
      pages: first.pages,
      prepare: { ms: r1(prepareMs), ioctls: first.prepare.ioctls, mapDmaCalls: first.prepare.mapDmaCalls, mapDmaMs: r1(mapInPrepareMs), counts: first.prepare.counts },
      remapWhole: { calls: first.map.whole.calls, ms: r1(wholeMs) },
      chunked: [],
    };
    for (const key of Object.keys(first.map).filter((k) => k !== 'whole')) {
      const ms = median(rows.map((r) => r.map[key].ms));
      const calls = first.map[key].calls;
      // The same preparation with the mapping done N pages per call: its other steps as measured,
      // the single MAP_DMA replaced by the chunked mapping of the same memory into the same window.
      const equivalentPrepareMs = prepareMs - mapInPrepareMs + ms;
      entry.chunked.push({
        pagesPerCall: first.map[key].pagesPerCall,
        calls,
        ms: r1(ms),
        usPerCall: r1((ms * 1000) / calls),
        mapRatio: r1(ms / wholeMs),
        prepareEquivalent: { ms: r1(equivalentPrepareMs), ioctls: first.prepare.ioctls - first.prepare.mapDmaCalls + calls, ratio: r2(equivalentPrepareMs / prepareMs) },
      });
    }
    summary.push(entry);
  }
}

const result = {
  benchmark: 'kernel-preparation',
  date: new Date().toISOString(),
  kernel: manifest.kernel.kver,
  node: manifest.node.version,
  qemu: 'qemu-system-ppc64 (TCG)',
  guestMemory: o.memory,
  note: 'TCG: the CPU is emulated, absolute times are not those of a POWER machine; compare ratios. prepare = prepareContainer end to end (open, SET_IOMMU, memfd, REGISTER_MEMORY/ENABLE, window, one MAP_DMA per contiguous range). remapWhole / chunked = the same memory unmapped and mapped again in the same container and window, one call / N IOMMU pages per call. prepareEquivalent = prepare with its MAP_DMA time replaced by the chunked mapping.',
  runs: runs.map((r) => ({ machine: r.machine, exitCode: r.exitCode, error: r.error, totalMs: r.totalMs, header: r.header, errors: r.errors })),
  summary,
  rows: runs.flatMap((r) => r.rows.map((row) => ({ machine: r.machine, ...row }))),
};

const lines = [];
lines.push('# Kernel preparation benchmark (real kernel in a TCG guest)');
lines.push('');
lines.push(`Generated by \`node bench/kernel/run.mjs\` on ${result.date.slice(0, 10)}: Debian ${result.kernel} ppc64le under ${result.qemu}, guest RAM ${o.memory}, node ${result.node}. ` +
  `Medians over ${o.repeats} repeats. **TCG emulates the CPU: absolute times are not a POWER machine's; read the ratios.**`);
lines.push('');
lines.push('- **prepare**: `prepareContainer` end to end, as the handoff mode runs it (open group and container, SET_IOMMU, memfd, REGISTER_MEMORY (v2) or ENABLE (v1), window, one MAP_DMA per contiguous range); ioctls counted through a counting proxy of the native binding.');
lines.push('- **map N pages/call**: in the same container, window and memory (unmapped with one UNMAP_DMA in between), the same memory mapped again N IOMMU pages per MAP_DMA, as a POWER guest maps through H_PUT_TCE (1) / H_PUT_TCE_INDIRECT (up to 512). *map ratio* = that time / one MAP_DMA of everything in the same container.');
lines.push('- **prepare-equivalent**: the preparation with its one MAP_DMA replaced by the chunked mapping (its other steps as measured): time and ioctls, and the ratio to prepare.');
lines.push('');
for (const e of summary) {
  lines.push(`## ${e.machine} (${e.platform}), ${fmtSize(e.size)}: ${e.iommu}, window ${e.window.start}+${e.window.size}, ${2 ** e.window.pageShift / 1024} KiB IOMMU pages (${e.pages} pages)`);
  lines.push('');
  lines.push('| variant | MAP_DMA calls | map time (ms) | µs per call | map ratio | prepare time (ms) | prepare ioctls | prepare ratio |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|');
  lines.push(`| prepareContainer (one MAP_DMA per range) | ${e.prepare.mapDmaCalls} | ${e.prepare.mapDmaMs} | ${r1(e.prepare.mapDmaMs * 1000 / e.prepare.mapDmaCalls)} | - | **${e.prepare.ms}** | **${e.prepare.ioctls}** | 1 |`);
  lines.push(`| remap, whole memory in one call | ${e.remapWhole.calls} | ${e.remapWhole.ms} | ${r1(e.remapWhole.ms * 1000 / e.remapWhole.calls)} | 1 | - | - | - |`);
  for (const c of e.chunked) {
    lines.push(`| ${c.pagesPerCall} page${c.pagesPerCall > 1 ? 's' : ''} per call | ${c.calls} | ${c.ms} | ${c.usPerCall} | ${c.mapRatio} | ${c.prepareEquivalent.ms} | ${c.prepareEquivalent.ioctls} | **${c.prepareEquivalent.ratio}** |`);
  }
  lines.push('');
}
for (const r of runs) if (r.errors.length || r.exitCode !== 0) lines.push(`- ${r.machine}: exit ${r.exitCode}${r.error ? ` (${r.error})` : ''}${r.errors.length ? `; ${r.errors.join('; ')}` : ''}`);
lines.push(`Wall time of the run: ${((Date.now() - t0) / 1000).toFixed(0)} s. Raw rows: kernel-preparation.json.`);
const md = `${lines.join('\n')}\n`;
console.log(md);
if (o.write) {
  const out = join(REPO_ROOT, 'bench', 'results');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'kernel-preparation.json'), `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(join(out, 'kernel-preparation.md'), md);
  console.log(`wrote ${join(out, 'kernel-preparation.json')} and .md`);
}
process.exit(runs.every((r) => r.exitCode === 0 && r.rows.length) ? 0 : 1);
