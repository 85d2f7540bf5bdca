// `demo`: the plugin's main job on the built-in simulated POWER node, with a
// built-in kubelet, told step by step for someone meeting the plugin for the
// first time. Everything runs over the same sockets and code paths as on a node.
import { mkdtemp, rm } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createLogger } from '../log.js';
import { formatByteSize } from '../config/schema.js';
import { Daemon } from '../daemon.js';
import { simulatedSettings } from '../simulate/settings.js';
import { simulatedNodeConfig } from '../simulate/node-config.js';
import { SimulatedKubelet } from '../simulate/kubelet.js';
import { writeSysfsTree, bindDriver } from '../simulate/sysfs-tree.js';
import { builtinPowerNode } from '../simulate/power-node.js';
import type { IommuGroup } from '../topology/types.js';
import { routeGrpcLogs } from './grpc-logging.js';
import { buildPreparer } from '../prepare/setup.js';
import { claim } from '../handoff/client.js';
import { HANDOFF_SOCKET_NAME } from '../handoff/protocol.js';

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const say = (s = '') => process.stdout.write(`${s}\n`);
const heading = (n: number, s: string) => say(`\n${bold(`${n}. ${s}`)}`);

function describeFunctions(group: IommuGroup): string[] {
  return group.functions.map((f) => {
    const vf = f.physfn ? ` (VF of ${f.physfn})` : '';
    return `${f.address}  ${f.vendor}:${f.device}  class ${f.classCode}  driver ${f.driver ?? '(none)'}  NUMA ${f.numaNode}${vf}`;
  });
}

