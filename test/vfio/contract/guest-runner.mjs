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
import { chmodSync, existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..', '..');

function usage(message) {
  if (message) process.stderr.write(`guest-runner: ${message}\n`);
  process.stderr.write(
    'usage: node test/vfio/contract/guest-runner.mjs --platform pseries|powernv9|powernv10 --group N[=BDF[,BDF...]] [--group M...]\n' +
      '       [--non-viable-group N] [--dev-root /] [--sysfs-root /] [--dist DIR] [--addon FILE.node] [--only SUBSTRING] [--timeout-ms 60000]\n' +
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
  nonViableGroup: process.env.PVDP_CONTRACT_NON_VIABLE_GROUP,
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
  else if (arg === '--non-viable-group') opts.nonViableGroup = value();
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

const groupDevices = (group) => {
  const dir = join(opts.sysfsRoot, 'sys', 'kernel', 'iommu_groups', String(group), 'devices');
  return existsSync(dir) ? readdirSync(dir).sort() : [];
};
let nonViableGroup;
if (opts.nonViableGroup !== undefined && opts.nonViableGroup !== '') {
  const group = Number(opts.nonViableGroup);
  if (!Number.isInteger(group) || group < 0) usage(`bad --non-viable-group ${opts.nonViableGroup}`);
  nonViableGroup = { group, devices: groupDevices(group) };
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

/**
 * Runs a contract-child.ts script in a fresh Node process. `memlockLimit` lowers its RLIMIT_MEMLOCK
 * (the shell's ulimit, before exec); `unprivileged` makes it drop to uid/gid 65534 (no CAP_IPC_LOCK),
 * for which the group nodes are opened up while it runs.
 */
async function inChildProcess(script, args, options = {}) {
  const request = JSON.parse(encode({ script, args, dist: opts.dist, unprivileged: Boolean(options.unprivileged) }));
  const vfioDir = join(opts.devRoot, 'dev', 'vfio');
  const nodes = options.unprivileged ? readdirSync(vfioDir).map((n) => join(vfioDir, n)) : [];
  const modes = nodes.map((n) => statSync(n).mode & 0o777);
  nodes.forEach((n) => chmodSync(n, 0o666));
  try {
    const argv = [join(here, 'other-process.mjs'), JSON.stringify(request)];
    const [cmd, cmdArgs] =
      options.memlockLimit !== undefined
        ? ['sh', ['-c', `ulimit -l ${options.memlockLimit / 1024n} && exec "$0" "$@"`, process.execPath, ...argv]]
        : [process.execPath, argv];
    return await new Promise((resolvePromise, reject) => {
      const child = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.on('error', reject);
      child.on('close', (code) => {
        const line = out.trim().split('\n').pop() ?? '';
        try {
          const r = JSON.parse(line);
          if (r.ok) resolvePromise(r.value);
          else reject(new Error(`child script ${script} failed: ${r.code ?? ''} ${r.message ?? ''}`));
        } catch {
          reject(new Error(`child script ${script} exited ${code} without a result (${out.trim()})`));
        }
      });
    });
  } finally {
    nodes.forEach((n, i) => chmodSync(n, modes[i]));
  }
}

const ctx = {
  inChildProcess,
  ...(nonViableGroup ? { nonViableGroup } : {}),
  async pciDevice(name) {
    const dir = join(opts.sysfsRoot, 'sys', 'bus', 'pci', 'devices', name);
    return { resource: readFileSync(join(dir, 'resource'), 'utf8'), configSize: statSync(join(dir, 'config')).size };
  },
  async hugePageShifts() {
    const dir = join(opts.sysfsRoot, 'sys', 'kernel', 'mm', 'hugepages');
    if (!existsSync(dir)) return [];
    return readdirSync(dir)
      .map((n) => /^hugepages-(\d+)kB$/.exec(n))
      .filter(Boolean)
      .map((m) => Math.log2(Number(m[1]) * 1024))
      .sort((a, b) => a - b);
  },
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
  `# contract on ${process.arch} kernel, platform ${opts.platform}, groups ${opts.groups.map((g) => `${g.group}=${g.devices.join(',')}`).join(' ')}, page ${binding.pageSize}` +
    `${nonViableGroup ? `, non-viable group ${nonViableGroup.group}=${nonViableGroup.devices.join(',')}` : ''}\n`,
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
