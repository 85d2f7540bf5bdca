// End-to-end DMA with QEMU's edu device inside the pseries guest, through OUR container
// sequence (prepareContainer over the native binding), v1 and v2: RAM -> device -> RAM through
// the mapped iova, and a DMA into an iova unmapped with UNMAP_DMA must leave memory untouched.
// The payload script is payloads/dma/dma-check.mjs; it prints `DMA PASS|FAIL <name>[: detail]`
// lines and `DMA SUMMARY passed=N failed=N`. powernv9 has no edu device (its test devices are
// e1000e): the suite runs on pseries only and reports a skip line for other machines.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, payloadScripts } from '../harness.mjs';
import { buildAddonPpc64le } from '../lib/addon.mjs';
import { buildDist } from './contract.mjs';

export const name = 'dma';
const SCRIPT = join(REPO_ROOT, 'test', 'kernel', 'payloads', 'dma', 'dma-check.mjs');
const COMMON = join(REPO_ROOT, 'test', 'kernel', 'payloads', 'common.mjs');

export function available() {
  const need = [SCRIPT, COMMON, join(REPO_ROOT, 'binding.gyp'), join(REPO_ROOT, 'native'), join(REPO_ROOT, 'tsconfig.json')];
  const missing = need.filter((p) => !existsSync(p)).map((p) => p.slice(REPO_ROOT.length + 1));
  if (missing.length) return { ok: false, reason: `missing ${missing.join(', ')}` };
  return { ok: true };
}

export function prepare() {
  const dist = buildDist();
  const addon = buildAddonPpc64le({ repoRoot: REPO_ROOT });
  const node = addon.nodeFiles.find((f) => f.endsWith('/vfio_native.node')) ?? addon.nodeFiles[0];
  return {
    files: {
      'package.json': JSON.stringify({ name: 'pvdp-guest-dma', private: true, type: 'module' }),
      dist: { hostDir: dist, filter: (rel) => !/\.(map|d\.ts)$/.test(rel) && !rel.endsWith('.tsbuildinfo') },
      'vfio_native.node': { hostPath: node, mode: 0o755 },
      ...payloadScripts('dma/dma-check.mjs'),
    },
    machines: ['pseries'],
    command: () => 'exec node dma/dma-check.mjs --dist /payload/dist --addon /payload/vfio_native.node',
    timeoutMs: 180_000,
  };
}

export function evaluate(machine, r) {
  const results = [];
  const lines = [...r.payloadOutput.matchAll(/^DMA (PASS|FAIL) (.*)$/gm)];
  for (const m of lines) {
    const [testName, ...rest] = m[2].split(': ');
    results.push({ name: testName, ok: m[1] === 'PASS', detail: rest.join(': ') || undefined });
  }
  const summary = /^DMA SUMMARY passed=(\d+) failed=(\d+)/m.exec(r.payloadOutput);
  const complete = summary && Number(summary[1]) + Number(summary[2]) === lines.length && Number(summary[1]) > 0 && r.exitCode === (Number(summary[2]) > 0 ? 1 : 0);
  results.push({
    name: 'dma check completes (v1 and v2)',
    ok: Boolean(complete) && lines.some((m) => m[2].startsWith('v1:')) && lines.some((m) => m[2].startsWith('v2:')),
    detail: summary ? `${summary[0]}; exit ${r.exitCode}` : `no summary; exit ${r.exitCode}${r.error ? `; ${r.error}` : ''}; ${r.payloadOutput.trim().split('\n').slice(-3).join(' | ')}`,
  });
  return results;
}
