// The handoff mode end to end on the simulated kernel: the plugin process
// prepares, a separate simulated process (the pod) claims over the protocol,
// gets working fds, shares the memory with the device; every failure path
// answers with a JSON error and changes nothing; nothing leaks.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { stat, readFile, readdir, writeFile, mkdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { claim, HandoffClaimError } from '../../src/handoff/client.js';
import { HANDOFF_SOCKET_NAME, parseHex } from '../../src/handoff/protocol.js';
import type { SimulatedProcess } from '../../src/vfio/simulated-kernel.js';
import { eduGroups, handoffResource, MiB, removeDir, simNode, tempDir, type SimNode } from './support.js';
import { waitFor } from '../helpers/fixtures.js';

let dir: string;
let node: SimNode;

beforeEach(async () => {
  dir = await tempDir();
  node = simNode(dir);
  await node.manager.start();
});

afterEach(async () => {
  await node.manager.stop();
  await removeDir(dir);
});

const resource = handoffResource();
const [g4] = eduGroups();

function socketOf(n: SimNode): string {
  const status = n.manager.status();
  return join(status[0]!.socketDirs[0]!, HANDOFF_SOCKET_NAME);
}

/** Sends raw bytes on a fresh connection and returns the answer line (or '' when closed without one). */
async function rawExchange(n: SimNode, pod: SimulatedProcess, bytes: Buffer | null, closeAfterSend = false): Promise<string> {
  const channel = await n.network.claimTransport(pod).connect(socketOf(n), 1000);
  if (bytes) await pod.sendFds(channel.fd, bytes, []);
  if (closeAfterSend) {
    await channel.close();
    return '';
  }
  const deadline = Date.now() + 3000;
  let text = '';
  for (;;) {
    try {
      const msg = await pod.recvFds(channel.fd, 65536, 8);
      for (const fd of msg.fds) await pod.close(fd);
      if (msg.data.length === 0) break;
      text += msg.data.toString();
      if (text.includes('\n')) break;
    } catch (err) {
      if ((err as { code?: string }).code !== 'EAGAIN' || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 2));
    }
  }
  await channel.close();
  return text;
}

