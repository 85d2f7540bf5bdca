// Groups, their devices and the PE behind them: opening /dev/vfio/N, the group ioctls (status,
// set and unset container, device fds), a device's regions and config space, and EEH_PE_OP.
import { groupPath, type ArgszOption, type EehPeOpRequest, type GroupStatus, type RegionInfo } from '../binding.js';
import {
  CONFIG_SIZE_PCI,
  IORESOURCE_MEM,
  PCI_REGION_BAR5,
  PCI_REGION_CONFIG,
  PCI_REGION_ROM,
  REGION_FLAG_READ,
  barRegionFlags,
  resourceSize,
} from '../pci-device.js';
import { checkFd, checkGroupNumber, checkString, checkU32 } from '../validate.js';
import { attachGroup, detachGroup } from './container.js';
import type { DeviceFile, GroupFile } from './objects.js';
import { SIMULATED_CONSTANTS } from './platform.js';
import { IOCTL, type ProcessCore } from './process-core.js';

const C = SIMULATED_CONSTANTS;
const VFIO_PCI_NUM_REGIONS = 9;
const VFIO_PCI_VGA_REGION = 8;

export function openGroup(p: ProcessCore, devRoot: string, group: number): number {
  checkString('devRoot', devRoot);
  checkGroupNumber(group);
  p.alive();
  const path = groupPath(devRoot, group);
  const g = p.kernel.lookupGroup(group);
  const fail = (code: string): never => {
    p.kernel.record({ pid: p.pid, op: 'open', result: code, detail: { path } });
    throw p.err(code, 'open', undefined, undefined, path);
  };
  if (!g || g.removed) fail('ENOENT');
  if (g!.file || g!.busyElsewhere) fail('EBUSY');
  const file: GroupFile = { kind: 'group', refs: 1, path, group: g! };
  g!.file = file;
  const fd = p.installFd(file);
  p.kernel.record({ pid: p.pid, op: 'open', fd, result: 'ok', detail: { path } });
  return fd;
}

export function groupGetStatus(p: ProcessCore, groupFd: number, options: ArgszOption = {}): GroupStatus {
  checkFd('groupFd', groupFd);
  const argsz = checkU32('argsz', options.argsz ?? 8);
  return p.ioctl(IOCTL.groupGetStatus, groupFd, () => {
    const g = p.groupFileOf(groupFd).group;
    if (argsz < 8) throw 'EINVAL';
    if (g.removed) throw 'ENODEV';
    let flags = 0;
    if (g.container) flags |= C.groupFlagsContainerSet | C.groupFlagsViable;
    else if ([...g.devices.values()].every((dev) => dev.hostDriver === null)) flags |= C.groupFlagsViable;
    return { flags, viable: (flags & C.groupFlagsViable) !== 0, containerSet: (flags & C.groupFlagsContainerSet) !== 0 };
  });
}

export function groupSetContainer(p: ProcessCore, groupFd: number, containerFd: number): void {
  checkFd('groupFd', groupFd);
  checkFd('containerFd', containerFd);
  p.ioctl(IOCTL.groupSetContainer, groupFd, () => {
    const g = p.groupFileOf(groupFd).group;
    const target = p.file(containerFd);
    if (g.container) throw 'EINVAL';
    if (g.removed) throw 'ENODEV';
    if (target.kind !== 'container') throw 'EBADFD';
    // iommu_group_claim_dma_owner: a DMA-capable host driver owns the group.
    if ([...g.devices.values()].some((dev) => dev.hostDriver !== null)) throw 'EPERM';
    const c = target.container;
    if (c.driver) attachGroup(p.kernel, c.driver, g);
    c.groups.push(g);
    g.container = c;
  });
}

export function groupUnsetContainer(p: ProcessCore, groupFd: number): void {
  checkFd('groupFd', groupFd);
  p.ioctl(IOCTL.groupUnsetContainer, groupFd, () => {
    const g = p.groupFileOf(groupFd).group;
    if (!g.container) throw 'EINVAL';
    if (g.deviceUsers > 0) throw 'EBUSY';
    detachGroup(p.kernel, g);
  });
}

