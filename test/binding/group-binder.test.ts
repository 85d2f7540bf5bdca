// The binding room on a simulated tree: what inspect() refuses and why, the
// give-back when probing does not bind the original driver, the production
// writer, and the configuration of managed binding.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdir, mkdtemp, readFile, readlink, rm, writeFile, access } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { GroupBinder, hostUse, writeAttribute } from '../../src/binding/index.js';
import { addHostDevice, writeSysfsTree, type NodeSpec } from '../../src/simulate/sysfs-tree.js';
import { SimulatedSysfsKernel } from '../../src/simulate/sysfs-kernel.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import type { DiscoveryRoots } from '../../src/topology/types.js';
import { Checkpoint, CheckpointError } from '../../src/dra/checkpoint.js';

let dir: string;
let roots: DiscoveryRoots;

const spec: NodeSpec = {
  groups: [
    {
      id: 1,
      functions: [
        { address: '0001:00:00.0', vendor: '1014', device: '04c1', classCode: '060400', driver: 'shpchp' },
        { address: '0001:01:00.0', vendor: '144d', device: 'a808', classCode: '010802', driver: 'nvme', parent: '0001:00:00.0' },
      ],
    },
    { id: 2, functions: [{ address: '0002:01:00.0', vendor: '8086', device: '1521', classCode: '020000', driver: 'igb' }] },
    // Bound through drivers/<d>/bind by hand: no ID table of the kernel matches it.
    { id: 3, functions: [{ address: '0003:01:00.0', vendor: '1234', device: '11e8', classCode: '00ff00', driver: 'uio_pci_generic' }] },
  ],
};