describe('handoff on the simulated kernel', () => {
  it('Allocate makes a private directory with its record, a read-only mount of its socket directory only, and env naming the socket', async () => {
    const extra = await node.manager.allocate(resource, [g4!]);
    const hostDir = extra.mounts![0]!.host_path!;
    const allocDir = dirname(hostDir);
    expect(basename(hostDir)).toBe('sock');
    expect(dirname(allocDir)).toBe(node.hostDir);
    expect((await stat(allocDir)).mode & 0o777).toBe(0o700);
    expect((await stat(hostDir)).mode & 0o777).toBe(0o700);
    // The record sits next to the mounted directory, where the pod cannot reach it; the mount holds nothing yet.
    expect(JSON.parse(await readFile(join(allocDir, 'record.json'), 'utf8'))).toMatchObject({ version: 1, resource: 'ibm.com/edu', groups: [4] });
    expect(await readdir(hostDir)).toEqual([]);
    expect(extra.mounts).toEqual([{ container_path: '/var/run/power-vfio/handoff/ibm.com_edu', host_path: hostDir, read_only: true }]);
    expect(extra.envs).toMatchObject({
      PVDP_HANDOFF_SOCKET: '/var/run/power-vfio/handoff/ibm.com_edu/handoff.sock',
      PVDP_HANDOFF_SOCKET_IBM_COM_EDU: '/var/run/power-vfio/handoff/ibm.com_edu/handoff.sock',
      PVDP_HANDOFF_PROTOCOL: '1',
      PVDP_HANDOFF_GROUPS: '4',
      PVDP_HANDOFF_MEMORY_SIZE: String(1 << 20),
      PVDP_HANDOFF_CLAIM_TIMEOUT_SECONDS: '120',
    });
  });

  it('a separate process claims a working container: device DMA into the shared memory, no MAP_DMA from the pod, all released at its exit', async () => {
    const { kernel, plugin, manager, network } = node;
    const fdsBefore = plugin.openFds();
    await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    const socket = socketOf(node);
    expect(network.has(socket)).toBe(true);
    expect(await plugin.lockedMemoryBytes()).toBeGreaterThan(0n);

    const pod = kernel.spawnProcess();
    const { fds, description } = await claim(socket, { transport: network.claimTransport(pod) });
    expect(description).toMatchObject({
      protocol: 1,
      resource: 'ibm.com/edu',
      iommu: { type: 'spapr-tce-v2', value: 7 },
      memory: { fdIndex: 1, size: '0x100000', hugetlb: false },
      container: { fdIndex: 0 },
      groups: [{ group: 4, fdIndex: 2, functions: ['0001:00:01.0'] }],
      fds: ['container', 'memory', 'group:4'],
    });
    const start = parseHex(description.window.start, 'start');
    expect(description.ranges).toEqual([{ iova: description.window.start, size: '0x100000', offset: '0x0' }]);
    expect(pod.openFds()).toEqual([fds.container, fds.memory, ...fds.groups].sort((a, b) => a - b));

    // The plugin holds nothing any more and the socket is gone; the kernel objects live on in the pod.
    expect(plugin.openFds()).toEqual(fdsBefore);
    expect(plugin.mappings()).toEqual([]);
    expect(network.has(socket)).toBe(false);
    expect(manager.status()[0]).toMatchObject({ state: 'claimed', claims: 1, sockets: [] });

    // The pod cannot map more (the container's mm is the plugin's) but DMA works both ways.
    await expect(pod.mapDma(fds.container, { vaddr: 0x10000n, iova: start, size: 4096n, flags: 3 })).rejects.toMatchObject({ code: 'EPERM' });
    const view = await pod.mmap(fds.memory, MiB);
    pod.writeMemory(view + 0x40n, Buffer.from('pod to device'));
    expect(kernel.dmaRead(4, start + 0x40n, 13).toString()).toBe('pod to device');
    kernel.dmaWrite(4, start + 0x1000n, Buffer.from('device to pod'));
    expect(pod.readMemory(view + 0x1000n, 13).toString()).toBe('device to pod');

    // The group is still held (by the pod); its exit releases everything.
    await expect(plugin.openGroup('/', 4)).rejects.toMatchObject({ code: 'EBUSY' });
    pod.exit();
    expect(await plugin.lockedMemoryBytes()).toBe(0n);
    const again = await plugin.openGroup('/', 4);
    await plugin.close(again);
  });

  it('answers a second claim, concurrent with the first, with ALREADY_CLAIMED and gives it nothing', async () => {
    const { kernel, manager, network } = node;
    await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    const socket = socketOf(node);
    const a = kernel.spawnProcess();
    const b = kernel.spawnProcess();
    const results = await Promise.allSettled([
      claim(socket, { transport: network.claimTransport(a) }),
      claim(socket, { transport: network.claimTransport(b) }),
    ]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(refused.reason).toBeInstanceOf(HandoffClaimError);
    expect(refused.reason.code).toBe('PVDP_HANDOFF_ALREADY_CLAIMED');
    const loser = results[0]!.status === 'rejected' ? a : b;
    expect(loser.openFds()).toEqual([]);
    // A claim after the socket went finds nothing to connect to.
    await expect(claim(socket, { transport: network.claimTransport(b) })).rejects.toMatchObject({ code: 'PVDP_HANDOFF_NO_SOCKET' });
    a.exit();
    b.exit();
  });

  it('malformed, oversized and wrong-version requests get JSON errors and change nothing', async () => {
    const { kernel, manager, network, plugin } = node;
    await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    const pod = kernel.spawnProcess();
    const error = (text: string) => (JSON.parse(text) as { error: { code: string } }).error.code;
    expect(error(await rawExchange(node, pod, Buffer.from('hello\n')))).toBe('PVDP_HANDOFF_MALFORMED');
    expect(error(await rawExchange(node, pod, Buffer.from('[1,2]\n')))).toBe('PVDP_HANDOFF_MALFORMED');
    expect(error(await rawExchange(node, pod, Buffer.from('{"protocol":"1"}\n')))).toBe('PVDP_HANDOFF_MALFORMED');
    expect(error(await rawExchange(node, pod, Buffer.from('{"protocol":1,"request":"steal"}\n')))).toBe('PVDP_HANDOFF_UNKNOWN_REQUEST');
    const wrong = JSON.parse(await rawExchange(node, pod, Buffer.from('{"protocol":2,"request":"claim"}\n'))) as { error: { code: string; supportedProtocols: number[] } };
    expect(wrong.error).toMatchObject({ code: 'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL', supportedProtocols: [1] });
    expect(error(await rawExchange(node, pod, Buffer.alloc(5000, 0x41)))).toBe('PVDP_HANDOFF_TOO_LARGE');
    await expect(claim(socketOf(node), { transport: network.claimTransport(pod), protocol: 9 })).rejects.toMatchObject({ code: 'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL' });
    // Early closes, with and without a partial request.
    await rawExchange(node, pod, null, true);
    await rawExchange(node, pod, Buffer.from('{"proto'), true);
    expect(pod.openFds()).toEqual([]);
    expect(manager.status()[0]!.state).toBe('ready');
    const { fds } = await claim(socketOf(node), { transport: network.claimTransport(pod) });
    expect(fds.groups).toHaveLength(1);
    pod.exit();
    await waitFor(() => plugin.openFds().length === 0, { what: 'the plugin to close every fd of the connections' });
  });

  it('many connections at once: the excess is told BUSY, nothing leaks, and the real claim still works', async () => {
    const { kernel, manager, network, plugin } = node;
    await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    const baseline = plugin.openFds().length;
    const pod = kernel.spawnProcess();
    const idle = [];
    for (let i = 0; i < 20; i++) idle.push(await network.claimTransport(pod).connect(socketOf(node), 1000));
    const answers = await Promise.all(idle.slice(8).map(async (c) => {
      for (;;) {
        try {
          return (await pod.recvFds(c.fd, 4096, 0)).data.toString();
        } catch {
          await new Promise((r) => setTimeout(r, 2));
        }
      }
    }));
    for (const a of answers) expect(a).toContain('PVDP_HANDOFF_BUSY');
    for (const c of idle) await c.close();
    await waitFor(() => plugin.openFds().length === baseline, { what: `the plugin's fd count back at ${baseline}` });
    const claimer = kernel.spawnProcess();
    await claim(socketOf(node), { transport: network.claimTransport(claimer) });
    claimer.exit();
    pod.exit();
  });

  it('releases an unclaimed preparation after the claim timeout; a late claim is told RELEASED', async () => {
    await node.manager.stop();
    node = simNode(dir, { claimTimeoutMs: 40 });
    await node.manager.start();
    const { kernel, manager, network, plugin } = node;
    await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    await waitFor(() => manager.status()[0]?.state === 'released', { what: 'the release after the claim timeout' });
    await manager.idle();
    expect(manager.status()[0]).toMatchObject({ state: 'released' });
    expect(plugin.openFds()).toEqual([]);
    expect(await plugin.lockedMemoryBytes()).toBe(0n);
    const pod = kernel.spawnProcess();
    const err = await claim(socketOf(node), { transport: network.claimTransport(pod) }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'PVDP_HANDOFF_RELEASED' });
    expect((err as Error).message).toMatch(/claim timeout of 0.04 s/);
    expect(pod.openFds()).toEqual([]);
  });

  it('a repeated PreStartContainer (container restart) releases the unclaimed preparation and prepares anew', async () => {
    const { kernel, manager, network, plugin } = node;
    await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    const firstFds = plugin.openFds();
    await manager.preStart(resource, [g4!]);
    expect(plugin.openFds()).toHaveLength(firstFds.length);
    const opens = kernel.calls.filter((c) => c.op === 'open' && String(c.detail?.['path']).endsWith('/dev/vfio/4') && c.result === 'ok').length;
    expect(opens).toBeGreaterThanOrEqual(2);
    const pod = kernel.spawnProcess();
    await claim(socketOf(node), { transport: network.claimTransport(pod) });
    // After a claim, the container restarts: the old process is gone, a new PreStart prepares again.
    pod.exit();
    await manager.preStart(resource, [g4!]);
    const pod2 = kernel.spawnProcess();
    const second = await claim(socketOf(node), { transport: network.claimTransport(pod2) });
    expect(second.description.groups[0]!.group).toBe(4);
    pod2.exit();
  });

  it('init containers and the app container: every directory of the group set serves the same preparation, once', async () => {
    const { kernel, manager, network } = node;
    const init = await manager.allocate(resource, [g4!]);
    const app = await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    const [initSock, appSock] = [init, app].map((e) => join(e.mounts![0]!.host_path!, HANDOFF_SOCKET_NAME)) as [string, string];
    expect(network.has(initSock) && network.has(appSock)).toBe(true);
    const pod = kernel.spawnProcess();
    await claim(appSock, { transport: network.claimTransport(pod) });
    expect(network.has(initSock) || network.has(appSock)).toBe(false);
    pod.exit();
  });

  it('PreStartContainer without a seen Allocate, and a failing preparation, fail the start with the cause', async () => {
    const { manager, kernel } = node;
    await expect(manager.preStart(resource, [g4!])).rejects.toThrow(/No handoff directory was allocated for IOMMU group\(s\) 4/);
    await manager.allocate(resource, [g4!]);
    const holder = kernel.spawnProcess();
    const held = await holder.openGroup('/', 4);
    await expect(manager.preStart(resource, [g4!])).rejects.toThrow(/Preparing the handoff of IOMMU group 4 of ibm.com\/edu failed/);
    expect(manager.status()[0]!.state).toBe('failed');
    await holder.close(held);
    await manager.preStart(resource, [g4!]);
    expect(manager.status()[0]!.state).toBe('ready');
  });

  it('PodResources: a group set no pod holds is released and its directories removed; held ones stay', async () => {
    await node.manager.stop();
    // PodResources never removes a preparation inside its claim window: a short one here, but long
    // enough that both preparations are still ready at the first check on a loaded machine.
    node = simNode(dir, { podResourcesGraceMs: 0, claimTimeoutMs: 2000 });
    await node.manager.start();
    const { manager, plugin } = node;
    const g5 = eduGroups()[1]!;
    const a4 = await manager.allocate(resource, [g4!]);
    const a5 = await manager.allocate(resource, [g5]);
    await manager.preStart(resource, [g4!]);
    await manager.preStart(resource, [g5]);
    const held = (ids: string[]) => ({ takenAtMs: Date.now() + 1000, byResource: new Map([['ibm.com/edu', new Set(ids)], ['other/x', new Set(['4'])]]) });
    // Within the claim window nothing goes, held or not.
    await manager.reconcile({ ...held(['5']), takenAtMs: Date.now() });
    expect(manager.status().map((s) => s.state)).toEqual(['ready', 'ready']);
    await waitFor(() => manager.status().every((s) => s.state === 'released'), { timeoutMs: 15_000, what: 'both claim windows to pass' });
    await manager.idle();
    await manager.reconcile(held(['5']));
    expect(manager.status().map((s) => [s.groups, s.state])).toEqual([[[5], 'released']]);
    await expect(stat(dirname(a4.mounts![0]!.host_path!))).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await stat(a5.mounts![0]!.host_path!)).isDirectory()).toBe(true);
    // Listings older than the allocation (plus the window) never release it.
    await manager.reconcile({ takenAtMs: 0, byResource: new Map() });
    expect(manager.status()).toHaveLength(1);
    await manager.reconcile(held([]));
    expect(manager.status()).toEqual([]);
    expect(plugin.openFds()).toEqual([]);
    expect(await plugin.lockedMemoryBytes()).toBe(0n);
  });

  it('shutdown releases unclaimed preparations; the next run adopts the directories, removes stale sockets and junk', async () => {
    const { manager, plugin } = node;
    const extra = await manager.allocate(resource, [g4!]);
    await manager.preStart(resource, [g4!]);
    await manager.stop();
    expect(plugin.openFds()).toEqual([]);
    expect(await plugin.lockedMemoryBytes()).toBe(0n);
    const socketDir = extra.mounts![0]!.host_path!;
    const allocDir = dirname(socketDir);
    // A stale socket file (as a crash would leave), a directory without a record, one of the older layout.
    await writeFile(join(socketDir, HANDOFF_SOCKET_NAME), '');
    await mkdir(join(node.hostDir, 'alloc-00000000000000ff'));
    await mkdir(join(node.hostDir, 'alloc-00000000000000fe'));
    await writeFile(join(node.hostDir, 'alloc-00000000000000fe', 'allocation.json'), JSON.stringify({ resource: 'ibm.com/edu', groups: [4], createdMs: 1 }));
    await writeFile(join(node.hostDir, 'unrelated'), 'keep me');

    node = simNode(dir);
    await node.manager.start();
    expect(await readdir(node.hostDir)).toEqual([basename(allocDir), 'unrelated'].sort());
    expect(await readdir(allocDir)).toEqual(['record.json', 'sock']);
    expect(await readdir(socketDir)).toEqual([]);
    expect(node.manager.status()).toEqual([expect.objectContaining({ groups: [4], state: 'allocated', dirs: [allocDir], socketDirs: [socketDir] })]);
    // A container restart after the plugin restart prepares in the adopted directory.
    await node.manager.preStart(resource, [g4!]);
    const pod = node.kernel.spawnProcess();
    await claim(join(socketDir, HANDOFF_SOCKET_NAME), { transport: node.network.claimTransport(pod) });
    pod.exit();
  });

  it('defaults the memory to the whole default window (powernv9: 2 GiB dma32)', async () => {
    await node.manager.stop();
    node = simNode(dir, { platform: 'powernv9' });
    await node.manager.start();
    const whole = handoffResource('claimTimeoutSeconds: 5');
    await node.manager.allocate(whole, [g4!]);
    await node.manager.preStart(whole, [g4!]);
    const pod = node.kernel.spawnProcess();
    const { description } = await claim(socketOf(node), { transport: node.network.claimTransport(pod) });
    expect(description.memory.size).toBe('0x80000000');
    expect(description.ranges).toHaveLength(1);
    expect(parseHex(description.ranges[0]!.size, 'size')).toBe(2n << 30n);
    pod.exit();
    expect(await node.plugin.lockedMemoryBytes()).toBe(0n);
  });
});