export function groupGetDeviceFd(p: ProcessCore, groupFd: number, name: string): number {
  checkFd('groupFd', groupFd);
  checkString('name', name);
  return p.ioctl(IOCTL.groupGetDeviceFd, groupFd, () => {
    const gf = p.groupFileOf(groupFd);
    const g = gf.group;
    if (g.removed || !g.devices.has(name)) throw 'ENODEV';
    if (!g.container || !g.container.driver) throw 'EINVAL';
    g.deviceUsers++;
    gf.refs++;
    return p.installFd({ kind: 'device', refs: 1, path: gf.path, group: g, groupFile: gf, name });
  }, { name });
}

export function deviceGetRegionInfo(p: ProcessCore, deviceFd: number, index: number): RegionInfo {
  checkFd('deviceFd', deviceFd);
  checkU32('index', index);
  return p.ioctl(IOCTL.deviceGetRegionInfo, deviceFd, () => {
    const f = p.file(deviceFd);
    if (f.kind !== 'device') throw 'ENOTTY';
    if (f.group.removed) throw 'ENODEV';
    // No VGA region unless the device is a VGA device (none is simulated) [seen: EINVAL].
    if (index >= VFIO_PCI_NUM_REGIONS || index === VFIO_PCI_VGA_REGION) throw 'EINVAL';
    const offset = BigInt(index) << 40n;
    const dev = f.group.devices.get(f.name);
    if (!dev) throw 'ENODEV';
    if (index === PCI_REGION_CONFIG) return { index, flags: 0x3, size: BigInt(dev.configSize), offset };
    const r = dev.resources[index];
    if (index === PCI_REGION_ROM) {
      const size = r && r.flags & IORESOURCE_MEM ? resourceSize(r) : 0n;
      return { index, flags: size ? REGION_FLAG_READ : 0, size, offset };
    }
    if (index <= PCI_REGION_BAR5) return { index, flags: barRegionFlags(r, dev.msixBar === index), size: resourceSize(r), offset };
    return { index, flags: 0, size: 0n, offset };
  });
}

export function eehPeOp(p: ProcessCore, containerFd: number, request: EehPeOpRequest): number {
  checkFd('containerFd', containerFd);
  const op = checkU32('op', request.op);
  const flags = checkU32('flags', request.flags ?? 0);
  const argsz = checkU32('argsz', request.argsz ?? 40);
  return p.ioctl(IOCTL.eehPeOp, containerFd, () => {
    const d = p.driverOf(containerFd);
    const g = d.groups[0];
    if (!g || !g.pe) throw 'ENODEV';
    if (argsz < 12 || flags) throw 'EINVAL';
    const pe = g.pe;
    const o = C.eehPeOp;
    switch (op) {
      case o.disable:
      case o.enable:
      case o.configure:
        return 0;
      case o.unfreezeIo:
        pe.ioStopped = false;
        return 0;
      case o.unfreezeDma:
        pe.dmaStopped = false;
        return 0;
      case o.getState:
        return p.kernel.peStateOf(g);
      case o.resetHot:
      case o.resetFundamental:
        pe.reset = true;
        return 0;
      case o.resetDeactivate:
        pe.reset = false;
        pe.ioStopped = false;
        pe.dmaStopped = false;
        return 0;
      case o.injectError:
        // The struct's err fields are ignored here: any injection freezes the PE.
        pe.ioStopped = true;
        pe.dmaStopped = true;
        return 0;
      default:
        throw 'EINVAL';
    }
  }, { op });
}

/** A device fd's read: the config region shows the vendor and device ids; other regions read as zeros. */
export function readDeviceRegion(f: DeviceFile, length: number, offset: bigint): Buffer {
  const out = Buffer.alloc(length);
  if (offset >> 40n === BigInt(C.pciRegion.config)) {
    const dev = f.group.devices.get(f.name);
    const size = dev?.configSize ?? CONFIG_SIZE_PCI;
    const cfg = Buffer.alloc(size);
    cfg.writeUInt16LE(dev?.vendorId ?? 0xffff, 0);
    cfg.writeUInt16LE(dev?.deviceId ?? 0xffff, 2);
    const start = Number(offset & 0xfffn);
    // Reads past the end of the config space return nothing.
    if (start < size) return cfg.subarray(start, Math.min(size, start + length));
    return Buffer.alloc(0);
  }
  return out;
}
