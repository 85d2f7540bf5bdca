// The "driver" of the dra suite: inside the pseries guest, the daemon with its DRA front end
// (dist/daemon.js, kubeletApi dra) on the REAL node: sysfs and /dev/vfio of the guest, the
// preparer of dist/prepare/setup.js over the native binding (every mode: a claim's own
// configuration picks verify or handoff), the DRA kubelet stand-in (dist/simulate/dra-kubelet.js)
// on a registry directory under /tmp, and claims from an in-memory ClaimStore. Everything between
// the stand-in and the driver goes over real unix sockets (registration, DRA service, health).
//
// Handoff rounds, one per pod program (the handoff suite's pods):
//   c      payloads/handoff/pod.c (clients/c/pvdp_handoff.c linked in, static)
//   node   payloads/handoff/pod-node.mjs (dist/handoff/client.js claim())
// Each round: NodePrepareResources of a claim for the edu's device with opaque configuration
// { mode: handoff, memorySize }; the CDI spec the answer names is read and applied as a container
// runtime would (its mount bind-mounted read-only into a scratch "rootfs", its env given to the
// pod); a separate pod process claims through PVDP_HANDOFF_SOCKET and drives the edu DMA through the
// pre-mapped window; while the pod holds everything the kubelet unprepares the claim; then the pod
// exits, and the driver's VmLck must be back at its baseline, the CDI spec and the handoff directory
// gone, the checkpoint without the claim, and the group must open again.
// A verify round: a claim without configuration (the resource's verify mode) prepared and
// unprepared on the real kernel.
// Managed binding rounds (the drivers before, during and after are in the PASS lines):
//   managed  the guest's virtio-rng on virtio-pci (in the non-viable group beside a pci-testdev on
//            vfio-pci) under a resource with binding managed: taken to vfio-pci by a prepare and
//            given back by the unprepare; a verify claim is rolled back because this PE gets no
//            DMA window any more (see managedVirtioRound).
//   stub     the second edu parked on pci-stub: taken to vfio-pci, the verify sequence runs, given
//            back to pci-stub.
// One line per check: `DRA PASS|FAIL TAG: name: detail` (the pod's own lines are relayed with its
// tag); last `DRA SUMMARY passed=N failed=N`.
//
//   node dra/dra-driver.mjs [--dist DIR] [--addon FILE] [--pod FILE] [--rounds c,node,verify] [--memory 1Mi]
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { execFileSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { addonPath, bindReadOnly, busybox, checkLines, dist, groupOpens, hex, load, lockedSettled, memfdMappings, nativeBinding, option, runPod, testDevices, vfioFds } from '../common.mjs';

const podC = resolve(option('pod', '/payload/pod'));
const podNode = fileURLToPath(new URL('../handoff/pod-node.mjs', import.meta.url));
const rounds = option('rounds', 'c,node,verify,managed,stub').split(',');
const memorySize = option('memory', '1Mi');
const { groups, bdfs } = testDevices();
const group = groups[0];
const bdf = bdfs[0];
// The second edu: parked on pci-stub for the managed stub round.
const stubBdf = (process.env.PVDP_BDFS ?? '').split(',')[1] ?? null;

const { Daemon } = await load('daemon.js');
const { buildPreparer } = await load('prepare/setup.js');
const { DraKubelet } = await load('simulate/dra-kubelet.js');
const { allocatedClaim, ClaimStore, preparationParameters } = await load('simulate/claims.js');
const { deviceNameOf } = await load('dra/device-name.js');
const { DEFAULT_DRIVER_NAME, CHECKPOINT_NAME } = await load('dra/constants.js');
const { resourceSchema, parseByteSize } = await load('config/schema.js');
const { capabilitiesOf } = await load('prepare/capabilities.js');
const { createLogger } = await load('log.js');
const { DEFAULT_HANDOFF_CONTAINER_DIR } = await load('handoff/service.js');
const { discoverTopology, groupFingerprint, listGroupIds } = await load('topology/scan.js');
const { poolReader } = await load('topology/sysfs-read.js');
const { WorkerReader } = await load('topology/sysfs-worker.js');

const b = await nativeBinding();
const memoryBytes = parseByteSize(memorySize);
const { check, tagged: report, counts, summary, exitCode } = checkLines('DRA');

// The daemon's log, kept in memory: shown (the tail) when something fails.
const logLines = [];
const logger = createLogger({
  level: 'debug',
  destination: new Writable({
    write(chunk, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logLines.push(line);
      cb();
    },
  }),
});

const listDir = (p) => (existsSync(p) ? readdirSync(p).sort() : null);
const show = (list) => (list === null ? 'absent' : list.length ? list.join(',') : 'empty');

if (!Number.isInteger(group) || !bdf || memoryBytes === null) {
  console.log(`DRA FAIL setup: arguments: group ${group}, device ${bdf} (PVDP_GROUPS/PVDP_BDFS), --memory ${memorySize}`);
  console.log('DRA SUMMARY passed=0 failed=1');
  process.exit(2);
}

// The node: settings as the CLI makes them for `--kubelet-api dra`, with every directory under one
// scratch directory (short: socket paths are limited to 108 bytes).
const dir = mkdtempSync('/tmp/pvdp-dra-');
const nodeName = 'pseries-guest';
const driver = DEFAULT_DRIVER_NAME;
const resources = [
  // The first edu only: the second is the managed resource's (a group belongs to one resource).
  resourceSchema.parse({ name: 'example.com/edu', selectors: { vendors: ['1234'], addresses: [bdf || '*'] }, preparation: { mode: 'verify' } }),
  // The virtio-rng stays with virtio-pci until a claim takes its group.
  resourceSchema.parse({
    name: 'example.com/virtio-rng',
    selectors: { vendors: ['1af4'] },
    preparation: { mode: 'none' },
    binding: { mode: 'managed', allowedDrivers: ['virtio-pci'], timeoutSeconds: 30 },
  }),
  // The second edu, parked on pci-stub until a claim takes it.
  ...(stubBdf
    ? [resourceSchema.parse({ name: 'example.com/edu-managed', selectors: { addresses: [stubBdf] }, preparation: { mode: 'verify' }, binding: { mode: 'managed', allowedDrivers: ['pci-stub'], timeoutSeconds: 30 } })]
    : []),
];
const settings = {
  configFile: null,
  kubeletApi: 'dra',
  dra: { driverName: driver, registryDir: join(dir, 'reg'), driverDir: join(dir, 'plugins', driver), cdiSpecDir: join(dir, 'cdi') },
  sysfsRoot: '/',
  devRoot: '/',
  devicePluginDir: join(dir, 'dp'),
  podResourcesSocket: join(dir, 'pr.sock'),
  pollIntervalMs: 1000,
  logLevel: 'debug',
  simulate: false,
  cdiSpecDir: null,
  nodeName,
  kubeconfig: null,
  metricsPort: null,
  metricsBind: '127.0.0.1',
  handoffHostDir: join(dir, 'handoff'),
  handoffContainerDir: DEFAULT_HANDOFF_CONTAINER_DIR,
  resources,
};
const checkpointPath = join(settings.dra.driverDir, CHECKPOINT_NAME);
const checkpointClaims = () => JSON.parse(readFileSync(checkpointPath, 'utf8')).claims;

const store = new ClaimStore();
const preparation = await buildPreparer({
  simulate: false,
  devRoot: '/',
  resources,
  logger,
  allModes: true,
  binding: b,
  handoff: { hostDir: settings.handoffHostDir, containerDir: settings.handoffContainerDir, podResourcesSocket: null },
});
const daemon = new Daemon(settings, {
  logger,
  ...(preparation.preparer ? { preparer: preparation.preparer } : {}),
  handoff: preparation.handoff,
  uevents: null,
  dra: {
    claims: store.source(),
    slices: null,
    verification: (g) => {
      const v = preparation.lastVerification(g);
      return v ? { ...capabilitiesOf(v), defaultWindowSize: v.info.dma32WindowSize } : undefined;
    },
    checkIntervalMs: 200,
  },
});
const kubelet = new DraKubelet(settings.dra.registryDir, {});

console.log(`# dra on ${process.arch}, node ${process.version}, group ${group}, device ${bdf}, page ${b.pageSize}, driver pid ${process.pid}, scratch ${dir}`);
let deviceName = null;

async function setup() {
  // The kubelet's plugin manager retries a registration that failed (its reconciler runs every
  // second); the stand-in tries once per socket event, so do the kubelet's retry here. Under TCG the
  // first GetInfo (1 s deadline) can miss while the guest is busy.
  const refusals = [];
  kubelet.on('refused', (socket, reason) => {
    refusals.push(reason);
    console.log(`# registration attempt ${refusals.length} failed: ${reason}`);
    if (refusals.length < 10) setTimeout(() => void kubelet.scan(), 1000).unref();
  });
  const registered = kubelet.waitForPlugin(driver, 60_000);
  await kubelet.start();
  const topology = await daemon.start();
  const plugin = await registered;
  const g = topology.groups.get(group);
  deviceName = g ? deviceNameOf(g) : null;
  const expected = `pci-${bdf.toLowerCase().replace(/[:.]/g, '-')}`;
  report(
    plugin.version === 'v1' && plugin.endpoint === join(settings.dra.driverDir, 'dra.sock') && deviceName === expected,
    'setup',
    "the daemon discovers the guest's sysfs and the kubelet stand-in registers the DRA driver over the registration socket",
    `plugin ${plugin.name} ${plugin.version} at ${plugin.endpoint} (GetInfo calls ${kubelet.infoCalls}, failed attempts ${refusals.length}); ${topology.groups.size} IOMMU groups; group ${group} -> device ${deviceName} (expected ${expected})`,
  );
  // The pool as the kubelet sees it: the health stream names the edu's device, healthy.
  let health;
  try {
    health = await kubelet.waitForHealth(driver, (h) => h.some((e) => e.device === deviceName), 10_000);
  } catch (err) {
    health = err;
  }
  const mine = Array.isArray(health) ? health.find((e) => e.device === deviceName) : undefined;
  report(
    mine?.health === 'HEALTHY' && mine.pool === nodeName,
    'setup',
    "the health stream lists the edu's device in this node's pool, healthy",
    Array.isArray(health) ? health.map((e) => `${e.pool}/${e.device} ${e.health}${e.message ? ` (${e.message})` : ''}`).join(', ') : health.message,
  );
  return Boolean(deviceName);
}

function readSpec(answerDevice, uid) {
  const files = listDir(settings.dra.cdiSpecDir) ?? [];
  const file = files.find((f) => f.includes(uid));
  if (!file) return { file: null, spec: null, files };
  return { file, spec: JSON.parse(readFileSync(join(settings.dra.cdiSpecDir, file), 'utf8')), files };
}

async function handoffRound(tag) {
  const l0 = await b.lockedMemoryBytes();
  const f0 = vfioFds();
  const ref = store.put(
    allocatedClaim({
      name: `edu-handoff-${tag}`,
      driver,
      pool: nodeName,
      devices: [{ request: 'edu', device: deviceName }],
      config: [{ source: 'FromClaim', requests: ['edu'], parameters: preparationParameters({ mode: 'handoff', handoff: { memorySize } }) }],
    }),
  );
  const t0 = process.hrtime.bigint();
  const answer = (await kubelet.prepare(driver, [ref]))[ref.uid];
  const prepMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const l1 = await b.lockedMemoryBytes();
  const cdiId = `${driver}/vfio=${ref.uid}-${deviceName}`;
  const dev = answer?.devices?.[0];
  report(
    answer?.error === '' && answer.devices.length === 1 && dev.device_name === deviceName && dev.pool_name === nodeName && dev.cdi_device_ids.join() === cdiId,
    tag,
    `NodePrepareResources (mode handoff, memorySize ${memorySize}) answers the CDI id`,
    `error "${answer?.error ?? 'no answer'}", device ${dev?.pool_name}/${dev?.device_name}, CDI ${dev?.cdi_device_ids?.join(',')}, ${prepMs.toFixed(0)} ms`,
  );
  if (answer?.error !== '') return;
  report(
    l1 >= l0 + BigInt(memoryBytes) && vfioFds().length > f0.length,
    tag,
    'the prepared container is pinned and held by the driver until the pod claims it',
    `VmLck ${hex(l0)} before prepare -> ${hex(l1)} prepared (+${(l1 - l0) >> 10n} KiB), driver VFIO/memfd fds +${vfioFds().length - f0.length}`,
  );

  // The CDI spec the id names, as the container runtime reads it.
  const { file, spec } = readSpec(dev, ref.uid);
  const env = Object.fromEntries((spec?.containerEdits?.env ?? []).map((e) => e.split(/=(.*)/s).slice(0, 2)));
  const mount = spec?.containerEdits?.mounts?.[0];
  const specDevice = spec?.devices?.find((d) => `${spec.kind}=${d.name}` === cdiId);
  const nodes = [...(spec?.containerEdits?.deviceNodes ?? []), ...(specDevice?.containerEdits?.deviceNodes ?? [])].map((d) => d.path);
  const charNodes = nodes.filter((p) => existsSync(p) && statSync(p).isCharacterDevice());
  const socketEnv = env.PVDP_HANDOFF_SOCKET;
  report(
    Boolean(specDevice) &&
      nodes.join() === `/dev/vfio/vfio,/dev/vfio/${group}` &&
      charNodes.length === 2 &&
      mount?.options?.includes('ro') &&
      typeof socketEnv === 'string' &&
      socketEnv.startsWith(`${mount.containerPath}/`) &&
      existsSync(join(mount.hostPath, socketEnv.slice(mount.containerPath.length + 1))) &&
      env.VFIO_GROUPS_EXAMPLE_COM_EDU === String(group) &&
      Number(env.PVDP_HANDOFF_MEMORY_SIZE) === memoryBytes,
    tag,
    'the CDI spec has the device nodes, a read-only mount of the handoff directory and PVDP_HANDOFF_SOCKET',
    `${file}: device ${specDevice?.name}, nodes ${nodes.join(',')} (${charNodes.length} char devices), mount ${mount?.hostPath} -> ${mount?.containerPath} (${mount?.options?.join(',')}), ` +
      `PVDP_HANDOFF_SOCKET=${socketEnv}, PVDP_HANDOFF_MEMORY_SIZE=${env.PVDP_HANDOFF_MEMORY_SIZE}, VFIO_GROUPS_EXAMPLE_COM_EDU=${env.VFIO_GROUPS_EXAMPLE_COM_EDU}`,
  );
  const cp = checkpointClaims()[ref.uid];
  report(
    cp?.state === 'prepared' && cp.groupSets?.[0]?.mode === 'handoff' && cp.devices?.[0]?.group === group && cp.cdiSpecFile === file,
    tag,
    'the checkpoint records the claim as prepared (handoff, the group, the spec file)',
    cp ? `state ${cp.state}, sets ${cp.groupSets.map((s) => `${s.resource}:${s.mode}:${s.groups.join('+')}`).join(' ')}, spec ${cp.cdiSpecFile}` : 'no entry',
  );
  // The kubelet retries prepare: the same answer, nothing prepared twice.
  const again = (await kubelet.prepare(driver, [ref]))[ref.uid];
  const lAgain = await b.lockedMemoryBytes();
  report(
    JSON.stringify(again) === JSON.stringify(answer) && lAgain === l1,
    tag,
    'a repeated NodePrepareResources gives the same answer and prepares nothing again',
    `same answer ${JSON.stringify(again) === JSON.stringify(answer)}, VmLck ${hex(lAgain)}`,
  );
  if (!mount || !socketEnv) return;

  // The container runtime's part: the spec's mount, read-only, in the pod's root; the spec's env.
  const rootfs = join(dir, `rootfs-${tag}`);
  const view = join(rootfs, mount.containerPath);
  mkdirSync(view, { recursive: true });
  bindReadOnly(mount.hostPath, view);
  const podSocket = join(rootfs, socketEnv);
  const podEnv = { ...process.env, ...env, PVDP_VFIO_ADDON: addonPath };
  const cmd =
    tag === 'c'
      ? { file: podC, args: ['claim', podSocket, bdf, tag], env: podEnv }
      : { file: process.execPath, args: [podNode, '--socket', podSocket, '--bdf', bdf, '--tag', tag, '--dist', dist, '--addon', addonPath], env: podEnv };
  let lHeld = null;
  let lUnprepared = null;
  const { holding, ...result } = await runPod(cmd, {
    timeoutMs: 90_000,
    onLine: (line) => {
      // The pod's lines, under this round's tag.
      const m = /^HANDOFF (PASS|FAIL) (\S+): (.*)$/.exec(line);
      if (m) check(m[1] === 'PASS', `${tag}: pod: ${m[3]}`);
      else console.log(`# pod ${tag}: ${line}`);
    },
    whileHolding: async () => {
      try {
        const s = preparation.handoff.manager.status()[0];
        const mine = vfioFds();
        const maps = memfdMappings();
        lHeld = await b.lockedMemoryBytes();
        report(
          s?.state === 'claimed' && mine.length === f0.length && maps.length === 0 && lHeld === l1,
          tag,
          "while the pod holds the container the driver holds nothing of it, and the pinning stays charged to the driver's mm",
          `state ${s?.state}, driver VFIO fds ${mine.length - f0.length} more than before prepare, memfd mappings ${maps.length}, VmLck ${hex(lHeld)} while held (prepared ${hex(l1)})`,
        );
        // The kubelet unprepares (the pod's containers are gone as far as it knows) while the pod still runs.
        const un = (await kubelet.unprepare(driver, [ref]))[ref.uid];
        lUnprepared = await b.lockedMemoryBytes();
        const claimsLeft = checkpointClaims();
        const specLeft = listDir(settings.dra.cdiSpecDir);
        const handoffLeft = listDir(settings.handoffHostDir);
        report(
          un?.error === '' && !(ref.uid in claimsLeft) && !specLeft?.includes(file) && (handoffLeft === null || handoffLeft.length === 0) && preparation.handoff.manager.status().length === 0,
          tag,
          'NodeUnprepareResources while the pod holds the container: the CDI spec and the handoff directory are gone, the checkpoint has no claim',
          `error "${un?.error ?? 'no answer'}", checkpoint claims ${Object.keys(claimsLeft).length}, CDI dir ${show(specLeft)}, handoff dir ${show(handoffLeft)}, handoff slots ${preparation.handoff.manager.status().length}`,
        );
        report(
          lUnprepared === l1,
          tag,
          "after the unprepare the pod's hold keeps the pages pinned (the kernel releases them when the pod closes the container)",
          `VmLck ${hex(lUnprepared)} (prepared ${hex(l1)})`,
        );
      } catch (err) {
        report(false, tag, 'checks while the pod holds the container', `${err.code ?? ''} ${err.stack ?? err.message}`);
      }
    },
  });
  report(result.code === 0 && holding, tag, 'the pod exits 0 after claiming through the CDI mount', `exit ${result.code}${result.signal ? ` signal ${result.signal}` : ''}, socket ${podSocket}`);
  try {
    busybox('umount', [view]);
    rmSync(rootfs, { recursive: true });
  } catch (err) {
    report(false, tag, "the pod's view unmounts", err.message);
  }
  if (!holding) {
    await kubelet.unprepare(driver, [ref]).catch(() => undefined);
  }

  // The pod's exit released everything in the kernel.
  const l2 = await lockedSettled(b, l0);
  report(
    l2 === l0 && lHeld !== null,
    tag,
    "after the pod exits the driver's VmLck is back at its baseline",
    `VmLck ${hex(l0)} before prepare, ${hex(l1)} prepared, ${lHeld === null ? '-' : hex(lHeld)} while the pod held it, ${lUnprepared === null ? '-' : hex(lUnprepared)} after unprepare with the pod holding, ${hex(l2)} after the pod exited`,
  );
  const reopen = await groupOpens(b, group);
  const left = vfioFds();
  report(reopen === 'opened and closed' && left.length === f0.length, tag, `nothing holds group ${group} any more (/dev/vfio/${group} opens again)`, `${reopen}; driver VFIO fds ${left.join(',') || 'none'}`);
}

async function verifyRound(tag) {
  const l0 = await b.lockedMemoryBytes();
  const ref = store.put(allocatedClaim({ name: 'edu-verify', driver, pool: nodeName, devices: [{ request: 'edu', device: deviceName }] }));
  const answer = (await kubelet.prepare(driver, [ref]))[ref.uid];
  const l1 = await b.lockedMemoryBytes();
  const cdiId = `${driver}/vfio=${ref.uid}-${deviceName}`;
  const dev = answer?.devices?.[0];
  report(
    answer?.error === '' && dev?.device_name === deviceName && dev.cdi_device_ids.join() === cdiId,
    tag,
    'NodePrepareResources of a claim without configuration (the resource is in verify mode) answers the CDI id',
    `error "${answer?.error ?? 'no answer'}", CDI ${dev?.cdi_device_ids?.join(',')}`,
  );
  const { file, spec } = readSpec(dev, ref.uid);
  const env = spec?.containerEdits?.env ?? [];
  const nodes = [...(spec?.containerEdits?.deviceNodes ?? []), ...(spec?.devices?.[0]?.containerEdits?.deviceNodes ?? [])].map((d) => d.path);
  const cp = checkpointClaims()[ref.uid];
  report(
    nodes.join() === `/dev/vfio/vfio,/dev/vfio/${group}` && !(spec?.containerEdits?.mounts?.length > 0) && !env.some((e) => e.startsWith('PVDP_HANDOFF_')) && cp?.state === 'prepared' && cp.groupSets[0]?.mode === 'verify',
    tag,
    'its CDI spec has the device nodes only (no handoff mount or variables); the checkpoint records it (verify)',
    `${file}: nodes ${nodes.join(',')}, mounts ${spec?.containerEdits?.mounts?.length ?? 0}, env ${env.join(' ')}, checkpoint ${cp?.state} ${cp?.groupSets?.[0]?.mode}`,
  );
  const described = preparation.describe(group);
  const v = preparation.lastVerification(group);
  const reopen = await groupOpens(b, group);
  report(
    Boolean(v) && /sPAPR/.test(described) && l1 === l0 && reopen === 'opened and closed',
    tag,
    'the verification ran on the real kernel and released everything (VmLck unchanged, the group opens while the claim is prepared)',
    `${described}; VmLck ${hex(l0)} -> ${hex(l1)}; group ${group} ${reopen}`,
  );
  const un = (await kubelet.unprepare(driver, [ref]))[ref.uid];
  const specLeft = listDir(settings.dra.cdiSpecDir);
  report(
    un?.error === '' && !specLeft?.includes(file) && !(ref.uid in checkpointClaims()),
    tag,
    'NodeUnprepareResources removes its CDI spec and its checkpoint entry',
    `error "${un?.error ?? 'no answer'}", CDI dir ${show(specLeft)}, checkpoint claims ${Object.keys(checkpointClaims()).length}`,
  );
}

/** `BDF:driver` of every member of group `g`, from sysfs. */
function membersDrivers(g) {
  const dir = `/sys/kernel/iommu_groups/${g}/devices`;
  return (listDir(dir) ?? []).map((m) => {
    let d = 'none';
    try {
      d = readlinkSync(`${dir}/${m}/driver`).split('/').pop();
    } catch {
      // Unbound.
    }
    return `${m}:${d}`;
  });
}

/** The virtio bus driver on the virtio device under `bdf` (virtio_rng once virtio-pci is back). */
function virtioChildDriver(bdf) {
  const dir = `/sys/bus/pci/devices/${bdf}`;
  const child = (listDir(dir) ?? []).find((n) => /^virtio\d+$/.test(n));
  if (!child) return 'no virtio device';
  try {
    return `${child}:${readlinkSync(`${dir}/${child}/driver`).split('/').pop()}`;
  } catch {
    return `${child}:none`;
  }
}

/** Opens group `g`, reads GROUP_GET_STATUS, closes: "viable" or why not. */
async function groupViable(g) {
  let fd;
  try {
    fd = await b.openGroup('/', g);
    const st = await b.groupGetStatus(fd);
    return st.viable ? 'opens, viable' : `opens, not viable (flags 0x${st.flags.toString(16)})`;
  } catch (err) {
    return `${err.code ?? ''} ${err.message}`;
  } finally {
    if (fd !== undefined) await b.close(fd).catch(() => undefined);
  }
}

/** Runs `fn` while sampling the driver of `address` every few ms: the drivers seen meanwhile. */
async function sampling(address, fn) {
  const seen = [];
  const sample = () => {
    let d = 'none';
    try {
      d = readlinkSync(`/sys/bus/pci/devices/${address}/driver`).split('/').pop();
    } catch {
      // Unbound for a moment.
    }
    if (seen.at(-1) !== d) seen.push(d);
  };
  sample();
  const timer = setInterval(sample, 5);
  try {
    return { result: await fn(), seen };
  } finally {
    clearInterval(timer);
    sample();
  }
}

const driverMap = (list) => Object.fromEntries(list.map((m) => [m.slice(0, m.lastIndexOf(':')), m.slice(m.lastIndexOf(':') + 1)]));

/**
 * The virtio round: the guest's virtio-rng (virtio-pci) under a managed resource (mode none). A
 * claim in verify mode is taken to vfio-pci, and the QEMU pseries kernel then refuses every DMA
 * window on that PE (virtio-pci's dynamic window failed at boot: "in failed DDW device list"), so
 * the prepare fails and everything is rolled back to virtio-pci. A claim in mode none is taken, the
 * group opens viable, and the unprepare gives the function back.
 */
async function managedVirtioRound(tag) {
  const topology = daemon.topology();
  const grp = [...topology.groups.values()].find((x) => x.functions.some((f) => f.vendor === '1af4'));
  if (!grp) {
    report(false, tag, 'the guest has a virtio device on virtio-pci', `no function of vendor 1af4 in ${topology.groups.size} groups: boot with nonViable`);
    return;
  }
  const g = grp.id;
  const name = deviceNameOf(grp);
  const virtio = grp.functions.find((f) => f.vendor === '1af4');
  const before = membersDrivers(g);
  // The virtio device on top of virtio-pci comes back too (bound to virtio_rng where that driver is loaded).
  const childBefore = virtioChildDriver(virtio.address);
  let health;
  try {
    health = await kubelet.waitForHealth(driver, (h) => h.some((e) => e.device === name), 10_000);
  } catch (err) {
    health = err;
  }
  const mine = Array.isArray(health) ? health.find((e) => e.device === name) : undefined;
  report(
    virtio.driver === 'virtio-pci' && mine?.health === 'HEALTHY',
    tag,
    `the managed resource publishes group ${g} healthy while its virtio function is on its host driver`,
    `device ${name}, drivers before ${before.join(' ')}, health ${mine ? `${mine.health}${mine.message ? ` (${mine.message})` : ''}` : Array.isArray(health) ? 'not listed' : health.message}`,
  );

  // Verify mode: taken, then the kernel refuses the window; the rollback gives the function back.
  const failing = store.put(
    allocatedClaim({ name: 'rng-verify', driver, pool: nodeName, devices: [{ request: 'rng', device: name }], config: [{ source: 'FromClaim', parameters: preparationParameters({ mode: 'verify' }) }] }),
  );
  const tried = await sampling(virtio.address, async () => (await kubelet.prepare(driver, [failing]))[failing.uid]);
  const afterRollback = membersDrivers(g);
  report(
    /create-window|MAP_DMA/.test(tried.result?.error ?? '') &&
      tried.seen.includes('vfio-pci') &&
      virtioChildDriver(virtio.address) === childBefore &&
      JSON.stringify(driverMap(afterRollback)) === JSON.stringify(driverMap(before)) &&
      !(failing.uid in checkpointClaims()),
    tag,
    `a verify claim takes ${virtio.address} to vfio-pci; the kernel refuses a DMA window on this PE, and the rollback gives it back to virtio-pci`,
    `driver before virtio-pci, during ${tried.seen.join(' -> ')}, after ${afterRollback.join(' ')}; virtio device ${childBefore} before, ${virtioChildDriver(virtio.address)} after; error "${(tried.result?.error ?? 'no answer').slice(0, 300)}"`,
  );

  // Mode none: taken and held for the claim, given back at unprepare.
  const ref = store.put(allocatedClaim({ name: 'rng-managed', driver, pool: nodeName, devices: [{ request: 'rng', device: name }] }));
  const answer = (await kubelet.prepare(driver, [ref]))[ref.uid];
  const during = membersDrivers(g);
  const override = readFileSync(`/sys/bus/pci/devices/${virtio.address}/driver_override`, 'utf8').trim();
  const viable = await groupViable(g);
  report(
    answer?.error === '' && during.every((m) => m.endsWith(':vfio-pci')) && override === 'vfio-pci' && viable === 'opens, viable',
    tag,
    `NodePrepareResources takes ${virtio.address} from virtio-pci to vfio-pci; the group opens and is viable`,
    `error "${answer?.error ?? 'no answer'}"; driver before ${before.join(' ')}, during ${during.join(' ')}; driver_override ${override}; group ${g} ${viable}`,
  );
  if (answer?.error !== '') return;
  const cp = checkpointClaims()[ref.uid];
  const recorded = cp?.bindings?.[0]?.functions?.find((f) => f.address === virtio.address);
  report(
    cp?.state === 'prepared' && recorded?.driver === 'virtio-pci' && recorded.driverOverride === null,
    tag,
    'the checkpoint records the original driver of every function',
    cp ? `state ${cp.state}, ${cp.bindings?.[0]?.functions?.map((f) => `${f.address}:${f.driver}/${f.driverOverride ?? '(null)'}`).join(' ')}` : 'no entry',
  );
  const un = (await kubelet.unprepare(driver, [ref]))[ref.uid];
  const after = membersDrivers(g);
  const overrideAfter = readFileSync(`/sys/bus/pci/devices/${virtio.address}/driver_override`, 'utf8').trim();
  report(
    un?.error === '' && JSON.stringify(driverMap(after)) === JSON.stringify(driverMap(before)) && overrideAfter === '(null)' && virtioChildDriver(virtio.address) === childBefore && !(ref.uid in checkpointClaims()),
    tag,
    `NodeUnprepareResources gives ${virtio.address} back to virtio-pci`,
    `error "${un?.error ?? 'no answer'}"; driver before ${before.join(' ')}, during ${during.join(' ')}, after ${after.join(' ')}; driver_override ${overrideAfter}; virtio device ${childBefore} before, ${virtioChildDriver(virtio.address)} after`,
  );
}

/**
 * The stub round: the second edu handed to the host's pci-stub driver (as an operator parks a
 * device), then a verify claim under a managed resource takes it to vfio-pci, the whole verify
 * sequence runs on the real kernel (pci-stub sets no DMA mask, so the PE keeps its windows), and
 * the unprepare gives it back to pci-stub.
 */
async function managedStubRound(tag) {
  if (!stubBdf) {
    report(false, tag, 'the guest has a second edu for the pci-stub round', `PVDP_BDFS=${process.env.PVDP_BDFS}`);
    return;
  }
  const sys = `/sys/bus/pci/devices/${stubBdf}`;
  try {
    if (!existsSync('/sys/bus/pci/drivers/pci-stub')) execFileSync('insmod', ['/payload/pci-stub.ko']);
    const write = (path, value) => execFileSync('sh', ['-c', `echo ${value} > ${path}`]);
    write(`${sys}/driver_override`, 'pci-stub');
    if (existsSync(`${sys}/driver`)) write(`${sys}/driver/unbind`, stubBdf);
    write('/sys/bus/pci/drivers_probe', stubBdf);
  } catch (err) {
    report(false, tag, `${stubBdf} is handed to pci-stub`, err.message);
    return;
  }
  await daemon.refresh();
  const grp = [...daemon.topology().groups.values()].find((x) => x.functions.some((f) => f.address === stubBdf));
  const g = grp?.id;
  const name = grp ? deviceNameOf(grp) : null;
  const before = grp ? membersDrivers(g) : [];
  let health;
  try {
    health = await kubelet.waitForHealth(driver, (h) => h.some((e) => e.device === name && e.health === 'HEALTHY'), 10_000);
  } catch (err) {
    health = err;
  }
  const mine = Array.isArray(health) ? health.find((e) => e.device === name) : undefined;
  report(
    before.join() === `${stubBdf}:pci-stub` && mine?.health === 'HEALTHY' && !existsSync(`/dev/vfio/${g}`),
    tag,
    `the managed resource publishes group ${g} healthy while its edu is on pci-stub`,
    `device ${name}, drivers before ${before.join(' ')}, /dev/vfio/${g} ${existsSync(`/dev/vfio/${g}`) ? 'exists' : 'absent'}, health ${mine ? mine.health : Array.isArray(health) ? 'not listed' : health.message}`,
  );
  if (!name) return;
  const ref = store.put(allocatedClaim({ name: 'edu-managed', driver, pool: nodeName, devices: [{ request: 'edu', device: name }] }));
  const l0 = await b.lockedMemoryBytes();
  const answer = (await kubelet.prepare(driver, [ref]))[ref.uid];
  const during = membersDrivers(g);
  const described = preparation.describe(g);
  const viable = await groupViable(g);
  report(
    answer?.error === '' && during.join() === `${stubBdf}:vfio-pci` && /sPAPR/.test(described) && Boolean(preparation.lastVerification(g)) && viable === 'opens, viable' && (await b.lockedMemoryBytes()) === l0,
    tag,
    `NodePrepareResources takes ${stubBdf} from pci-stub to vfio-pci and the verify sequence runs on group ${g}`,
    `error "${answer?.error ?? 'no answer'}"; driver before ${before.join(' ')}, during ${during.join(' ')}; ${described}; group ${g} ${viable}`,
  );
  const un = (await kubelet.unprepare(driver, [ref]))[ref.uid];
  const after = membersDrivers(g);
  const overrideAfter = readFileSync(`${sys}/driver_override`, 'utf8').trim();
  report(
    un?.error === '' && after.join() === `${stubBdf}:pci-stub` && overrideAfter === 'pci-stub' && !existsSync(`/dev/vfio/${g}`) && !(ref.uid in checkpointClaims()),
    tag,
    `NodeUnprepareResources gives ${stubBdf} back to pci-stub`,
    `error "${un?.error ?? 'no answer'}"; driver before ${before.join(' ')}, during ${during.join(' ')}, after ${after.join(' ')}; driver_override ${overrideAfter}; /dev/vfio/${g} ${existsSync(`/dev/vfio/${g}`) ? 'exists' : 'gone'}`,
  );
}

// Discovery on the real sysfs: the thread pool and the reader thread give the same
// topology, and the identity read from each function's uevent is what its vendor,
// device and class files say.
async function discoveryRound(tag) {
  const roots = { sysfsRoot: '/', devRoot: '/' };
  const pool = await discoverTopology(roots, { worker: false });
  const thread = await discoverTopology(roots, { worker: true });
  const strip = (t) => JSON.stringify([...t.groups.values()].sort((x, y) => x.id - y.id));
  report(
    pool.groups.size > 0 && strip(pool) === strip(thread),
    tag,
    'a full scan through the reader thread gives the same groups as through the thread pool',
    `${pool.groups.size} groups, ${[...pool.groups.values()].reduce((n, g) => n + g.functions.length, 0)} functions`,
  );
  const attr = (a, name) => readFileSync(`/sys/bus/pci/devices/${a}/${name}`, 'utf8').trim().replace(/^0x/, '').toLowerCase();
  const wrong = [];
  let sample = '';
  for (const g of pool.groups.values()) {
    for (const f of g.functions) {
      const want = `${attr(f.address, 'vendor')}:${attr(f.address, 'device')}:${attr(f.address, 'class')}`;
      const got = `${f.vendor}:${f.device}:${f.classCode}`;
      if (want !== got) wrong.push(`${f.address} ${got} (files ${want})`);
      if (!sample) sample = readFileSync(`/sys/bus/pci/devices/${f.address}/uevent`, 'utf8').trim().split('\n').join(' ');
    }
  }
  report(wrong.length === 0, tag, "every function's vendor, device and class agree with its attribute files", wrong.join('; ') || `uevent of the first: ${sample}`);
  // The safety poll's fingerprints (driver links, AER fatal counts, EEH state) read both ways.
  const { ids } = await listGroupIds(roots);
  const reader = new WorkerReader();
  const viaPool = [];
  const viaThread = [];
  try {
    for (const id of ids) {
      viaPool.push(await groupFingerprint(roots, id, existsSync(`/dev/vfio/${id}`), poolReader));
      viaThread.push(await groupFingerprint(roots, id, existsSync(`/dev/vfio/${id}`), reader));
    }
  } finally {
    reader.close();
  }
  report(
    ids.length > 0 && JSON.stringify(viaPool) === JSON.stringify(viaThread) && reader.stats().fellBack === undefined,
    tag,
    "every group's safety-poll fingerprint is the same through the reader thread as through the thread pool",
    `${ids.length} groups: ${ids.map((id, i) => `${id} ${viaThread[i]}`).join(" ; ").slice(0, 600)}`,
  );
}

let lStart = null;
let fStart = [];
try {
  try {
    await discoveryRound('discovery');
  } catch (err) {
    report(false, 'discovery', 'round ran', `${err.code ?? ''} ${err.stack ?? err.message}`);
  }
  if (await setup()) {
    lStart = await b.lockedMemoryBytes();
    fStart = vfioFds();
    for (const tag of rounds) {
      try {
        if (tag === 'verify') await verifyRound(tag);
        else if (tag === 'managed') await managedVirtioRound(tag);
        else if (tag === 'stub') await managedStubRound(tag);
        else await handoffRound(tag);
      } catch (err) {
        report(false, tag, 'round ran', `${err.code ?? ''} ${err.stack ?? err.message}`);
      }
    }
  }
} catch (err) {
  report(false, 'setup', 'the daemon and the kubelet stand-in start', `${err.code ?? ''} ${err.stack ?? err.message}`);
}

// Shutdown: nothing prepared stays, nothing is held, and the scratch directory goes.
try {
  await daemon.stop();
  await kubelet.stop();
  const lEnd = await b.lockedMemoryBytes();
  const left = vfioFds();
  const claimsLeft = existsSync(checkpointPath) ? Object.keys(checkpointClaims()) : [];
  report(
    lStart !== null && lEnd === lStart && left.length === 0 && fStart.length === 0 && claimsLeft.length === 0 && (listDir(settings.dra.cdiSpecDir) ?? []).length === 0,
    'driver',
    'after every round and stop() the VmLck is as at start, no VFIO fd is left, no claim and no CDI spec remain',
    `VmLck ${lStart === null ? '-' : hex(lStart)} -> ${hex(lEnd)}, fds ${left.join(',') || 'none'}, checkpoint claims ${claimsLeft.length}, CDI dir ${show(listDir(settings.dra.cdiSpecDir))}`,
  );
} catch (err) {
  report(false, 'driver', 'stop()', `${err.code ?? ''} ${err.stack ?? err.message}`);
}
rmSync(dir, { recursive: true, force: true });
if (counts.failed) {
  console.log('# daemon log (last 40 lines):');
  for (const l of logLines.slice(-40)) console.log(`# ${l}`);
}
summary();
process.exit(exitCode());