export async function runDemo(): Promise<number> {
  const dir = await mkdtemp('/tmp/pvdp-demo-');
  const logPath = join(tmpdir(), `pvdp-demo-${process.pid}.log`);
  const logStream = createWriteStream(logPath);
  const logger = createLogger({ level: 'debug', destination: logStream });
  routeGrpcLogs(logger);
  
  const kubelet = new SimulatedKubelet(join(dir, 'dp'));
  let daemon: Daemon | null = null;
  try {
    const roots = await writeSysfsTree(join(dir, 'node'), builtinPowerNode());
    const config = simulatedNodeConfig();
    const settings = simulatedSettings({ roots, dir, resources: config.resources });
    say(bold('power-vfio-device-plugin demo: a simulated POWER9 node, a built-in kubelet, real gRPC over unix sockets'));
    say(`Simulated sysfs and /dev: ${join(dir, 'node')}`);
    say(`Plugin logs (JSON): ${logPath}`);

    await kubelet.start();
    const preparation = await buildPreparer({
      simulate: true,
      devRoot: roots.devRoot,
      resources: config.resources,
      logger,
      handoff: { hostDir: settings.handoffHostDir, containerDir: settings.handoffContainerDir, podResourcesSocket: null },
    });
    daemon = new Daemon(settings, {
      logger,
      socketCheckIntervalMs: 250,
      ...(preparation.preparer ? { preparer: preparation.preparer } : {}),
      handoff: preparation.handoff,
      ...(preparation.extendAllocation ? { extendAllocation: preparation.extendAllocation } : {}),
    });
    const registered = Promise.all(config.resources.map((r) => kubelet.waitForRegistration(r.name, 10_000)));
    const topology = await daemon.start();
    await registered;

    heading(1, 'Discovered IOMMU groups (one per Partitionable Endpoint)');
    for (const group of [...topology.groups.values()].sort((a, b) => a.id - b.id)) {
      const where = `${group.name ?? '(no name)'}  PHB ${group.phb ?? '?'}  PE ${group.pe === null ? '?' : `0x${group.pe.toString(16)}`}`;
      const state = group.usable ? 'usable' : `NOT usable: ${group.problems.join('; ')}`;
      const eeh = group.eeh ? `  EEH ${group.eeh.frozen ? 'FROZEN' : 'ok'}` : '';
      say(`  group ${String(group.id).padEnd(3)} ${where}  /dev/vfio/${group.id} ${group.devNode ? 'present' : 'absent'}${eeh}`);
      say(`            ${state}`);
      for (const line of describeFunctions(group)) say(`            ${line}`);
    }
    for (const issue of topology.issues) say(`  skipped ${issue.path}: ${issue.message}`);

    heading(2, 'Advertised to the kubelet (ListAndWatch), per resource');
    for (const resource of config.resources) {
      const devices = await kubelet.waitForDevices(resource.name, () => true);
      const list = devices.map((d) => `${d.ID}:${d.health}${d.topology ? `@NUMA${d.topology.nodes.map((n) => n.ID).join('+')}` : ''}`);
      say(`  ${resource.name.padEnd(22)} mode ${resource.preparation.mode.padEnd(7)} devices [${list.join(', ')}]`);
    }

    heading(3, 'GetPreferredAllocation: 2 x ibm.com/nvme, must include group 4 (NUMA 8)');
    const nvme = kubelet.plugin('ibm.com/nvme')!.devices.map((d) => d.ID);
    const preferred = await kubelet.preferred('ibm.com/nvme', [{ available: nvme, mustInclude: ['4'], size: 2 }]);
    say(`  available [${nvme.join(', ')}] -> preferred [${preferred.container_responses[0]!.deviceIDs.join(', ')}]`);

    heading(4, 'Allocate: a pod asks for ibm.com/connectx5 and one ibm.com/gpu');
    const cx = await kubelet.allocate('ibm.com/connectx5', [['3']]);
    const gpu = await kubelet.allocate('ibm.com/gpu', [['5']]);
    for (const [name, res] of [['ibm.com/connectx5', cx], ['ibm.com/gpu', gpu]] as const) {
      const c = res.container_responses[0]!;
      say(`  ${name}:`);
      for (const d of c.devices) say(`    device ${d.host_path} -> ${d.container_path} (${d.permissions})`);
      for (const [k, v] of Object.entries(c.envs).sort()) say(`    env    ${k}=${v}`);
    }

    heading(5, 'PreStartContainer: the gpu resource is in verify mode');
    const started = Date.now();
    await kubelet.preStart('ibm.com/gpu', ['5']);
    say(`  group 5 verified in ${Date.now() - started} ms: ${preparation.describe(5)}`);
    say('  Now the node runs out of locked memory (fault injection in the simulated kernel):');
    preparation.kernel?.process().setMemlockLimit(64n << 20n);
    preparation.kernel?.process().exhaustMemlock();
    const failed = await kubelet.preStart('ibm.com/gpu', ['5']).then(
      () => 'unexpectedly succeeded',
      (err: { details?: string }) => err.details ?? String(err),
    );
    say(`  PreStartContainer fails, and the container does not start:\n    ${failed}`);
    preparation.kernel?.process().lockExternal(0n);
    // The handoff resource keeps windows mapped for pods: the plugin runs with CAP_IPC_LOCK there.
    preparation.kernel?.process().setMemlockLimit(null);

    heading(6, 'Handoff: the FPGA resource gets its sPAPR container prepared, enabled and mapped before the pod starts');
    const fpga = await kubelet.allocate('ibm.com/fpga', [['6']]);
    const c6 = fpga.container_responses[0]!;
    for (const m of c6.mounts) say(`  mount  ${m.host_path} -> ${m.container_path}`);
    for (const [k, v] of Object.entries(c6.envs).filter(([k]) => k.startsWith('PVDP_')).sort()) say(`  env    ${k}=${v}`);
    const prepStarted = Date.now();
    await kubelet.preStart('ibm.com/fpga', ['6']);
    say(`  PreStartContainer prepared group 6 in ${Date.now() - prepStarted} ms`);
    const kernel = preparation.kernel!;
    const network = preparation.simulatedNetwork!;
    const hostDir = c6.mounts[0]!.host_path;
    // The pod is another process: it claims over the socket in its mounted directory.
    const pod = kernel.spawnProcess();
    const claimed = await claim(join(hostDir, HANDOFF_SOCKET_NAME), { transport: network.claimTransport(pod) });
    const d = claimed.description;
    say(`  the pod claimed fds container=${claimed.fds.container} memory=${claimed.fds.memory} groups=${claimed.fds.groups.join(',')}`);
    say(`  ${d.iommu.type}, window ${d.window.start} + ${d.window.size}, IOMMU page ${d.window.pageSize}, ${d.ranges.length} mapped range(s)`);
    const size = BigInt(d.memory.size);
    const view = await pod.mmap(claimed.fds.memory, size);
    const iova = BigInt(d.ranges[0]!.iova);
    pod.writeMemory(view + 0x100n, Buffer.from('written by the pod'));
    say(`  the pod writes into its memory; the device reads it by DMA at iova 0x${(iova + 0x100n).toString(16)}: "${kernel.dmaRead(6, iova + 0x100n, 18).toString()}"`);
    kernel.dmaWrite(6, iova + 0x2000n, Buffer.from('written by the device'));
    say(`  the device DMAs into the window; the pod reads: "${pod.readMemory(view + 0x2000n, 21).toString()}"`);
    const mapMore = await pod.mapDma(claimed.fds.container, { vaddr: view, iova, size: 4096n, flags: 3 }).then(
      () => 'allowed',
      (err: { code?: string }) => err.code ?? 'refused',
    );
    say(`  the pod cannot map more (the container's mm is the plugin's): MAP_DMA -> ${mapMore}`);
    // Locked memory is charged to the plugin (the container's mm is its own) until the pod's fds close.
    const lockedWhileHeld = await kernel.process().lockedMemoryBytes();
    await pod.munmap(view, size);
    pod.exit();
    const lockedAfterExit = await kernel.process().lockedMemoryBytes();
    say(`  while the pod ran, the plugin held ${formatByteSize(lockedWhileHeld)} locked for it`);
    say(`  the pod exits: the kernel releases everything; the plugin holds ${formatByteSize(lockedAfterExit)} locked, group 6 opens again: ${await kernel
      .process()
      .openGroup(roots.devRoot, 6)
      .then(async (fd) => {
        await kernel.process().close(fd);
        return 'yes';
      }, (err: { code?: string }) => err.code ?? 'no')}`);

    heading(7, 'Hot rebinding: the operator binds the boot NVMe 0000:01:00.0 to vfio-pci');
    const rebound = Date.now();
    await bindDriver(roots, '0000:01:00.0', 'vfio-pci');
    await kubelet.waitForDevices('ibm.com/nvme', (d) => d.some((x) => x.ID === '0' && x.health === 'Healthy'), 5000);
    say(`  group 0 advertised as Healthy ${Date.now() - rebound} ms later, without a restart`);

    heading(8, 'Kubelet restart: every socket in the directory is deleted');
    const restart = Date.now();
    const back = Promise.all(config.resources.map((r) => kubelet.waitForRegistration(r.name, 10_000)));
    await kubelet.restart();
    await back;
    say(`  all ${config.resources.length} resources re-registered ${Date.now() - restart} ms later`);

    // The DRA steps load the Kubernetes client; the device plugin steps above never do.
    const { runDraDemo } = await import('./demo-dra.js');
    await runDraDemo({ dir, logger, say, heading, first: 9 });

    say(`\n${bold('Done.')} Run the tests with: npm test`);
    return 0;
  } catch (err) {
    say(`\nDemo failed: ${(err as Error).message}`);
    say(`See the plugin logs in ${logPath}`);
    return 1;
  } finally {
    await daemon?.stop();
    await kubelet.stop();
    await rm(dir, { recursive: true, force: true });
    await new Promise<void>((resolve) => logStream.end(resolve));
  }
}
