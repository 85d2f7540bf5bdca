// The DRA front end on the simulated node, through the DRA kubelet stand-in
// over real unix sockets: registration, prepare and unprepare in every
// preparation mode, per-claim refusals, the health stream, restarts of the
// kubelet and of the driver with prepared claims.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, readdir, readFile, rm, unlink, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/log.js';
import { startDraNode, SIMULATED_NODE_NAME, type DraNode } from '../../src/simulate/dra-node.js';
import { allocatedClaim, ClaimStore, preparationParameters } from '../../src/simulate/claims.js';
import { setEehState, bindDriver } from '../../src/simulate/sysfs-tree.js';
import { FROZEN_EEH_STATE, HEALTHY_EEH_STATE } from '../../src/simulate/power-node.js';
import { DEFAULT_DRIVER_NAME } from '../../src/dra/constants.js';
import { claim as claimHandoff } from '../../src/handoff/client.js';
import { HANDOFF_SOCKET_NAME } from '../../src/handoff/protocol.js';
import type { DraKubeletOptions } from '../../src/simulate/dra-kubelet.js';
import { waitFor } from '../helpers/fixtures.js';

const DRIVER = DEFAULT_DRIVER_NAME;
const POOL = SIMULATED_NODE_NAME;
// Device names come from the first endpoint's address (stable across reboots), not the group number.
const NVME_G1 = 'pci-0000-02-00-0';
const NVME_G4 = 'pci-0030-02-00-0';
const GPU_G5 = 'pci-0035-01-00-0';
const FPGA_G6 = 'pci-0035-02-00-0';
const CX5_G3 = 'pci-0030-01-00-0';
const BOOT_NVME_G0 = 'pci-0000-01-00-0';

let dir: string;
let store: ClaimStore;
let node: DraNode | null;
let logLines: { level: string; msg: string; [k: string]: unknown }[];

function logger() {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logLines.push(JSON.parse(line));
      cb();
    },
  });
  return createLogger({ level: 'debug', destination: sink });
}

async function start(kubelet: DraKubeletOptions = {}, reuse?: DraNode): Promise<DraNode> {
  node = await startDraNode({ dir, logger: logger(), claims: store.source(), kubelet, ...(reuse ? { roots: reuse.roots } : {}) });
  return node;
}

function claimOf(name: string, devices: { request: string; device: string; pool?: string; driver?: string }[], extra: Partial<Parameters<typeof allocatedClaim>[0]> = {}) {
  return store.put(allocatedClaim({ name, driver: DRIVER, pool: POOL, devices, ...extra }));
}

async function cdiFiles(): Promise<string[]> {
  return (await readdir(node!.settings.dra.cdiSpecDir).catch(() => [] as string[])).sort();
}

async function readSpec(file: string): Promise<{ kind: string; devices: { name: string; containerEdits: { deviceNodes: { path: string }[] } }[]; containerEdits: { deviceNodes: { path: string }[]; env?: string[]; mounts?: { hostPath: string; containerPath: string; options: string[] }[] } }> {
  return JSON.parse(await readFile(join(node!.settings.dra.cdiSpecDir, file), 'utf8'));
}

beforeEach(async () => {
  dir = await mkdtemp('/tmp/pvdp-');
  store = new ClaimStore();
  node = null;
  logLines = [];
});

