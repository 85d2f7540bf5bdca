// PodResources-driven release: the poller asks a fake kubelet over its unix
// socket, and the handoff of a pod that went is released with its directories.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PodResourcesClient, PodResourcesPoller, devicesInUse } from '../../src/kubelet/pod-resources.js';
import { HandoffService } from '../../src/handoff/service.js';
import { SimulatedHandoffNetwork } from '../../src/handoff/simulated-transport.js';
import { createVfioHandoffSource } from '../../src/prepare/handoff-source.js';
import { SimulatedKernel } from '../../src/vfio/simulated-kernel.js';
import { FakePodResources } from '../helpers/fake-pod-resources.js';
import { eduGroups, handoffResource, removeDir, tempDir } from './support.js';

let dir: string;
let kubelet: FakePodResources;

beforeEach(async () => {
  dir = await tempDir();
  kubelet = new FakePodResources(join(dir, 'pr.sock'));
  await kubelet.start();
});

afterEach(async () => {
  await kubelet.stop();
  await removeDir(dir);
});

async function until(check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('PodResources client and poller', () => {
  it('lists which devices containers hold, per resource', async () => {
    kubelet.pods = [
      { name: 'a', containers: [{ name: 'c', devices: [{ resource: 'ibm.com/edu', ids: ['4', '5'] }, { resource: 'x.io/y', ids: ['1'] }] }] },
      { name: 'b', containers: [{ name: 'init', devices: [] }, { name: 'app', devices: [{ resource: 'ibm.com/edu', ids: ['9'] }] }] },
    ];
    const client = new PodResourcesClient(kubelet.socketPath);
    const snapshot = devicesInUse(await client.list(), 42);
    client.close();
    expect(snapshot.takenAtMs).toBe(42);
    expect([...snapshot.byResource.get('ibm.com/edu')!].sort()).toEqual(['4', '5', '9']);
    expect([...snapshot.byResource.get('x.io/y')!]).toEqual(['1']);
  });

  it('polls at its interval, one call at a time, and backs off while the kubelet fails', async () => {
    const client = new PodResourcesClient(kubelet.socketPath);
    const seen: number[] = [];
    const poller = new PodResourcesPoller({ client, intervalMs: 20, maxBackoffMs: 200, onSnapshot: (s) => void seen.push(s.takenAtMs) });
    poller.start();
    await until(() => poller.polls >= 3);
    kubelet.failing = true;
    const callsAtFailure = kubelet.listCalls;
    await new Promise((r) => setTimeout(r, 400));
    // 40, 80, 160, 200, ... ms apart: a handful of calls, not one per 20 ms.
    expect(kubelet.listCalls - callsAtFailure).toBeLessThanOrEqual(6);
    kubelet.failing = false;
    const polls = poller.polls;
    await until(() => poller.polls > polls);
    await poller.stop();
    client.close();
    const calls = kubelet.listCalls;
    await new Promise((r) => setTimeout(r, 60));
    expect(kubelet.listCalls).toBe(calls);
  });

  it('removes the directory of a pod that is gone once its claim window passed; keeps the one still held', async () => {
    const kernel = new SimulatedKernel({ platform: 'pseries', groups: [{ group: 4, devices: ['0001:00:01.0'] }, { group: 5, devices: ['0002:00:01.0'] }], memlockLimit: null });
    const plugin = kernel.process();
    const service = new HandoffService({
      hostDir: join(dir, 'h'),
      containerDir: '/run/h',
      transport: new SimulatedHandoffNetwork(plugin).transport(),
      source: createVfioHandoffSource({ binding: plugin, devRoot: '/' }),
      podResourcesSocket: kubelet.socketPath,
      podResourcesIntervalMs: 25,
      podResourcesGraceMs: 0,
      // PodResources leaves a preparation to its claim timeout; a short one here.
      claimTimeoutMs: 2000,
    });
    const resource = handoffResource();
    const [g4, g5] = eduGroups() as [ReturnType<typeof eduGroups>[number], ReturnType<typeof eduGroups>[number]];
    kubelet.pods = [
      { name: 'p4', containers: [{ name: 'app', devices: [{ resource: 'ibm.com/edu', ids: ['4'] }] }] },
      { name: 'p5', containers: [{ name: 'app', devices: [{ resource: 'ibm.com/edu', ids: ['5'] }] }] },
    ];
    await service.start();
    const [a4] = await service.extendAllocation(resource, [[g4]]);
    await service.extendAllocation(resource, [[g5]]);
    await service.preStart(resource, [g4]);
    await service.preStart(resource, [g5]);
    const polls = service.poller!.polls;
    await until(() => service.poller!.polls >= polls + 2);
    expect(service.manager.status().map((s) => s.state)).toEqual(['ready', 'ready']);

    kubelet.pods = kubelet.pods.filter((p) => p.name !== 'p4');
    // Not before the 2 s claim window of group 4 has passed.
    await until(() => service.manager.status().length === 1);
    await service.manager.idle();
    expect(service.manager.status()[0]!.groups).toEqual([5]);
    await expect(stat(a4!.mounts![0]!.host_path!)).rejects.toMatchObject({ code: 'ENOENT' });
    // Group 4 is free again in the kernel.
    const fd = await plugin.openGroup('/', 4);
    await plugin.close(fd);
    await service.stop();
    expect(plugin.openFds()).toEqual([]);
    expect(await plugin.lockedMemoryBytes()).toBe(0n);
  });
});
