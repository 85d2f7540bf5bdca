// The DRA front end on the real kernel (pseries only: QEMU's edu device). Inside the guest a
// "driver" process (payloads/dra/dra-driver.mjs) runs the daemon with kubeletApi dra over the
// guest's sysfs and the native binding, and the DRA kubelet stand-in drives it over real unix
// sockets: a claim asking for the handoff mode is prepared (NodePrepareResources -> CDI id -> CDI
// spec), a separate pod process (the handoff suite's pods: the C client and the Node client) claims
// through the spec's mount and PVDP_HANDOFF_SOCKET and makes the edu DMA through the pre-mapped
// window; the claim is unprepared while the pod holds the container; once the pod exits the
// driver's VmLck is back at its baseline, the CDI spec, the handoff directory and the checkpoint
// entry are gone, and the group opens again. A verify-mode claim is prepared and unprepared too.
// Managed binding: the guest's virtio-rng (virtio-pci, in the non-viable group) is taken to vfio-pci
// by a prepare and given back by the unprepare; the second edu, parked on pci-stub, is taken to
// vfio-pci, verified and given back to pci-stub.
// The payload is the handoff suite's (dist, addon, pods, pino) plus the DRA driver, the .proto
// files and the gRPC, zod and yaml packages. Lines: `DRA PASS|FAIL TAG: name: detail`.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, payloadScripts, provision } from '../harness.mjs';
import { resolveModules } from '../lib/initramfs.mjs';
import * as handoff from './handoff.mjs';

export const name = 'dra';
const DIR = join(REPO_ROOT, 'test', 'kernel', 'payloads', 'dra');
const HANDOFF_ROUNDS = ['c', 'node'];
const ROUNDS = [...HANDOFF_ROUNDS, 'verify', 'managed', 'stub'];

export function available() {
  const own = [join(DIR, 'dra-driver.mjs'), join(REPO_ROOT, 'proto', 'dra', 'v1', 'dra.proto'), join(REPO_ROOT, 'src', 'dra', 'driver.ts')];
  const missing = own.filter((p) => !existsSync(p)).map((p) => p.slice(REPO_ROOT.length + 1));
  if (missing.length) return { ok: false, reason: `missing ${missing.join(', ')}` };
  return handoff.available();
}

export function prepare() {
  // The handoff suite's payload: dist (compiled into the cache), the ppc64le addon, the C pod, handoff/pod-node.mjs, common.mjs, pino.
  const base = handoff.prepare();
  return {
    files: {
      ...base.files,
      'package.json': JSON.stringify({ name: 'pvdp-guest-dra', private: true, type: 'module' }),
      // dist/dra/proto.js loads <dist>/../proto.
      proto: { hostDir: join(REPO_ROOT, 'proto'), filter: (rel, st) => st.isDirectory() || rel.endsWith('.proto') },
      ...handoff.nodeModulesClosure(['pino', '@grpc/grpc-js', '@grpc/proto-loader', 'zod', 'yaml']),
      ...payloadScripts('dra/dra-driver.mjs'),
      // The stub round parks the second edu on pci-stub: a module in Debian's kernel, not in the base image.
      ...pciStubModule(),
    },
    machines: ['pseries'],
    // The non-viable group (a pci-testdev on vfio-pci beside a virtio-rng on virtio-pci) is the managed round's.
    nonViable: true,
    command: () => `exec node dra/dra-driver.mjs --dist /payload/dist --addon /payload/vfio_native.node --pod /payload/pod --rounds ${ROUNDS.join(',')} --memory 1Mi`,
    timeoutMs: 240_000,
  };
}

function pciStubModule() {
  const modules = resolveModules(provision().kernel.modulesDir, ['pci_stub']);
  const stub = modules.find((m) => m.name === 'pci_stub');
  return stub ? { 'pci-stub.ko': stub.data } : {};
}

export function evaluate(machine, r) {
  const results = [];
  const lines = [...r.payloadOutput.matchAll(/^DRA (PASS|FAIL) (\S+): (.*)$/gm)];
  for (const m of lines) {
    const parts = m[3].split(': ');
    // The pod's relayed lines keep their `pod: ` prefix in the name.
    const n = parts[0] === 'pod' ? 2 : 1;
    results.push({ name: `${m[2]}: ${parts.slice(0, n).join(': ')}`, ok: m[1] === 'PASS', detail: parts.slice(n).join(': ') || undefined });
  }
  const summary = /^DRA SUMMARY passed=(\d+) failed=(\d+)/m.exec(r.payloadOutput);
  const anyFail = lines.some((m) => m[1] === 'FAIL');
  const has = (tag, prefix) => lines.some((m) => m[2] === tag && m[3].startsWith(prefix));
  // Every handoff round: the pod's DMA line, the unprepare line and the driver's VmLck line; the verify round's unprepare.
  const missing = [
    ...HANDOFF_ROUNDS.filter(
      (t) => !has(t, 'pod: edu DMA RAM -> device -> RAM') || !has(t, 'NodeUnprepareResources while the pod holds') || !has(t, "after the pod exits the driver's VmLck"),
    ),
    ...(has('discovery', 'every function') && has('discovery', "every group's safety-poll fingerprint") ? [] : ['discovery']),
    ...(has('verify', 'NodeUnprepareResources removes') ? [] : ['verify']),
    ...(has('managed', 'NodeUnprepareResources gives') ? [] : ['managed']),
    ...(has('stub', 'NodeUnprepareResources gives') ? [] : ['stub']),
  ];
  const counted = summary ? Number(summary[1]) + Number(summary[2]) : -1;
  results.push({
    name: `dra rounds complete (${ROUNDS.join(', ')})`,
    ok: Boolean(summary) && missing.length === 0 && counted === lines.length && r.exitCode === (anyFail ? 1 : 0),
    detail: summary
      ? `${summary[0]}; ${lines.length} lines; exit ${r.exitCode}${missing.length ? `; incomplete rounds ${missing.join(',')}` : ''}`
      : `no summary; exit ${r.exitCode}${r.error ? `; ${r.error}` : ''}; ${r.payloadOutput.trim().split('\n').slice(-3).join(' | ')}`,
  });
  return results;
}
