// Handoff mode through the kubelet's wire: Allocate returns the per-container
// mount and env next to the device nodes, PreStartContainer prepares and
// serves; and the configuration accepts the handoff options.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { DevicePluginServer } from '../../src/kubelet/device-plugin-server.js';
import { devicePluginProto } from '../../src/kubelet/proto.js';
import { mergeAllocation } from '../../src/kubelet/allocation.js';
import type { DevicePluginClient } from '../../src/generated/v1beta1/DevicePlugin.js';
import type { AllocateResponse__Output } from '../../src/generated/v1beta1/AllocateResponse.js';
import { HandoffService } from '../../src/handoff/service.js';
import { SimulatedHandoffNetwork } from '../../src/handoff/simulated-transport.js';
import { createVfioHandoffSource } from '../../src/prepare/handoff-source.js';
import { SimulatedKernel } from '../../src/vfio/simulated-kernel.js';
import { claim } from '../../src/handoff/client.js';
import { parseConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { eduGroups, handoffResource, removeDir, tempDir } from './support.js';

let dir: string;
let server: DevicePluginServer;
let client: DevicePluginClient;
let service: HandoffService;
let network: SimulatedHandoffNetwork;
let kernel: SimulatedKernel;
const resource = handoffResource('memorySize: 64Ki, claimTimeoutSeconds: 30');

beforeEach(async () => {
  dir = await tempDir();
  kernel = new SimulatedKernel({ platform: 'powernv9', groups: [{ group: 4, devices: ['0001:00:01.0'] }, { group: 5, devices: ['0002:00:01.0'] }], memlockLimit: null });
  network = new SimulatedHandoffNetwork(kernel.process());
  service = new HandoffService({
    hostDir: join(dir, 'h'),
    containerDir: '/var/run/power-vfio/handoff',
    transport: network.transport(),
    source: createVfioHandoffSource({ binding: kernel.process(), devRoot: '/' }),
    podResourcesSocket: null,
  });
  await service.start();
  server = new DevicePluginServer({
    resourceName: resource.name,
    socketPath: join(dir, 'p.sock'),
    preStartRequired: true,
    preStart: (groups) => service.preStart(resource, groups),
    extendAllocation: (containers) => service.extendAllocation(resource, containers),
  });
  server.setDevices(eduGroups().map((group) => ({ group, healthy: true })));
  await server.start();
  const DevicePlugin = devicePluginProto().v1beta1.DevicePlugin;
  client = new DevicePlugin(`unix:${join(dir, 'p.sock')}`, grpc.credentials.createInsecure()) as unknown as DevicePluginClient;
});

afterEach(async () => {
  client.close();
  await server.stop();
  await service.stop();
  await removeDir(dir);
});

function allocate(containers: string[][]): Promise<AllocateResponse__Output> {
  return new Promise((resolve, reject) =>
    client.Allocate({ container_requests: containers.map((ids) => ({ devices_ids: ids })) }, (err, res) => (err ? reject(err) : resolve(res!))),
  );
}

function preStart(ids: string[]): Promise<void> {
  return new Promise((resolve, reject) => client.PreStartContainer({ devices_ids: ids }, (err) => (err ? reject(err) : resolve())));
}

describe('handoff through Allocate and PreStartContainer', () => {
  it('gives each container its own directory mount and env, next to the device nodes', async () => {
    const res = await allocate([['4'], ['5']]);
    const [c4, c5] = res.container_responses as [AllocateResponse__Output['container_responses'][number], AllocateResponse__Output['container_responses'][number]];
    expect(c4.devices.map((d) => d.host_path)).toEqual(['/dev/vfio/vfio', '/dev/vfio/4']);
    expect(c4.mounts).toHaveLength(1);
    expect(c4.mounts[0]!.container_path).toBe('/var/run/power-vfio/handoff/ibm.com_edu');
    expect(c4.mounts[0]!.host_path).not.toBe(c5.mounts[0]!.host_path);
    expect(c4.envs).toMatchObject({ PCI_RESOURCE_IBM_COM_EDU: '0001:00:01.0', PVDP_HANDOFF_GROUPS: '4', PVDP_HANDOFF_MEMORY_SIZE: '65536', PVDP_HANDOFF_CLAIM_TIMEOUT_SECONDS: '30' });
    expect(c5.envs['PVDP_HANDOFF_GROUPS']).toBe('5');

    await preStart(['4']);
    const pod = kernel.spawnProcess();
    const { description } = await claim(join(c4.mounts[0]!.host_path, 'handoff.sock'), { transport: network.claimTransport(pod) });
    expect(description.memory.size).toBe('0x10000');
    pod.exit();
  });

  it('a PreStartContainer for groups this plugin never allocated fails with FAILED_PRECONDITION', async () => {
    await expect(preStart(['5'])).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION, details: expect.stringMatching(/No handoff directory was allocated/) });
  });

  it('mergeAllocation refuses to set an env or a mount twice', () => {
    const base = { envs: { A: '1' }, mounts: [{ container_path: '/x', host_path: '/y', read_only: false }], devices: [], annotations: {}, cdi_devices: [] };
    expect(mergeAllocation(base, { envs: { B: '2' }, mounts: [] }).envs).toEqual({ A: '1', B: '2' });
    expect(() => mergeAllocation(base, { envs: { A: '2' } })).toThrow(/A would be set twice/);
    expect(() => mergeAllocation(base, { mounts: [{ container_path: '/x', host_path: '/z', read_only: true }] })).toThrow(/\/x would be made twice/);
  });
});

describe('handoff configuration', () => {
  const parse = (handoff: string, mode = 'handoff', top = '') =>
    parseConfigText(`
${top}
resources:
  - name: ibm.com/edu
    selectors: { vendors: ["1234"] }
    preparation: { mode: ${mode}, handoff: ${handoff} }
`);

  it('reads sizes as bytes or with Kubernetes suffixes, huge pages as a size or a shift, and defaults the rest', () => {
    expect(parse('{ memorySize: 256Mi, hugePageShift: 2Mi }').resources[0]!.preparation.handoff).toEqual({ memorySize: 256 << 20, hugePageShift: 21, claimTimeoutSeconds: 120, iommu: 'auto' });
    expect(parse('{ memorySize: "1Gi", hugePageShift: 24 }').resources[0]!.preparation.handoff).toMatchObject({ memorySize: 1 << 30, hugePageShift: 24 });
    expect(parse('{ memorySize: 1048576, claimTimeoutSeconds: 5 }').resources[0]!.preparation.handoff).toMatchObject({ memorySize: 1 << 20, claimTimeoutSeconds: 5 });
    expect(parse('{}', 'handoff', 'handoff: { hostDir: /var/run/x }').handoff).toEqual({ hostDir: '/var/run/x', containerDir: '/var/run/power-vfio/handoff' });
  });

  it('refuses bad sizes, bad huge pages and handoff options outside handoff mode, naming the field', () => {
    const problems = (fn: () => unknown) => {
      try {
        fn();
      } catch (err) {
        return (err as ConfigError).problems.join('\n');
      }
      return '';
    };
    expect(problems(() => parse('{ memorySize: 12Qi }'))).toMatch(/resources\[0\]\.preparation\.handoff\.memorySize: must be a positive size/);
    expect(problems(() => parse('{ hugePageShift: 3Mi }'))).toMatch(/hugePageShift: must be a huge page size that is a power of two/);
    expect(problems(() => parse('{ memorySize: 1Mi }', 'verify'))).toMatch(/preparation\.handoff: is only used with mode: handoff \(mode is verify\)/);
  });
});
