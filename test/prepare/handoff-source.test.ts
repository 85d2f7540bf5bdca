// The handoff fd source with several groups: where the kernel needs a container per group
// (pseries v2, v1), the pod gets the first container, the memory and every group fd, and the
// plugin drops all of its copies, the further containers included.
import { describe, expect, it } from 'vitest';
import { createVfioHandoffSource } from '../../src/prepare/handoff-source.js';
import { SimulatedKernel } from '../../src/vfio/simulated-kernel.js';
import type { Platform } from '../../src/vfio/binding.js';
import { eduGroups, handoffResource } from '../handoff/support.js';

describe('createVfioHandoffSource with two groups', () => {
  it.each(['pseries', 'powernv9'] as Platform[])('prepares both groups and leaves the plugin holding nothing after the handover (%s)', async (platform) => {
    const kernel = new SimulatedKernel({ platform, groups: [{ group: 4, devices: ['0001:00:01.0'] }, { group: 5, devices: ['0002:00:01.0'] }], memlockLimit: null });
    const plugin = kernel.process();
    const source = createVfioHandoffSource({ binding: plugin, devRoot: '/' });
    const payload = await source(handoffResource('memorySize: 64Ki'), eduGroups());
    expect(payload.fds).toHaveLength(4); // container, memory, group 4, group 5
    expect(payload.description.groups.map((g) => [g.group, g.fdIndex])).toEqual([[4, 2], [5, 3]]);
    // pseries: the second group's container is open too (one more fd than travels).
    expect(plugin.openFds()).toHaveLength(platform === 'pseries' ? 5 : 4);
    // The pod takes the fds (a fork holds copies), then the plugin drops its own.
    const pod = plugin.fork();
    await payload.handedOver();
    expect(plugin.openFds()).toEqual([]);
    expect(plugin.mappings()).toEqual([]);
    const iova = BigInt(payload.description.window.start);
    pod.writeMemory(pod.mappings()[0]!.address, Buffer.from('pod'));
    for (const g of [4, 5]) expect(kernel.dmaRead(g, iova, 3).toString()).toBe('pod');
    pod.exit();
    expect(await plugin.lockedMemoryBytes()).toBe(0n);
    expect(() => kernel.dmaRead(5, iova, 3)).toThrow(/blocked/);
  });
});
