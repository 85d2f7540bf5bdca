// The handoff mode on the real kernel (pseries only: QEMU's edu device). Inside the guest a
// "plugin" process (payloads/handoff/handoff-plugin.mjs: HandoffManager + unixTransport + the
// VFIO handoff source over the native binding) prepares the edu's group and serves the socket; a
// separate "pod" process claims and makes the edu DMA RAM -> device -> RAM through the pre-mapped
// window, checks that MAP_DMA/UNMAP_DMA from it are EPERM, and exits; the plugin then checks that its
// VmLck is back and the group opens again. Three rounds in one boot: the C client (pod.c linked with
// clients/c/pvdp_handoff.c, cross-compiled static), the Node client (pod-node.mjs, claim()), and the
// exec wrapper (dist/handoff/exec-cli.js exec -- pod fds). Lines: `HANDOFF PASS|FAIL TAG: name: detail`.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { REPO_ROOT, crossCompileC, payloadScripts } from '../harness.mjs';
import { buildAddonPpc64le } from '../lib/addon.mjs';
import { buildDist } from './contract.mjs';
import { sha256 } from '../lib/util.mjs';

export const name = 'handoff';
const DIR = join(REPO_ROOT, 'test', 'kernel', 'payloads', 'handoff');
const CLIENT_DIR = join(REPO_ROOT, 'clients', 'c');
// node2: both test groups in one allocation (a container per group on pseries).
const ROUNDS = ['c', 'node', 'exec', 'node2'];

/**
 * The repo's installed copies of `names` and their dependencies (dist/log.js imports pino, which
 * dist/handoff/manager.js loads): payload entries `node_modules/<pkg>`, JS and JSON only.
 */
export function nodeModulesClosure(names) {
  const found = new Map();
  const add = (pkg, from) => {
    let dir = from;
    let p;
    for (;;) {
      p = join(dir, 'node_modules', pkg);
      if (existsSync(join(p, 'package.json'))) break;
      const up = dirname(dir);
      if (up === dir) throw new Error(`${pkg} is not installed (run npm ci)`);
      dir = up;
    }
    if (found.has(p)) return;
    found.set(p, pkg);
    const pj = JSON.parse(readFileSync(join(p, 'package.json'), 'utf8'));
    for (const d of Object.keys(pj.dependencies ?? {})) add(d, p);
  };
  for (const n of names) add(n, REPO_ROOT);
  const files = {};
  for (const [p] of found) {
    files[relative(REPO_ROOT, p)] = {
      hostDir: p,
      filter: (rel, st) => !/^(test|tests|docs|benchmarks|examples|\.github)(\/|$)/.test(rel) && (st.isDirectory() || (/\.(c?js|mjs|json)$/.test(rel) && !rel.endsWith('.d.ts'))),
    };
  }
  return files;
}

export function available() {
  const need = [
    join(DIR, 'pod.c'),
    join(DIR, 'pod-node.mjs'),
    join(DIR, 'handoff-plugin.mjs'),
    join(DIR, '..', 'common.mjs'),
    join(CLIENT_DIR, 'pvdp_handoff.c'),
    join(CLIENT_DIR, 'pvdp_handoff.h'),
    join(REPO_ROOT, 'binding.gyp'),
    join(REPO_ROOT, 'tsconfig.json'),
  ];
  const missing = need.filter((p) => !existsSync(p)).map((p) => p.slice(REPO_ROOT.length + 1));
  if (missing.length) return { ok: false, reason: `missing ${missing.join(', ')}` };
  return { ok: true };
}

export function prepare() {
  const dist = buildDist();
  const addon = buildAddonPpc64le({ repoRoot: REPO_ROOT });
  const node = addon.nodeFiles.find((f) => f.endsWith('/vfio_native.node')) ?? addon.nodeFiles[0];
  // The header is not a source: its hash goes into the flags so the cached binary follows it.
  const header = sha256(readFileSync(join(CLIENT_DIR, 'pvdp_handoff.h'))).slice(0, 12);
  const pod = crossCompileC([join(DIR, 'pod.c'), join(CLIENT_DIR, 'pvdp_handoff.c')], {
    name: 'handoff-pod',
    cflags: ['-O2', '-Wall', '-Wextra', '-I', CLIENT_DIR, `-DPVDP_HEADER_HASH=${header}`],
  });
  return {
    files: {
      'package.json': JSON.stringify({ name: 'pvdp-guest-handoff', private: true, type: 'module' }),
      dist: { hostDir: dist, filter: (rel) => !/\.(map|d\.ts)$/.test(rel) && !rel.endsWith('.tsbuildinfo') },
      ...nodeModulesClosure(['pino']),
      'vfio_native.node': { hostPath: node, mode: 0o755 },
      ...payloadScripts('handoff/handoff-plugin.mjs', 'handoff/pod-node.mjs'),
      pod: { hostPath: pod, mode: 0o755 },
    },
    machines: ['pseries'],
    command: () => `exec node handoff/handoff-plugin.mjs --dist /payload/dist --addon /payload/vfio_native.node --pod /payload/pod --rounds ${ROUNDS.join(',')}`,
    timeoutMs: 180_000,
  };
}

export function evaluate(machine, r) {
  const results = [];
  const lines = [...r.payloadOutput.matchAll(/^HANDOFF (PASS|FAIL) (\S+): (.*)$/gm)];
  for (const m of lines) {
    const [testName, ...rest] = m[3].split(': ');
    results.push({ name: `${m[2]}: ${testName}`, ok: m[1] === 'PASS', detail: rest.join(': ') || undefined });
  }
  const summary = /^HANDOFF SUMMARY passed=(\d+) failed=(\d+)/m.exec(r.payloadOutput);
  const anyFail = lines.some((m) => m[1] === 'FAIL');
  // Every round: the pod's DMA line and the plugin's release line.
  const missing = ROUNDS.filter(
    (t) => !lines.some((m) => m[2] === t && m[3].startsWith('edu DMA RAM -> device -> RAM')) || !lines.some((m) => m[2] === t && m[3].startsWith("after the pod exits the plugin's VmLck")),
  );
  results.push({
    name: `handoff rounds complete (${ROUNDS.join(', ')})`,
    ok: Boolean(summary) && missing.length === 0 && r.exitCode === (anyFail ? 1 : 0),
    detail: summary
      ? `${summary[0]}; ${lines.length} lines; exit ${r.exitCode}${missing.length ? `; missing rounds ${missing.join(',')}` : ''}`
      : `no summary; exit ${r.exitCode}${r.error ? `; ${r.error}` : ''}; ${r.payloadOutput.trim().split('\n').slice(-3).join(' | ')}`,
  });
  return results;
}
