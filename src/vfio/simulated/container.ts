// The container and its IOMMU type: opening /dev/vfio/vfio, SET_IOMMU (the sPAPR TCE driver, v1
// or v2) and the groups it attaches, GET_INFO, v1's ENABLE/DISABLE, and the driver's release when
// the last group leaves (tce_iommu_release).
import { containerPath, type ArgszOption, type SpaprTceInfo } from '../binding.js';
import { checkFd, checkString, checkU32 } from '../validate.js';
import type { SimulatedKernel } from './kernel.js';
import type { Container, SimGroup, TceDriver } from './objects.js';
import { SIMULATED_CONSTANTS } from './platform.js';
import { IOCTL, type ProcessCore } from './process-core.js';
import { account, preregFree, unaccount } from './registered-memory.js';

const C = SIMULATED_CONSTANTS;

export function openContainer(p: ProcessCore, devRoot: string): number {
  checkString('devRoot', devRoot);
  p.alive();
  const path = containerPath(devRoot);
  const container: Container = { id: p.kernel.newId(), groups: [], driver: null };
  const fd = p.installFd({ kind: 'container', refs: 1, path, container });
  p.kernel.record({ pid: p.pid, op: 'open', fd, result: 'ok', detail: { path } });
  return fd;
}

export function getApiVersion(p: ProcessCore, containerFd: number): number {
  checkFd('containerFd', containerFd);
  return p.ioctl(IOCTL.getApiVersion, containerFd, () => {
    p.containerOf(containerFd);
    return C.apiVersion;
  });
}

export function checkExtension(p: ProcessCore, containerFd: number, extension: number): number {
  checkFd('containerFd', containerFd);
  checkU32('extension', extension);
  return p.ioctl(IOCTL.checkExtension, containerFd, () => {
    p.containerOf(containerFd);
    if (extension === C.spaprTceIommu || extension === C.spaprTceV2Iommu) return 1;
    if (extension === C.eehExtension) return p.kernel.profile.eeh ? 1 : 0;
    return 0;
  }, { extension });
}

export function setIommu(p: ProcessCore, containerFd: number, type: number): void {
  checkFd('containerFd', containerFd);
  checkU32('type', type);
  p.ioctl(IOCTL.setIommu, containerFd, () => {
    const c = p.containerOf(containerFd);
    if (c.groups.length === 0 || c.driver) throw 'EINVAL';
    if (type !== C.spaprTceIommu && type !== C.spaprTceV2Iommu) throw 'ENODEV';
    const driver = newDriver(p.kernel, type === C.spaprTceV2Iommu);
    try {
      for (const g of c.groups) attachGroup(p.kernel, driver, g);
    } catch (code) {
      // Nothing is charged at attach time: dropping the half-attached driver is the whole undo.
      abandonDriver(p.kernel, driver);
      throw code;
    }
    c.driver = driver;
  }, { type });
}

export function spaprTceGetInfo(p: ProcessCore, containerFd: number, options: ArgszOption = {}): SpaprTceInfo {
  checkFd('containerFd', containerFd);
  const argsz = checkU32('argsz', options.argsz ?? 32);
  return p.ioctl(IOCTL.getInfo, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (d.groups.length === 0) throw 'ENXIO';
    if (argsz < 16) throw 'EINVAL';
    const profile = p.kernel.profile;
    const ddwCapable = d.v2 && d.groups[0]!.dynamicWindows && profile.maxDynamicWindows > 0;
    const info: SpaprTceInfo = {
      flags: ddwCapable ? C.spaprInfoDdw : 0,
      dma32WindowStart: Number(profile.dma32Start),
      dma32WindowSize: Number(profile.dma32Size),
      ddw: { pgsizes: 0n, maxDynamicWindowsSupported: 0, levels: 0 },
    };
    // 16..31 bytes of argsz: the kernel copies only the first 16 bytes back.
    if (ddwCapable && argsz >= 32) {
      info.ddw = { pgsizes: profile.pgsizes, maxDynamicWindowsSupported: profile.maxDynamicWindows, levels: profile.maxLevels };
    }
    return info;
  });
}

