// The VFIO contract suite (src/vfio/contract-cases.ts) run inside the guests on the
// real kernel by test/vfio/contract/guest-runner.mjs (its README gives the files it
// needs and its output). The payload is:
//   /payload/package.json                  ("type": "module" for dist/)
//   /payload/dist/**.js                    TypeScript compiled into the cache (the repo's dist/ is left alone)
//   /payload/test/vfio/contract/*.mjs      the guest runner and its other-process helper
//   /payload/vfio_native.node              the addon cross-built for ppc64le (lib/addon.mjs)
// and the runner is given every test group the guest bound (two: the multi-group cases need both).
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../harness.mjs';
import { buildAddonPpc64le } from '../lib/addon.mjs';
import { cacheDir } from '../lib/provision.mjs';
import { run, log, withLock } from '../lib/util.mjs';

export const name = 'contract';
const CONTRACT_DIR = join(REPO_ROOT, 'test', 'vfio', 'contract');
const RUNNER_FILES = ['guest-runner.mjs', 'other-process.mjs'];
const PLATFORM = { pseries: 'pseries', powernv9: 'powernv9' };
const GUEST_TIMEOUT_MS = Number(process.env.PVDP_KERNEL_CONTRACT_TIMEOUT_MS ?? 600_000);

export function available() {
  const need = [
    join(CONTRACT_DIR, 'README.md'),
    ...RUNNER_FILES.map((f) => join(CONTRACT_DIR, f)),
    join(REPO_ROOT, 'binding.gyp'),
    join(REPO_ROOT, 'native'),
    join(REPO_ROOT, 'tsconfig.json'),
  ];
  const missing = need.filter((p) => !existsSync(p)).map((p) => p.slice(REPO_ROOT.length + 1));
  if (missing.length) return { ok: false, reason: `missing ${missing.join(', ')}` };
  return { ok: true };
}

/** Compile src/ with the project's tsconfig into the cache (incremental), JS only. */
export function buildDist() {
  if (process.env.PVDP_KERNEL_DIST) return process.env.PVDP_KERNEL_DIST;
  const out = join(cacheDir(), 'build', 'dist');
  mkdirSync(out, { recursive: true });
  return withLock(join(cacheDir(), 'build', '.dist.lock'), () => {
    const tsc = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
    if (!existsSync(tsc)) throw new Error('typescript is not installed (run npm ci)');
    const t0 = Date.now();
    const r = run(
      process.execPath,
      [tsc, '-p', join(REPO_ROOT, 'tsconfig.json'), '--outDir', out, '--tsBuildInfoFile', join(out, '.tsbuildinfo'), '--declaration', 'false', '--sourceMap', 'false'],
      { cwd: REPO_ROOT, check: false, timeoutMs: 10 * 60_000 },
    );
    const needed = ['vfio/contract-cases.js', 'vfio/native-binding.js'];
    const missing = needed.filter((f) => !existsSync(join(out, f)));
    if (missing.length) {
      throw new Error(`tsc did not emit ${missing.join(', ')} (exit ${r.status}): ${r.stdout.split('\n').slice(0, 5).join(' | ')}`);
    }
    // Type errors elsewhere in the tree are the unit tests' business; the JS was emitted.
    if (r.status !== 0) log(`tsc reported errors (JS emitted anyway):\n${r.stdout.split('\n').slice(0, 10).join('\n')}`);
    log(`compiled dist for the guest in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return out;
  });
}

export function prepare() {
  const dist = buildDist();
  const addon = buildAddonPpc64le({ repoRoot: REPO_ROOT });
  const node = addon.nodeFiles.find((f) => f.endsWith('/vfio_native.node')) ?? addon.nodeFiles[0];
  const files = {
    'package.json': JSON.stringify({ name: 'pvdp-guest', private: true, type: 'module' }),
    dist: { hostDir: dist, filter: (rel) => !/\.(map|d\.ts)$/.test(rel) && !rel.endsWith('.tsbuildinfo') },
    'vfio_native.node': { hostPath: node, mode: 0o755 },
  };
  for (const f of RUNNER_FILES) files[`test/vfio/contract/${f}`] = { hostPath: join(CONTRACT_DIR, f), mode: 0o644 };
  return {
    files,
    // The platform is per machine: see command().
    command: (machine) =>
      [
        'set --',
        'for g in $(echo "$PVDP_GROUPS" | tr , " "); do set -- "$@" --group "$g"; done',
        'if [ -n "$PVDP_NONVIABLE_GROUP" ]; then set -- "$@" --non-viable-group "$PVDP_NONVIABLE_GROUP"; fi',
        `exec node test/vfio/contract/guest-runner.mjs --platform ${PLATFORM[machine]} "$@" ` +
          `--addon /payload/vfio_native.node --dist /payload/dist --timeout-ms 120000`,
      ].join('\n'),
    timeoutMs: GUEST_TIMEOUT_MS,
    // pseries also gets a non-viable group (a PHB with a function on a host driver).
    nonViable: true,
  };
}

/** One result per contract case (PASS/FAIL/SKIP), plus checks that the runner itself completed. */
export function evaluate(machine, r) {
  const results = [];
  const cases = [...r.payloadOutput.matchAll(/^CONTRACT (PASS|FAIL|SKIP) (.*)$/gm)];
  for (const m of cases) {
    const [caseName, ...rest] = m[2].split(': ');
    const detail = rest.join(': ') || undefined;
    if (m[1] === 'SKIP') results.push({ name: caseName, skip: true, detail });
    else results.push({ name: caseName, ok: m[1] === 'PASS', detail });
  }
  const summary = /^CONTRACT SUMMARY passed=(\d+) failed=(\d+) skipped=(\d+)/m.exec(r.payloadOutput);
  const header = /^# contract .*$/m.exec(r.payloadOutput)?.[0];
  const failedCases = cases.filter((m) => m[1] === 'FAIL').length;
  // Complete: a summary matching the case lines, and a non-zero exit only when cases failed.
  const complete =
    summary &&
    Number(summary[1]) + Number(summary[2]) + Number(summary[3]) === cases.length &&
    (r.exitCode === 0 || (r.exitCode === 1 && failedCases > 0));
  results.push({
    name: 'guest runner completes',
    ok: Boolean(complete),
    detail: summary
      ? `${summary[0]}; exit ${r.exitCode}${header ? `; ${header.slice(2)}` : ''}`
      : `no summary line; exit ${r.exitCode}${r.error ? `; ${r.error}` : ''}${!cases.length ? `; output: ${r.payloadOutput.trim().split('\n').slice(-3).join(' | ')}` : ''}`,
  });
  return results;
}
