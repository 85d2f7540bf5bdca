// Shared pieces of the handoff tests: configs, a simulated node with the
// handoff manager on the simulated transport, fd counting.
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import net from 'node:net';
import { parseConfigText } from '../../src/config/load.js';
import type { ResourceConfig } from '../../src/config/schema.js';
import { SimulatedKernel, type SimulatedProcess } from '../../src/vfio/simulated-kernel.js';
import { HandoffManager, type HandoffManagerOptions } from '../../src/handoff/manager.js';
import { SimulatedHandoffNetwork } from '../../src/handoff/simulated-transport.js';
import { createVfioHandoffSource } from '../../src/prepare/handoff-source.js';
import type { IommuGroup } from '../../src/topology/types.js';
import { fn, group } from '../helpers/groups.js';

export const MiB = 1n << 20n;

export function handoffResource(extra = 'memorySize: 1Mi'): ResourceConfig {
  const config = parseConfigText(`
resources:
  - name: ibm.com/edu
    selectors: { vendors: ["1234"] }
    preparation:
      mode: handoff
      handoff: { ${extra} }
`);
  return config.resources[0]!;
}

export function eduGroups(): IommuGroup[] {
  return [group(4, [fn('0001:00:01.0', { vendor: '1234', device: '11e8' })]), group(5, [fn('0002:00:01.0', { vendor: '1234', device: '11e8' })])];
}

/** Open fds of this process (for leak checks of the real transport). */
export async function openFdCount(): Promise<number> {
  return (await readdir('/proc/self/fd')).length;
}

export async function tempDir(): Promise<string> {
  return mkdtemp('/tmp/pvdp-');
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

export interface SimNode {
  kernel: SimulatedKernel;
  plugin: SimulatedProcess;
  network: SimulatedHandoffNetwork;
  manager: HandoffManager;
  hostDir: string;
}

export function simNode(dir: string, options: Partial<HandoffManagerOptions> & { platform?: 'pseries' | 'powernv9' } = {}): SimNode {
  const kernel = new SimulatedKernel({
    platform: options.platform ?? 'pseries',
    groups: [
      { group: 4, devices: ['0001:00:01.0'] },
      { group: 5, devices: ['0002:00:01.0'] },
    ],
    memlockLimit: null,
  });
  const plugin = kernel.process();
  const network = new SimulatedHandoffNetwork(plugin);
  const manager = new HandoffManager({
    hostDir: `${dir}/host`,
    containerDir: '/var/run/power-vfio/handoff',
    transport: network.transport(),
    source: createVfioHandoffSource({ binding: plugin, devRoot: '/' }),
    ...options,
  });
  return { kernel, plugin, network, manager, hostDir: `${dir}/host` };
}

/** Real fds standing in for a prepared container: a memfd and two regular files. */
export interface RealFdSourceState {
  /** A second mapping of every memfd made, kept by the test to see what the claimer wrote. */
  observers: bigint[];
  /** Preparations released, counted once the plugin's copies are closed. */
  released: number;
  /** Preparations handed over, counted once the plugin's copies are closed. */
  handedOver: number;
}

export function realFdSource(
  native: import('../../src/vfio/binding.js').VfioBinding,
  dir: string,
): { source: import('../../src/handoff/manager.js').HandoffSource; state: RealFdSourceState } {
  const state: RealFdSourceState = { observers: [], released: 0, handedOver: 0 };
  const source = async (resource: ResourceConfig, groups: IommuGroup[]) => {
    const { openSync, closeSync, writeFileSync } = await import('node:fs');
    const size = MiB;
    const memfd = await native.memfdCreate('pvdp-test');
    await native.ftruncate(memfd, size);
    const address = await native.mmap(memfd, size);
    state.observers.push(await native.mmap(memfd, size));
    writeFileSync(`${dir}/container-standin`, 'I am the container');
    writeFileSync(`${dir}/group-standin`, 'I am group 4');
    const containerFd = openSync(`${dir}/container-standin`, 'r');
    const groupFds = groups.map(() => openSync(`${dir}/group-standin`, 'r'));
    const closeAll = async () => {
      for (const fd of [containerFd, ...groupFds]) closeSync(fd);
      await native.close(memfd);
      await native.munmap(address, size);
    };
    const { hex } = await import('../../src/handoff/protocol.js');
    return {
      description: {
        protocol: 1,
        resource: resource.name,
        iommu: { type: 'spapr-tce-v2' as const, value: 7 },
        window: { start: hex(1n << 59n), size: hex(1n << 30n), pageShift: 16, pageSize: '0x10000', created: true },
        memory: { fdIndex: 1, size: hex(size), pageSize: '0x1000', hugetlb: false },
        container: { fdIndex: 0 },
        groups: groups.map((g, i) => ({ group: g.id, fdIndex: 2 + i, functions: g.functions.map((f) => f.address) })),
        ranges: [
          { iova: hex(1n << 59n), size: hex(size / 2n), offset: '0x0' },
          { iova: hex((1n << 59n) + (1n << 20n)), size: hex(size / 2n), offset: hex(size / 2n) },
        ],
        fds: ['container', 'memory', ...groups.map((g) => `group:${g.id}`)],
      },
      fds: [containerFd, memfd, ...groupFds],
      // Counted after the close (the memfd's is asynchronous): a test that waits for the count
      // can then count open fds without racing it.
      async handedOver() {
        await closeAll();
        state.handedOver += 1;
      },
      async release() {
        await closeAll();
        state.released += 1;
      },
    };
  };
  return { source, state };
}

/**
 * A socket whose first connection is told BUSY and whose later ones are accepted
 * and never answered: a claim's retry that only its deadline ends.
 */
export async function busyThenSilent(path: string): Promise<{ connections: () => number; close: () => Promise<void> }> {
  const held: net.Socket[] = [];
  const server = net.createServer((s) => {
    held.push(s);
    if (held.length === 1) s.end('{"protocol":1,"result":"error","error":{"code":"PVDP_HANDOFF_BUSY","message":"Too many connections"}}\n');
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    connections: () => held.length,
    close: async () => {
      for (const s of held) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
