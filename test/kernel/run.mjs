#!/usr/bin/env node
// Real-kernel tests: provisions (cached), then boots each machine once per suite
// and prints one line per test and a final `N passed, N failed` line.
//
//   node test/kernel/run.mjs [--machine pseries|powernv9]... [--suite trivial|contract|dma|handoff|dra]...
//                            [--verbose] [--sequential] [--keep-output DIR]
//
// Exit codes: 0 all passed; 1 a test failed (or none ran); when provisioning is impossible
// (no Debian mirror, no npm registry, no qemu) it prints `SKIP: <reason>` and exits 0, or
// PVDP_KERNEL_SKIP_EXIT (e.g. 77) when that is set.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { provision, runInGuest, SkipError, MACHINES, cacheDir } from './harness.mjs';
import { cacheSize } from './lib/provision.mjs';
import { fmtBytes } from './lib/util.mjs';
import * as trivial from './suites/trivial.mjs';
import * as contract from './suites/contract.mjs';
import * as dma from './suites/dma.mjs';
import * as handoff from './suites/handoff.mjs';
import * as dra from './suites/dra.mjs';

const SUITES = { trivial, contract, dma, handoff, dra };

function parseArgs(argv) {
  const o = { machines: [], suites: [], verbose: false, sequential: process.env.PVDP_KERNEL_PARALLEL === '0', keep: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--machine') o.machines.push(argv[++i]);
    else if (a.startsWith('--machine=')) o.machines.push(a.slice(10));
    else if (a === '--suite') o.suites.push(argv[++i]);
    else if (a.startsWith('--suite=')) o.suites.push(a.slice(8));
    else if (a === '--verbose' || a === '-v') o.verbose = true;
    else if (a === '--sequential') o.sequential = true;
    else if (a === '--keep-output') o.keep = argv[++i];
    else if (a === '--help' || a === '-h') {
      console.log('usage: node test/kernel/run.mjs [--machine pseries|powernv9]... [--suite trivial|contract|dma|handoff|dra]... [--verbose] [--sequential] [--keep-output DIR]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (!o.machines.length) o.machines = Object.keys(MACHINES);
  if (!o.suites.length) o.suites = Object.keys(SUITES);
  for (const m of o.machines) if (!MACHINES[m]) throw new Error(`unknown machine ${m}`);
  for (const s of o.suites) if (!SUITES[s]) throw new Error(`unknown suite ${s}`);
  return o;
}

function skip(reason, detail) {
  console.log(`SKIP: real-kernel tests: ${reason}`);
  if (detail) console.log(detail.replace(/^/gm, '  '));
  const code = Number(process.env.PVDP_KERNEL_SKIP_EXIT ?? 0);
  console.log('0 passed, 0 failed, 1 skipped');
  process.exit(code);
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  let manifest;
  try {
    manifest = provision();
  } catch (err) {
    if (err instanceof SkipError) skip(err.reason, err.detail);
    throw err;
  }
  console.log(`kernel ${manifest.kernel.kver} (${manifest.kernel.package} ${manifest.kernel.version}), node ${manifest.node.version}, cache ${cacheDir()}`);

  // Plan: one boot per (suite, machine).
  const jobs = [];
  const notes = [];
  for (const sname of opts.suites) {
    const suite = SUITES[sname];
    const av = suite.available();
    if (!av.ok) {
      notes.push(`suite ${sname} not run: ${av.reason}`);
      continue;
    }
    let prep;
    try {
      prep = suite.prepare(manifest);
    } catch (err) {
      jobs.push({ suite, sname, machine: null, prepError: err });
      continue;
    }
    for (const machine of opts.machines) {
      // A suite may need a device only some machines have (dma: pseries' edu).
      if (prep.machines && !prep.machines.includes(machine)) notes.push(`suite ${sname} not run on ${machine}: only on ${prep.machines.join(', ')}`);
      else jobs.push({ suite, sname, machine, prep });
    }
  }

  const runJob = async (job) => {
    if (job.prepError) return;
    const tag = `${job.machine}/${job.sname}`;
    const started = Date.now();
    job.result = await runInGuest({
      machine: job.machine,
      payloadDir: job.prep.payloadDir,
      files: job.prep.files,
      command: typeof job.prep.command === 'function' ? job.prep.command(job.machine) : job.prep.command,
      timeoutMs: job.prep.timeoutMs,
      nonViable: Boolean(job.prep.nonViable),
      onOutput: opts.verbose ? (s) => process.stderr.write(s.replace(/^/gm, `[${tag}] `)) : undefined,
    });
    job.wallMs = Date.now() - started;
  };

  if (opts.sequential) {
    for (const j of jobs) await runJob(j);
  } else {
    // One guest per machine at a time (TCG is one host thread per guest; 2 cores here).
    const byMachine = new Map();
    for (const j of jobs) byMachine.set(j.machine, [...(byMachine.get(j.machine) ?? []), j]);
    await Promise.all([...byMachine.values()].map(async (list) => {
      for (const j of list) await runJob(j);
    }));
  }

  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for (const job of jobs) {
    if (job.prepError) {
      failed++;
      console.log(`FAIL ${job.sname}: preparing the payload: ${job.prepError.message.split('\n').join(' | ')}`);
      continue;
    }
    const r = job.result;
    console.log(
      `# ${job.machine}/${job.sname}: platform=${r.platform} group=${r.groupNumber} bdf=${r.deviceAddress} exit=${r.exitCode} ` +
        `boot=${r.bootMs ?? '-'} ms total=${r.totalMs} ms${r.error ? ` error=${r.error}` : ''}`,
    );
    let results;
    try {
      results = job.suite.evaluate(job.machine, r);
    } catch (err) {
      results = [{ name: 'evaluate results', ok: false, detail: err.message }];
    }
    let anyFail = false;
    for (const t of results) {
      if (t.skip) {
        skipped++;
        console.log(`skip ${job.machine} ${job.sname}: ${t.name}${t.detail ? ` — ${t.detail}` : ''}`);
        continue;
      }
      if (t.ok) passed++;
      else {
        failed++;
        anyFail = true;
      }
      console.log(`${t.ok ? 'ok  ' : 'FAIL'} ${job.machine} ${job.sname}: ${t.name}${t.detail ? ` — ${t.detail}` : ''}`);
    }
    if (anyFail && !opts.verbose) {
      console.log(`--- ${job.machine}/${job.sname} guest output (last 60 lines) ---`);
      console.log(r.output.trimEnd().split('\n').slice(-60).join('\n'));
      console.log('---');
    }
    if (opts.keep) {
      mkdirSync(opts.keep, { recursive: true });
      writeFileSync(join(opts.keep, `${job.machine}-${job.sname}.log`), r.output);
    }
  }
  for (const n of notes) console.log(`NOTE ${n}`);
  console.log(`total ${((Date.now() - t0) / 1000).toFixed(1)} s, cache ${fmtBytes(cacheSize())}`);
  console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(failed > 0 || passed === 0 ? 1 : 0);
}

main().catch((err) => {
  console.error(err.stack || String(err));
  console.log('0 passed, 1 failed, 0 skipped');
  process.exit(1);
});
