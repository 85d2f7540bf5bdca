// The "plugin" of the handoff suite: inside the pseries guest, a HandoffManager with the native
// binding, the real unix transport (unixTransport) and the VFIO handoff source
// (createVfioHandoffSource) allocates and prepares the edu's group (PreStartContainer) and serves
// the socket; a SEPARATE process (the pod) claims and drives the edu through the pre-mapped window.
// Rounds, one per client:
//   c      payloads/handoff/pod.c (clients/c/pvdp_handoff.c linked in, static)
//   node   payloads/handoff/pod-node.mjs (dist/handoff/client.js claim())
//   exec   node dist/handoff/exec-cli.js exec -- pod fds ...   (the wrapper, the C pod on fds 3, 4, 5)
//   node2  as node, with both edus' groups in one allocation (pseries: a container per group; only the
//          first container's fd travels, the second stays alive through its group's fd)
// Allocate mounts only the allocation's sock/ directory into the container, read-only: the pod
// here connects through such a view (a read-only bind mount of it), as in a container.
// The pod prints `HANDOFF HOLDING` once it holds everything; the plugin then checks it holds nothing
// (state claimed, socket gone, no VFIO fd, no memfd mapping), lets the pod exit, and checks that its
// VmLck is back where it was and that the group opens again (nothing pinned, nothing held).
// One line per check: `HANDOFF PASS|FAIL TAG: name: detail`; last `HANDOFF SUMMARY passed=N failed=N`.
//
//   node handoff/handoff-plugin.mjs [--dist DIR] [--addon FILE] [--pod FILE] [--rounds c,node,exec] [--memory BYTES]
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { readdirSync, statSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { addonPath, bindReadOnly, busybox, checkLines, dist, groupOpens, hex, load, lockedSettled, memfdMappings, nativeBinding, option, runPod, testDevices, vfioFds } from '../common.mjs';

const podC = resolve(option('pod', '/payload/pod'));
const podNode = fileURLToPath(new URL('pod-node.mjs', import.meta.url));
const rounds = option('rounds', 'c,node,exec').split(',');
const memorySize = Number(option('memory', String(1 << 20)));
const { groups: allGroups, bdfs: allBdfs } = testDevices();
const group = allGroups[0];
const bdf = allBdfs[0];

const { HandoffManager } = await load('handoff/manager.js');
const { unixTransport } = await load('handoff/transport.js');
const { createVfioHandoffSource } = await load('prepare/handoff-source.js');

const b = await nativeBinding();
const { tagged: report, summary, exitCode } = checkLines('HANDOFF');

// The plugin's wiring, as src/ does it on a node, minus the kubelet.
let lastDescription = null;
const vfioSource = createVfioHandoffSource({ binding: b, devRoot: '/' });
const source = async (resource, groups) => {
  const payload = await vfioSource(resource, groups);
  lastDescription = payload.description;
  return payload;
};
const manager = new HandoffManager({
  hostDir: '/run/pvdp-handoff',
  containerDir: '/var/run/power-vfio/handoff',
  transport: unixTransport(b),
  source,
  claimTimeoutMs: 120_000,
});
const resource = {
  name: 'example.com/edu',
  selectors: {},
  preparation: { mode: 'handoff', handoff: { memorySize, claimTimeoutSeconds: 120, iommu: 'auto' } },
};
const groupOf = (id, address) => ({ id, name: null, phb: null, pe: null, functions: [{ address }], devNode: true, numaNodes: [], eeh: null, vfioCandidate: true, usable: true, problems: [] });
const groupsOfOne = [groupOf(group, bdf)];
const bothGroups = allGroups.map((g, i) => groupOf(g, allBdfs[i]));

function podCommand(tag, socket) {
  const env = { ...process.env, PVDP_VFIO_ADDON: addonPath };
  if (tag === 'c') return { file: podC, args: ['claim', socket, bdf, tag], env };
  if (tag === 'node' || tag === 'node2') return { file: process.execPath, args: [podNode, '--socket', socket, '--bdf', bdf, '--tag', tag, '--dist', dist, '--addon', addonPath], env };
  if (tag === 'exec') return { file: process.execPath, args: [join(dist, 'handoff', 'exec-cli.js'), 'exec', '--socket', socket, '--', podC, 'fds', bdf, tag], env };
  throw new Error(`unknown round ${tag}`);
}

async function round(tag) {
  const groups = tag === 'node2' ? bothGroups : groupsOfOne;
  const l0 = await b.lockedMemoryBytes();
  const f0 = vfioFds();
  const alloc = await manager.allocate(resource, groups);
  const hostDir = alloc.mounts[0].host_path;
  const socket = join(hostDir, 'handoff.sock');
  const t0 = process.hrtime.bigint();
  await manager.preStart(resource, groups);
  const prepMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const l1 = await b.lockedMemoryBytes();
  const d = lastDescription;
  const ids = groups.map((g) => g.id).join(', ');
  const st = manager.status().find((x) => x.groups.join(', ') === ids);
  const isSock = existsSync(socket) && statSync(socket).isSocket();
  report(
    st?.state === 'ready' && isSock && d?.ranges.length === 1,
    tag,
    `the plugin prepares (allocate + preStart, ${memorySize >> 10} KiB) and serves the socket`,
    `state ${st?.state}, ${d?.iommu.type}, window ${d?.window.start}+${d?.window.size} pageShift ${d?.window.pageShift}, range iova ${d?.ranges[0]?.iova}+${d?.ranges[0]?.size}, ` +
      `VmLck ${hex(l0)} -> ${hex(l1)}, plugin fds +${vfioFds().length - f0.length}, ${prepMs.toFixed(0)} ms, socket ${socket} (${alloc.envs.PVDP_HANDOFF_SOCKET} in the container)`,
  );

  // The container's view: a read-only bind mount of the mounted directory (what the kubelet makes of read_only: true).
  const view = `/run/pvdp-pod-${tag}`;
  mkdirSync(view, { recursive: true });
  bindReadOnly(hostDir, view);
  let write;
  try {
    writeFileSync(join(view, 'record.json'), '{}');
    write = 'succeeded';
  } catch (err) {
    write = err.code ?? err.message;
  }
  const hostEntries = readdirSync(hostDir);
  report(
    alloc.mounts[0].read_only === true && hostDir.endsWith('/sock') && write === 'EROFS' && hostEntries.join() === 'handoff.sock',
    tag,
    "the pod's mount is the allocation's sock/ directory only, read-only: it holds just the socket and writes fail",
    `mount ${hostDir} read_only ${alloc.mounts[0].read_only}, entries ${hostEntries.join(',')}, a write through the read-only view ${write}`,
  );
  const podSocket = join(view, 'handoff.sock');

  const { holding, ...result } = await runPod(podCommand(tag, podSocket), {
    timeoutMs: 60_000,
    onLine: (line) => console.log(line),
    whileHolding: async (pod) => {
      // The pod holds everything: the plugin holds nothing of it any more.
      const s = manager.status().find((x) => x.groups.join(', ') === ids);
      const mine = vfioFds();
      const maps = memfdMappings();
      report(
        s.state === 'claimed' && s.sockets.length === 0 && !existsSync(socket) && mine.length === f0.length && maps.length === 0,
        tag,
        'after the claim the plugin holds nothing (state claimed, socket removed, no VFIO fd, no memfd mapping)',
        `state ${s.state}, sockets ${s.sockets.length}, socket file ${existsSync(socket) ? 'present' : 'gone'}, plugin VFIO fds ${mine.length} (${mine.join(',') || 'none'}), memfd mappings ${maps.length}`,
      );
      const lHeld = await b.lockedMemoryBytes();
      report(lHeld === l1, tag, "while the pod holds the container, the pinned memory stays charged to the plugin's mm (VmLck unchanged)", `VmLck ${hex(lHeld)} (prepared ${hex(l1)})`);
      if (tag === 'exec') {
        const wrapper = vfioFds(pod.pid);
        report(wrapper.length === 0, tag, 'the exec wrapper keeps no copy of the fds (only its child holds them)', `wrapper pid ${pod.pid}: ${wrapper.join(',') || 'none'}`);
      }
    },
  });
  report(result.code === 0 && holding, tag, 'the pod exits 0 (it connected through the read-only view)', `exit ${result.code}${result.signal ? ` signal ${result.signal}` : ''}, socket ${podSocket}`);
  try {
    busybox('umount', [view]);
  } catch (err) {
    console.log(`# umount ${view}: ${err.message}`);
  }

  // The pod's exit released everything in the kernel.
  const l2 = await lockedSettled(b, l0);
  report(l2 === l0, tag, "after the pod exits the plugin's VmLck is back where it was", `VmLck ${hex(l0)} before prepare, ${hex(l1)} prepared and while held, ${hex(l2)} after the pod exited`);
  let reopen = await groupOpens(b, group);
  for (const g of groups.slice(1)) {
    const other = await groupOpens(b, g.id);
    if (other !== 'opened and closed') reopen = `group ${g.id}: ${other}`;
  }
  report(reopen === 'opened and closed', tag, `nothing holds group(s) ${ids} any more (/dev/vfio/N opens again)`, reopen);
}

if (!Number.isInteger(group) || !bdf) {
  console.log('HANDOFF FAIL setup: no group/bdf (PVDP_GROUPS/PVDP_BDFS)');
  process.exit(2);
}
console.log(`# handoff on ${process.arch}, group ${group}, device ${bdf}, page ${b.pageSize}, plugin pid ${process.pid}`);
await manager.start();
const lStart = await b.lockedMemoryBytes();
for (const tag of rounds) {
  try {
    await round(tag);
  } catch (err) {
    report(false, tag, 'round ran', `${err.code ?? ''} ${err.stack ?? err.message}`);
  }
}
await manager.stop();
const lEnd = await b.lockedMemoryBytes();
const left = vfioFds();
report(lEnd === lStart && left.length === 0, 'plugin', 'after every round and stop() the plugin VmLck is as at start and no VFIO fd is left', `VmLck ${hex(lStart)} -> ${hex(lEnd)}, fds ${left.join(',') || 'none'}`);
summary();
process.exit(exitCode());