beforeEach(async () => {
  dir = await mkdtemp('/tmp/pvdp-');
  roots = await writeSysfsTree(join(dir, 'node'), spec);
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const driverOf = async (address: string) => basename(await readlink(join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', address, 'driver')).catch(() => 'none'));

describe('GroupBinder.inspect', () => {
  it('refuses a bridge that would keep the group from being viable, and an endpoint on a driver not allowed', async () => {
    const binder = new GroupBinder({ ...roots, procRoot: join(dir, 'proc-root') });
    const seen = await binder.inspect(1, ['igb']);
    expect(seen.functions.map((f) => `${f.address}:${f.driver}:${f.isBridge}`)).toEqual(['0001:00:00.0:shpchp:true', '0001:01:00.0:nvme:false']);
    expect(seen.blockers).toEqual([
      'bridge 0001:00:00.0 is on driver shpchp; managed binding leaves bridges alone, and on shpchp it keeps the group from being viable',
      "function 0001:01:00.0 is on driver nvme, which the resource's binding.allowedDrivers (igb) does not list",
    ]);
  });

  it('names an interface that is up by operstate when flags are missing, a swap device, and what it cannot check', async () => {
    const procRoot = join(dir, 'host');
    await addHostDevice(roots, '0002:01:00.0', { kind: 'net', name: 'enp2s0', up: true });
    await rm(join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', '0002:01:00.0', 'net', 'enp2s0', 'flags'));
    const binder = new GroupBinder({ ...roots, procRoot });
    // No proc at all: the block device below cannot be checked, which refuses too.
    await addHostDevice(roots, '0002:01:00.0', { kind: 'block', name: 'sdb', dev: '8:16', parent: 'host0/target0:0:0/0:0:0:0/block' });
    const first = await binder.inspect(2, ['igb']);
    expect(first.blockers).toEqual([
      'network interface enp2s0 of function 0002:01:00.0 is up',
      expect.stringMatching(/^block device sdb of function 0002:01:00\.0 may be mounted: cannot read the mount table \(.*proc\/1\/mountinfo: ENOENT, .*proc\/self\/mountinfo: ENOENT\)$/),
      expect.stringMatching(/^cannot tell whether sdb is open: cannot list processes in .*host\/proc \(ENOENT\), so open device nodes cannot be checked$/),
    ]);
    await mkdir(join(procRoot, 'proc', '1'), { recursive: true });
    await writeFile(join(procRoot, 'proc', '1', 'mountinfo'), '22 1 259:0 / / rw - xfs /dev/nvme0n1p2 rw\n');
    await writeFile(join(procRoot, 'proc', 'swaps'), 'Filename Type Size Used Priority\n/dev/sdb partition 1048572 0 -2\n');
    await writeFile(join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', '0002:01:00.0', 'net', 'enp2s0', 'operstate'), 'down\n');
    const second = await binder.inspect(2, ['igb']);
    expect(second.blockers).toEqual(['block device sdb of function 0002:01:00.0 is used as swap']);
  });

  it('finds nothing in use on a function with no interface and no device node', async () => {
    expect(await hostUse([{ address: '0003:01:00.0', dir: join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', '0003:01:00.0') }], join(dir, 'none'))).toEqual([]);
  });
});

describe('GroupBinder take and give back', () => {
  it('binds the original driver explicitly when probing does not (a driver bound by hand)', async () => {
    // The kernel's ID tables know no driver for the device: probing after the override is cleared binds nothing.
    const kernel = new SimulatedSysfsKernel(roots, new Map());
    const binder = new GroupBinder({ ...roots, procRoot: join(dir, 'none'), writer: kernel.writer, pollMs: 5 });
    const seen = await binder.inspect(3, ['uio_pci_generic']);
    expect(seen.blockers).toEqual([]);
    await binder.take(3, seen.functions, 5000);
    expect(await driverOf('0003:01:00.0')).toBe('vfio-pci');
    await binder.giveBack(3, seen.functions, 1000);
    expect(await driverOf('0003:01:00.0')).toBe('uio_pci_generic');
    const rel = (p: string) => p.slice(join(roots.sysfsRoot, 'sys').length + 1);
    expect(kernel.writes.slice(3).map((w) => `${rel(w.path)} <- ${w.value.trim()}`)).toEqual([
      'bus/pci/devices/0003:01:00.0/driver_override <- ',
      'bus/pci/drivers/vfio-pci/unbind <- 0003:01:00.0',
      'bus/pci/drivers_probe <- 0003:01:00.0',
      'bus/pci/drivers/uio_pci_generic/bind <- 0003:01:00.0',
    ]);
  });
});

describe('writeAttribute', () => {
  it('writes an existing attribute and never creates a missing one', async () => {
    const path = join(dir, 'attr');
    await writeFile(path, '(null)\n');
    await writeAttribute(path, 'vfio-pci');
    expect(await readFile(path, 'utf8')).toMatch(/^vfio-pci/);
    await expect(writeAttribute(join(dir, 'drivers_probe'), '0000:01:00.0')).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(access(join(dir, 'drivers_probe'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('binding configuration', () => {
  const resource = (binding: unknown) => ({ resources: [{ name: 'ibm.com/nvme', selectors: { classes: ['010802'] }, binding }] });
  const problem = (config: unknown): string => {
    try {
      parseConfig(config, 'test');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as Error).message;
    }
    return 'accepted';
  };

  it('reads the short form and defaults the timeout; static is the default', () => {
    expect(parseConfig(resource('static'), 'test').resources[0]!.binding).toEqual({ mode: 'static', timeoutSeconds: 30 });
    expect(parseConfig(resource({ mode: 'managed', allowedDrivers: ['nvme'] }), 'test').resources[0]!.binding).toEqual({ mode: 'managed', allowedDrivers: ['nvme'], timeoutSeconds: 30 });
    expect(parseConfig({ resources: [{ name: 'ibm.com/nvme', selectors: { classes: ['010802'] } }] }, 'test').resources[0]!.binding).toBeUndefined();
  });

  it('refuses what it cannot honour, naming the field', () => {
    expect(problem(resource('managed'))).toMatch(/resources\[0\]\.binding\.allowedDrivers: is required with mode: managed/);
    expect(problem(resource({ mode: 'managed', allowedDrivers: ['../../kernel'] }))).toMatch(/allowedDrivers\[0\]: must be a kernel driver name/);
    expect(problem(resource({ mode: 'managed', allowedDrivers: ['nvme', 'vfio-pci'] }))).toMatch(/allowedDrivers\[1\]: names a VFIO driver/);
    expect(problem(resource({ mode: 'static', allowedDrivers: ['nvme'] }))).toMatch(/allowedDrivers: is only used with mode: managed/);
    expect(problem(resource({ mode: 'managed', allowedDrivers: ['nvme'], timeoutSeconds: 0 }))).toMatch(/timeoutSeconds/);
    expect(problem(resource('sometimes'))).toMatch(/binding\.mode/);
    expect(problem({ resources: [{ name: 'ibm.com/nvme', selectors: { drivers: ['nvme'] }, binding: { mode: 'managed', allowedDrivers: ['nvme'] } }] })).toMatch(/selectors\.drivers: cannot be used with binding mode managed/);
    expect(problem({ ...resource({ mode: 'managed', allowedDrivers: ['nvme'] }), kubeletApi: 'device-plugin' })).toMatch(/binding\.mode: managed binding needs the DRA front end/);
  });
});

describe('the checkpoint of managed groups', () => {
  it('keeps the original drivers, and refuses entries whose addresses or drivers are not what sysfs shows (they become sysfs paths)', async () => {
    const checkpoint = new Checkpoint(dir, 'checkpoint.json', 'power-vfio.ibm.com');
    const claim = (address: string, driver: string | null) => ({
      namespace: 'default',
      name: 'c',
      state: 'unpreparing',
      groupSets: [{ resource: 'ibm.com/nvme', groups: [9], mode: 'verify' }],
      bindings: [{ resource: 'ibm.com/nvme', group: 9, timeoutMs: 30000, functions: [{ address, driver, driverOverride: null, isBridge: false }] }],
      devices: [],
      cdiSpecFile: null,
    });
    const write = (c: unknown) => writeFile(join(dir, 'checkpoint.json'), JSON.stringify({ version: 1, driver: 'power-vfio.ibm.com', claims: { u: c } }));
    await write(claim('0030:01:00.0', 'nvme'));
    expect((await checkpoint.read()).claims['u']!.bindings![0]!.functions[0]!.driver).toBe('nvme');
    await write(claim('../../../../etc', 'nvme'));
    await expect(checkpoint.read()).rejects.toBeInstanceOf(CheckpointError);
    await write(claim('0030:01:00.0', 'nvme/../../unbind'));
    await expect(checkpoint.read()).rejects.toBeInstanceOf(CheckpointError);
  });
});