export function enable(p: ProcessCore, containerFd: number): void {
  checkFd('containerFd', containerFd);
  p.ioctl(IOCTL.enable, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (d.v2) throw 'ENOTTY';
    if (d.enabled) throw 'EBUSY';
    if (d.groups.length === 0) throw 'ENODEV';
    p.mmSet(d);
    const pages = Number(p.kernel.profile.dma32Size >> BigInt(p.kernel.pageShift));
    if (!account(p.kernel, p, d.mm!, pages)) throw 'ENOMEM';
    d.enableLockedPages = pages;
    d.enabled = true;
  });
}

export function disable(p: ProcessCore, containerFd: number): void {
  checkFd('containerFd', containerFd);
  p.ioctl(IOCTL.disable, containerFd, () => {
    const d = p.driverOf(containerFd);
    if (d.v2) throw 'ENOTTY';
    if (!d.enabled) return;
    d.enabled = false;
    unaccount(p.kernel, d.mm!, d.enableLockedPages);
    d.enableLockedPages = 0;
  });
}

/** @internal: tce_iommu_attach_group. Throws an errno code. */
export function attachGroup(kernel: SimulatedKernel, driver: TceDriver, g: SimGroup): void {
  if (driver.v2 && (!g.dynamicWindows || kernel.profile.maxDynamicWindows === 0)) throw 'EINVAL';
  if (!driver.v2 && driver.groups.length > 0) throw 'EBUSY';
  if (driver.v2 && kernel.profile.family === 'pseries' && driver.groups.length > 0 && driver.tables.some((t) => t !== null)) {
    throw 'EPERM';
  }
  // v1 and v2 alike (6.12): the first group leaves the default window pending; the first
  // MAP_DMA/UNMAP_DMA (v1: after ENABLE) or TCE_CREATE creates it and charges its table [seen].
  // powernv programs existing windows into a later group's PE; nothing to model beyond membership.
  if (driver.groups.length === 0 && !driver.tables[0]) driver.defWindowPending = true;
  driver.groups.push(g);
}

/** @internal: vfio_group_detach_container (+ driver release when the last group leaves). */
export function detachGroup(kernel: SimulatedKernel, g: SimGroup): void {
  const container = g.container;
  if (!container) return;
  const driver = container.driver;
  if (driver) {
    driver.groups = driver.groups.filter((x) => x !== g);
    // The windows are unset from the leaving PE; the tables (and their charge) go with the driver.
  }
  container.groups = container.groups.filter((x) => x !== g);
  g.container = null;
  if (container.groups.length === 0 && driver) {
    releaseDriver(kernel, driver);
    container.driver = null;
  }
}

/** tce_iommu_release: clear and free tables, free preregistered memory, disable, drop the mm. */
export function releaseDriver(kernel: SimulatedKernel, driver: TceDriver): void {
  for (let i = 0; i < driver.tables.length; i++) {
    const t = driver.tables[i];
    if (!t) continue;
    t.extents = [];
    if (driver.mm && t.chargedPages) unaccount(kernel, driver.mm, t.chargedPages);
    driver.tables[i] = null;
  }
  for (const r of [...driver.prereg]) preregFree(kernel, driver, r);
  if (driver.enabled) {
    driver.enabled = false;
    if (driver.mm) unaccount(kernel, driver.mm, driver.enableLockedPages);
    driver.enableLockedPages = 0;
  }
  driver.mm = null;
  driver.defWindowPending = false;
  kernel.drivers.delete(driver);
}

/** @internal */
export function newDriver(kernel: SimulatedKernel, v2: boolean): TceDriver {
  const d: TceDriver = {
    v2,
    mm: null,
    enabled: false,
    enableLockedPages: 0,
    tables: [null, null],
    defWindowPending: false,
    prereg: [],
    groups: [],
  };
  kernel.drivers.add(d);
  return d;
}

/** @internal: SET_IOMMU failed part-way; forget the driver (attach charges nothing). */
export function abandonDriver(kernel: SimulatedKernel, driver: TceDriver): void {
  driver.groups = [];
  driver.tables = [null, null];
  driver.defWindowPending = false;
  kernel.drivers.delete(driver);
}