afterEach(async () => {
  await node?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('DRA registration', () => {
  it('serves the DRA service before registering, and advertises v1 then v1beta1 and the health versions', async () => {
    const n = await start();
    const plugin = n.kubelet!.plugin(DRIVER)!;
    expect(plugin.endpoint).toBe(join(n.settings.dra.driverDir, 'dra.sock'));
    expect(plugin.version).toBe('v1');
    expect(plugin.healthVersion).toBe('v1');
    expect(n.daemon.frontEnd.readiness()).toEqual([{ name: DRIVER, registered: true }]);
    const served = logLines.findIndex((l) => l.msg === 'Serving the DRA kubelet plugin');
    const registered = logLines.findIndex((l) => l.msg === 'The kubelet registered the DRA driver');
    expect(served).toBeGreaterThanOrEqual(0);
    expect(registered).toBeGreaterThan(served);
  });

  it('works with a kubelet that knows only v1beta1 and the v1alpha1 health stream (Kubernetes 1.33)', async () => {
    const n = await start({ knownVersions: ['v1beta1'], knownHealthVersions: ['v1alpha1'] });
    const plugin = n.kubelet!.plugin(DRIVER)!;
    expect(plugin.version).toBe('v1beta1');
    expect(plugin.healthVersion).toBe('v1alpha1');
    const ref = claimOf('one-nvme', [{ request: 'nvme', device: NVME_G1 }]);
    const answer = await n.kubelet!.prepare(DRIVER, [ref]);
    expect(answer[ref.uid]).toEqual({
      error: '',
      devices: [{ request_names: ['nvme'], pool_name: POOL, device_name: NVME_G1, cdi_device_ids: [`${DRIVER}/vfio=${ref.uid}-${NVME_G1}`] }],
    });
    const health = await n.kubelet!.waitForHealth(DRIVER, (h) => h.length > 0);
    // v1alpha1 has no message field.
    expect(health.every((h) => h.message === '')).toBe(true);
  });

  it('registers again after a kubelet restart and after its registration socket was removed', async () => {
    const n = await start();
    const before = n.kubelet!.infoCalls;
    await n.kubelet!.restart();
    await n.kubelet!.waitForPlugin(DRIVER);
    expect(n.kubelet!.infoCalls).toBeGreaterThan(before);
    // Counted from here: a GetInfo that ran out of its 1 s deadline on a loaded machine is asked
    // again, so the restart may have taken more than one.
    const infoBefore = n.kubelet!.infoCalls;
    await unlink(n.daemon.dra!.registration.socketPath);
    await waitFor(() => n.kubelet!.infoCalls > infoBefore, { timeoutMs: 10_000, what: 'the kubelet to ask the new registration socket' });
    await waitFor(() => n.daemon.dra!.registration.report().registered, { timeoutMs: 10_000, what: 'the registration' });
    // The service socket, removed, is served again too.
    await unlink(n.daemon.dra!.server.socketPath);
    await n.daemon.dra!.checkNow();
    const ref = claimOf('after-restart', [{ request: 'gpu', device: GPU_G5 }]);
    expect((await n.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
  });
});

describe('DRA prepare and unprepare', () => {
  it('prepares a claim in verify mode: one CDI spec with the device nodes and the variables; idempotent; unprepare removes it', async () => {
    const n = await start();
    const ref = claimOf('two-nvme', [
      { request: 'nvme', device: NVME_G1 },
      { request: 'nvme', device: NVME_G4 },
    ]);
    const first = await n.kubelet!.prepare(DRIVER, [ref]);
    expect(first[ref.uid]!.error).toBe('');
    expect(first[ref.uid]!.devices.map((d) => d.device_name)).toEqual([NVME_G1, NVME_G4]);
    expect(n.preparation.describe(1)).toMatch(/sPAPR TCE v2/);
    const files = await cdiFiles();
    expect(files).toEqual([`${DRIVER}-claim-${ref.uid}.json`]);
    const spec = await readSpec(files[0]!);
    expect(spec.kind).toBe(`${DRIVER}/vfio`);
    expect(spec.containerEdits.deviceNodes.map((d) => d.path)).toEqual(['/dev/vfio/vfio']);
    expect(spec.devices.map((d) => [d.name, d.containerEdits.deviceNodes.map((x) => x.path)])).toEqual([
      [`${ref.uid}-${NVME_G1}`, ['/dev/vfio/1']],
      [`${ref.uid}-${NVME_G4}`, ['/dev/vfio/4']],
    ]);
    expect(spec.containerEdits.env).toEqual(['PCI_RESOURCE_IBM_COM_NVME=0000:02:00.0,0030:02:00.0', 'VFIO_GROUPS_IBM_COM_NVME=1,4']);
    const reads = store.reads;
    const again = await n.kubelet!.prepare(DRIVER, [ref]);
    expect(again).toEqual(first);
    // Nothing prepared twice: the claim was not even read again.
    expect(store.reads).toBe(reads);
    const checkpoint = JSON.parse(await readFile(join(n.settings.dra.driverDir, 'checkpoint.json'), 'utf8'));
    expect(checkpoint.claims[ref.uid].state).toBe('prepared');
    expect(await n.kubelet!.unprepare(DRIVER, [ref])).toEqual({ [ref.uid]: { error: '' } });
    expect(await cdiFiles()).toEqual([]);
    const after = JSON.parse(await readFile(join(n.settings.dra.driverDir, 'checkpoint.json'), 'utf8'));
    expect(after.claims).toEqual({});
    // Unknown claims are success.
    expect(await n.kubelet!.unprepare(DRIVER, [ref, { namespace: 'x', name: 'never', uid: 'f00d' }])).toEqual({ [ref.uid]: { error: '' }, f00d: { error: '' } });
  });

  it('takes the window, memory and claim timeout from the claim (class defaults, the claim wins) and hands the container over', async () => {
    const n = await start();
    // The GPU resource is in verify mode on the node; the claim asks for a handoff.
    const ref = claimOf('gpu-handoff', [{ request: 'gpu', device: GPU_G5 }], {
      config: [
        { source: 'FromClass', parameters: preparationParameters({ mode: 'handoff', handoff: { memorySize: '1Mi', claimTimeoutSeconds: 30 } }) },
        { source: 'FromClaim', requests: ['gpu'], parameters: preparationParameters({ handoff: { memorySize: '2Mi' } }) },
      ],
    });
    const answer = await n.kubelet!.prepare(DRIVER, [ref]);
    expect(answer[ref.uid]!.error).toBe('');
    const spec = await readSpec((await cdiFiles())[0]!);
    const env = Object.fromEntries(spec.containerEdits.env!.map((e) => e.split(/=(.*)/s).slice(0, 2)));
    expect(env['PVDP_HANDOFF_MEMORY_SIZE']).toBe(String(2 << 20));
    expect(env['PVDP_HANDOFF_CLAIM_TIMEOUT_SECONDS']).toBe('30');
    expect(env['VFIO_GROUPS_IBM_COM_GPU']).toBe('5');
    const mount = spec.containerEdits.mounts![0]!;
    expect(mount.options).toContain('ro');
    expect(mount.containerPath).toBe(env['PVDP_HANDOFF_SOCKET']!.replace(/\/handoff\.sock$/, ''));
    // The pod (another process of the simulated kernel) claims through the mounted socket.
    const kernel = n.preparation.kernel!;
    const pod = kernel.spawnProcess();
    const claimed = await claimHandoff(join(mount.hostPath, HANDOFF_SOCKET_NAME), { transport: n.preparation.simulatedNetwork!.claimTransport(pod) });
    expect(BigInt(claimed.description.memory.size)).toBe(2n << 20n);
    expect(claimed.description.groups.map((g) => g.group)).toEqual([5]);
    pod.exit();
    expect(await n.kubelet!.unprepare(DRIVER, [ref])).toEqual({ [ref.uid]: { error: '' } });
    expect(await readdir(n.settings.handoffHostDir)).toEqual([]);
  });

  it('refuses, claim by claim, what it cannot prepare, naming the claim, the device and the reason; leaves nothing behind', async () => {
    const n = await start();
    const good = claimOf('good', [{ request: 'cx', device: CX5_G3 }]);
    const otherPool = claimOf('other-pool', [{ request: 'nvme', device: NVME_G1, pool: 'another-node' }]);
    const unknown = claimOf('unknown-device', [{ request: 'nvme', device: 'pci-0099-01-00-0' }]);
    const hostOwned = claimOf('host-owned', [{ request: 'nvme', device: BOOT_NVME_G0 }]);
    const unallocated = claimOf('unallocated', [{ request: 'nvme', device: NVME_G1 }], { unallocated: true });
    const badConfig = claimOf('bad-config', [{ request: 'nvme', device: NVME_G4 }], {
      config: [{ source: 'FromClaim', parameters: preparationParameters({ mode: 'handoff', handoff: { memorySize: 'lots', hugePageShift: 3 } }) }],
    });
    const wrongKind = claimOf('wrong-kind', [{ request: 'nvme', device: NVME_G4 }], {
      config: [{ source: 'FromClass', parameters: { apiVersion: 'v1', kind: 'Other' } }],
    });
    const twice = claimOf('twice', [
      { request: 'a', device: NVME_G4 },
      { request: 'b', device: NVME_G4 },
    ]);
    const replaced = { ...claimOf('replaced', [{ request: 'nvme', device: NVME_G4 }]), uid: 'aaaa-bbbb' };
    const missing = { namespace: 'default', name: 'missing', uid: '1234-5678' };
    const hostile = [
      { namespace: 'default', name: 'x', uid: '../../etc/passwd' },
      { namespace: '../..', name: 'x', uid: 'abcd' },
      { namespace: 'default', name: '', uid: 'abce' },
    ];
    const answer = await n.kubelet!.prepare(DRIVER, [good, otherPool, unknown, hostOwned, unallocated, badConfig, wrongKind, twice, replaced, missing, ...hostile]);
    expect(answer[good.uid]!.error).toBe('');
    expect(answer[otherPool.uid]!.error).toMatch(/default\/other-pool.*is in pool another-node, not in this node's pool power9-sim/);
    expect(answer[unknown.uid]!.error).toMatch(/pci-0099-01-00-0 .*is not a device of this node's pool/);
    // The boot NVMe is on the host's nvme driver: never offered, so not in the pool.
    expect(answer[hostOwned.uid]!.error).toMatch(/pci-0000-01-00-0 .*is not a device of this node's pool/);
    expect(answer[unallocated.uid]!.error).toMatch(/default\/unallocated is not allocated/);
    expect(answer[badConfig.uid]!.error).toMatch(/status\.allocation\.devices\.config\[0\]\.opaque\.parameters\.handoff\.memorySize: must be a positive size/);
    expect(answer[badConfig.uid]!.error).toMatch(/handoff\.hugePageShift/);
    expect(answer[wrongKind.uid]!.error).toMatch(/parameters\.apiVersion: must be power-vfio\.ibm\.com\/v1alpha1/);
    expect(answer[twice.uid]!.error).toMatch(/allocated more than once/);
    expect(answer['aaaa-bbbb']!.error).toMatch(/was deleted and created again/);
    expect(answer[missing.uid]!.error).toMatch(/default\/missing was not found/);
    expect(answer['../../etc/passwd']!.error).toMatch(/is not a Kubernetes UID/);
    expect(answer['abcd']!.error).toMatch(/namespace .* is not a namespace name/);
    expect(answer['abce']!.error).toMatch(/name "" is not a ResourceClaim name/);
    // Only the good claim holds anything.
    expect(await cdiFiles()).toEqual([`${DRIVER}-claim-${good.uid}.json`]);
    expect([...n.daemon.dra!.claims.prepared().keys()]).toEqual([good.uid]);
  });

  it('refuses an unhealthy device, and an API server that cannot be read is an error the kubelet retries', async () => {
    const n = await start();
    await setEehState(n.roots, '0030:02:00.0', FROZEN_EEH_STATE);
    await n.daemon.refresh();
    const ref = claimOf('frozen', [{ request: 'nvme', device: NVME_G4 }]);
    const answer = await n.kubelet!.prepare(DRIVER, [ref]);
    expect(answer[ref.uid]!.error).toMatch(/pci-0030-02-00-0 \(IOMMU group 4\) of request "nvme" is unhealthy: the PE is frozen by EEH/);
    store.failure = new Error('cannot read ResourceClaim default/frozen from the API server (unreachable: connect ECONNREFUSED); the kubelet will retry');
    const down = claimOf('down', [{ request: 'nvme', device: NVME_G1 }]);
    expect((await n.kubelet!.prepare(DRIVER, [down]))[down.uid]!.error).toMatch(/ECONNREFUSED.*the kubelet will retry/);
    store.failure = null;
    expect((await n.kubelet!.prepare(DRIVER, [down]))[down.uid]!.error).toBe('');
    expect(await cdiFiles()).toEqual([`${DRIVER}-claim-${down.uid}.json`]);
  });

  it('rolls back a prepare that fails part-way: a handoff made for one request is released when another fails', async () => {
    const n = await start();
    // The kernel refuses the second group (it is held elsewhere): its verification fails after the handoff of the first is made.
    const kernel = n.preparation.kernel!;
    if (!kernel.hasGroup(2)) kernel.addGroup({ group: 2, devices: ['0000:03:00.0'] });
    const held = await kernel.process().openGroup(n.roots.devRoot, 2);
    const ref = claimOf('half', [
      { request: 'fpga', device: FPGA_G6 },
      { request: 'gpu', device: 'pci-0000-03-00-0' },
    ]);
    const answer = await n.kubelet!.prepare(DRIVER, [ref]);
    expect(answer[ref.uid]!.error).toMatch(/IOMMU group 2/);
    expect(await cdiFiles()).toEqual([]);
    expect(await readdir(n.settings.handoffHostDir)).toEqual([]);
    expect(n.daemon.dra!.claims.prepared().size).toBe(0);
    await n.preparation.kernel!.process().close(held);
    expect((await n.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
  });
});

describe('DRA health', () => {
  it('streams every device, and each change at once: EEH freeze, unbinding, recovery', async () => {
    const n = await start();
    const initial = await n.kubelet!.waitForHealth(DRIVER, (h) => h.length === 8);
    expect(initial.every((h) => h.health === 'HEALTHY' && h.pool === POOL)).toBe(true);
    expect(initial.map((h) => h.device)).toContain(FPGA_G6);
    await setEehState(n.roots, '0035:01:00.0', FROZEN_EEH_STATE);
    await n.daemon.refresh();
    const frozen = await n.kubelet!.waitForHealth(DRIVER, (h) => h.some((d) => d.device === GPU_G5 && d.health === 'UNHEALTHY'));
    expect(frozen.find((d) => d.device === GPU_G5)!.message).toMatch(/frozen by EEH/);
    expect(frozen.filter((d) => d.health === 'UNHEALTHY')).toHaveLength(1);
    await setEehState(n.roots, '0035:01:00.0', HEALTHY_EEH_STATE);
    await bindDriver(n.roots, '0030:02:00.0', 'nvme');
    await n.daemon.refresh();
    const later = await n.kubelet!.waitForHealth(DRIVER, (h) => h.find((d) => d.device === GPU_G5)?.health === 'HEALTHY' && !h.some((d) => d.device === NVME_G4 && d.health === 'HEALTHY'));
    expect(later.find((d) => d.device === GPU_G5)!.health).toBe('HEALTHY');
  });
});

describe('DRA driver restarts', () => {
  it('a restarted driver unprepares what an earlier process prepared, and cleans what no claim owns', async () => {
    const first = await start();
    const verify = claimOf('kept-verify', [{ request: 'nvme', device: NVME_G1 }]);
    const handoff = claimOf('kept-handoff', [{ request: 'fpga', device: FPGA_G6 }]);
    const answer = await first.kubelet!.prepare(DRIVER, [verify, handoff]);
    expect(answer[verify.uid]!.error).toBe('');
    expect(answer[handoff.uid]!.error).toBe('');
    expect((await readdir(first.settings.handoffHostDir)).length).toBe(1);
    await first.stop();
    node = null;
    // Left behind by a crash: a spec no claim owns, and a temporary file.
    await mkdir(first.settings.dra.cdiSpecDir, { recursive: true });
    await writeFile(join(first.settings.dra.cdiSpecDir, `${DRIVER}-claim-dead-beef.json`), '{}');
    await writeFile(join(first.settings.dra.cdiSpecDir, `.${DRIVER}-claim-dead-beef.json.1.tmp`), '{');
    await writeFile(join(first.settings.dra.cdiSpecDir, 'other-vendor.json'), '{}');
    const second = await start({}, first);
    expect((await cdiFiles()).sort()).toEqual([`${DRIVER}-claim-${handoff.uid}.json`, `${DRIVER}-claim-${verify.uid}.json`, 'other-vendor.json'].sort());
    // A repeated prepare after the restart answers from the checkpoint.
    expect((await second.kubelet!.prepare(DRIVER, [verify]))[verify.uid]).toEqual(answer[verify.uid]);
    expect(await second.kubelet!.unprepare(DRIVER, [verify, handoff])).toEqual({ [verify.uid]: { error: '' }, [handoff.uid]: { error: '' } });
    expect(await cdiFiles()).toEqual(['other-vendor.json']);
    expect(await readdir(second.settings.handoffHostDir)).toEqual([]);
  });

  it('undoes a prepare the previous process did not finish, and survives a damaged checkpoint', async () => {
    const first = await start();
    const ref = claimOf('interrupted', [{ request: 'fpga', device: FPGA_G6 }]);
    expect((await first.kubelet!.prepare(DRIVER, [ref]))[ref.uid]!.error).toBe('');
    await first.stop();
    node = null;
    const path = join(first.settings.dra.driverDir, 'checkpoint.json');
    const data = JSON.parse(await readFile(path, 'utf8'));
    data.claims[ref.uid].state = 'preparing';
    await writeFile(path, JSON.stringify(data));
    const second = await start({}, first);
    expect(await cdiFiles()).toEqual([]);
    expect(await readdir(second.settings.handoffHostDir)).toEqual([]);
    expect(second.daemon.dra!.claims.prepared().size).toBe(0);
    await second.stop();
    node = null;
    await writeFile(path, '{"version": 1, "driver": "someone-else", "claims": {}}');
    const third = await start({}, first);
    expect(logLines.some((l) => l.msg.startsWith('The checkpoint is damaged') && String(l['err']).includes('someone-else'))).toBe(true);
    expect((await readdir(first.settings.dra.driverDir)).some((f) => f.startsWith('checkpoint.json.damaged-'))).toBe(true);
    const fresh = claimOf('fresh', [{ request: 'nvme', device: NVME_G1 }]);
    expect((await third.kubelet!.prepare(DRIVER, [fresh]))[fresh.uid]!.error).toBe('');
  });
});
