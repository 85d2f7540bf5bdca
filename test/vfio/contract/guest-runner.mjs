#!/usr/bin/env node
// Runs the VFIO contract suite (src/vfio/contract-cases.ts, compiled to dist/)
// against the real kernel through the native addon. Meant for a ppc64le guest
// under QEMU; see README.md next to this file for the exact invocation.
//
// Prints one line per case and a summary, and exits non-zero on any failure
// or when nothing passed:
//   CONTRACT PASS <name>
//   CONTRACT FAIL <name>: <message>
//   CONTRACT SKIP <name>: <reason>
//   CONTRACT SUMMARY passed=N failed=N skipped=N
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..', '..');

function usage(message) {
  if (message) process.stderr.write(`guest-runner: ${message}\n`);
  process.stderr.write(
    'usage: node test/vfio/contract/guest-runner.mjs --platform pseries|powernv9|powernv10 --group N[=BDF[,BDF...]] [--group M...]\n' +
      '       [--dev-root /] [--sysfs-root /] [--dist DIR] [--addon FILE.node] [--only SUBSTRING] [--timeout-ms 60000]\n' +
      'env fallbacks: PVDP_CONTRACT_PLATFORM, PVDP_CONTRACT_GROUPS ("N=BDF,BDF;M=BDF" or "N;M"), PVDP_DEV_ROOT,\n' +
      '               PVDP_SYSFS_ROOT, PVDP_DIST, PVDP_VFIO_ADDON, PVDP_CONTRACT_ONLY\n',
  );
  process.exit(2);
}

const opts = {
  platform: process.env.PVDP_CONTRACT_PLATFORM,
  groups: [],
  devRoot: process.env.PVDP_DEV_ROOT ?? '/',
  sysfsRoot: process.env.PVDP_SYSFS_ROOT ?? '/',
  dist: process.env.PVDP_DIST ?? join(repoRoot, 'dist'),
  addon: process.env.PVDP_VFIO_ADDON,
  only: process.env.PVDP_CONTRACT_ONLY,
  timeoutMs: 60_000,
};
const groupSpecs = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i];
  const value = () => {
    const v = argv[++i];
    if (v === undefined) usage(`${arg} needs a value`);
    return v;
  };
  if (arg === '--platform') opts.platform = value();
  else if (arg === '--group') groupSpecs.push(value());
  else if (arg === '--dev-root') opts.devRoot = value();
  else if (arg === '--sysfs-root') opts.sysfsRoot = value();
  else if (arg === '--dist') opts.dist = resolve(value());
  else if (arg === '--addon') opts.addon = resolve(value());
  else if (arg === '--only') opts.only = value();
  else if (arg === '--timeout-ms') opts.timeoutMs = Number(value());
  else if (arg === '--help' || arg === '-h') usage();
  else usage(`unknown argument ${arg}`);
}
if (groupSpecs.length === 0 && process.env.PVDP_CONTRACT_GROUPS) groupSpecs.push(...process.env.PVDP_CONTRACT_GROUPS.split(';').filter(Boolean));
if (!['pseries', 'powernv9', 'powernv10'].includes(opts.platform ?? '')) usage(`--platform must be pseries, powernv9 or powernv10 (got ${opts.platform})`);
if (opts.addon) process.env.PVDP_VFIO_ADDON = opts.addon; // inherited by other-process.mjs

for (const spec of groupSpecs) {
  const [num, devs] = spec.split('=');
  const group = Number(num);
  if (!Number.isInteger(group) || group < 0) usage(`bad group ${spec}`);
  let devices = devs ? devs.split(',').filter(Boolean) : [];
  if (devices.length === 0) {
    // The group's members as the kernel lists them: a group is used whole.
    const dir = join(opts.sysfsRoot, 'sys', 'kernel', 'iommu_groups', String(group), 'devices');
    if (existsSync(dir)) devices = readdirSync(dir).sort();
  }
  if (devices.length === 0) usage(`no device named for group ${group} and none found under /sys/kernel/iommu_groups/${group}/devices`);
  opts.groups.push({ group, devices });
}

const distUrl = (rel) => pathToFileURL(join(opts.dist, rel)).href;
const { contractCases, skipReason, ContractSkip } = await import(distUrl('vfio/contract-cases.js'));
const { NativeBinding, loadNativeAddon } = await import(distUrl('vfio/native-binding.js'));
const binding = new NativeBinding(loadNativeAddon(opts.addon));

const encode = (v) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? { $bigint: x.toString() } : x));

/** Runs one binding call in a fresh Node process that inherits `fds` at 3, 4, ... */
function inOtherProcess(fds, op, fdIndex, args = []) {
  return new Promise((resolvePromise, reject) => {
    const request = JSON.parse(encode({ op, fdIndex, args, dist: opts.dist }));
    const child = spawn(process.execPath, [join(here, 'other-process.mjs'), JSON.stringify(request)], {
      stdio: ['ignore', 'pipe', 'inherit', ...fds],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const line = out.trim().split('\n').pop() ?? '';
      try {
        const r = JSON.parse(line);
        resolvePromise(r.ok ? { ok: true, value: r.value } : { ok: false, code: r.code });
      } catch {
        reject(new Error(`other process exited ${code} without a result (${out.trim()})`));
      }
    });
  });
}

const ctx = {
  binding,
  devRoot: opts.devRoot,
  simulated: false,
  platform: opts.platform,
  groups: opts.groups,
  inOtherProcess,
  log: (m) => process.stdout.write(`# ${m}\n`),
};

const oneLine = (s) => String(s).replace(/\s*\n\s*/g, ' | ');
let passed = 0;
let failed = 0;
let skipped = 0;
process.stdout.write(
  `# contract on ${process.arch} kernel, platform ${opts.platform}, groups ${opts.groups.map((g) => `${g.group}=${g.devices.join(',')}`).join(' ')}, page ${binding.pageSize}\n`,
);
for (const c of contractCases) {
  if (opts.only && !c.name.includes(opts.only)) continue;
  const reason = skipReason(c, ctx);
  if (reason) {
    skipped++;
    process.stdout.write(`CONTRACT SKIP ${c.name}: ${oneLine(reason)}\n`);
    continue;
  }
  const baseline = await binding.lockedMemoryBytes();
  let timer;
  try {
    await Promise.race([
      c.run(ctx),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${opts.timeoutMs} ms`)), opts.timeoutMs);
      }),
    ]);
    // Leak check: every case releases what it charged.
    const after = await binding.lockedMemoryBytes();
    if (after !== baseline) throw new Error(`locked memory leaked: VmLck ${baseline} -> ${after} bytes`);
    passed++;
    process.stdout.write(`CONTRACT PASS ${c.name}\n`);
  } catch (err) {
    if (err instanceof ContractSkip) {
      skipped++;
      process.stdout.write(`CONTRACT SKIP ${c.name}: ${oneLine(err.message)}\n`);
    } else {
      failed++;
      const msg = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      process.stdout.write(`CONTRACT FAIL ${c.name}: ${oneLine(msg)}\n`);
    }
  } finally {
    clearTimeout(timer);
  }
}
process.stdout.write(`CONTRACT SUMMARY passed=${passed} failed=${failed} skipped=${skipped}\n`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
