// The kernel's side of the sysfs writes that bind drivers, for a tree written
// by sysfs-tree.ts: in a real sysfs a write to `driver_override`, a driver's
// `unbind` or `bind`, or `drivers_probe` makes the kernel act; in a test tree
// they are plain files. This writer does what the kernel does on each write
// (the links move, /dev/vfio/N follows) and writes every other path as a
// file. Faults can be planted for tests: a write that fails with an errno, a
// driver that never binds.
import { readFile, readlink, realpath, writeFile } from 'node:fs/promises';
import { basename, join, relative, sep } from 'node:path';
import { isVfioDriver } from '../topology/parse.js';
import type { DiscoveryRoots } from '../topology/types.js';
import { bindDriver, type NodeSpec } from './sysfs-tree.js';

export interface SysfsWrite {
  path: string;
  value: string;
}

interface Fault {
  match: (write: SysfsWrite) => boolean;
  code: string;
  times: number;
}

function errno(code: string, path: string): NodeJS.ErrnoException {
  const err = new Error(`${code}: simulated kernel refused the write to ${path}`) as NodeJS.ErrnoException;
  err.code = code;
  err.path = path;
  return err;
}

/**
 * The driver each function's ID matches, as the kernel's ID tables would pick
 * it when nothing overrides: the spec's `hostDriver`, else the driver it was
 * written with when that is not a VFIO driver.
 */
export function nativeDriversOf(spec: NodeSpec): Map<string, string> {
  const map = new Map<string, string>();
  for (const g of spec.groups) {
    for (const fn of g.functions) {
      const native = fn.hostDriver ?? (fn.driver && !isVfioDriver(fn.driver) ? fn.driver : undefined);
      if (native) map.set(fn.address.toLowerCase(), native);
    }
  }
  return map;
}

export class SimulatedSysfsKernel {
  /** Every write, in order (tests assert on the sequence). */
  readonly writes: SysfsWrite[] = [];
  private readonly faults: Fault[] = [];
  /** Drivers that never bind anything (a module that is not loaded). */
  private readonly absent = new Set<string>();
  private observer: ((write: SysfsWrite) => void | Promise<void>) | null = null;

  constructor(
    private readonly roots: DiscoveryRoots,
    private readonly native: Map<string, string>,
    /** Told of every bind and unbind (the simulated VFIO kernel tracks host drivers for viability). */
    private readonly onBound?: (address: string, driver: string | null, group: number) => void,
  ) {}

  /** The writer to hand to the binding room. */
  readonly writer = (path: string, value: string): Promise<void> => this.write(path, value);

  /** Called (and awaited) before the kernel acts on each write: tests look at the node mid-move. */
  observe(observer: ((write: SysfsWrite) => void | Promise<void>) | null): void {
    this.observer = observer;
  }

  /** The next `times` writes that `match` fail with `code`. */
  failWrite(match: (write: SysfsWrite) => boolean, code = 'EIO', times = 1): void {
    this.faults.push({ match, code, times });
  }

  /** `driver` binds nothing until `present(driver)`: probing leaves the function unbound. */
  absentDriver(driver: string): void {
    this.absent.add(driver);
  }

  presentDriver(driver: string): void {
    this.absent.delete(driver);
  }

  private rel(path: string): string[] {
    return relative(join(this.roots.sysfsRoot, 'sys'), path).split(sep);
  }

  private async driverOf(address: string): Promise<string | null> {
    try {
      return basename(await readlink(join(this.roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', address, 'driver')));
    } catch {
      return null;
    }
  }

  private async overrideOf(address: string): Promise<string | null> {
    const text = (await readFile(join(this.roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', address, 'driver_override'), 'utf8')).trim();
    return text === '' || text === '(null)' ? null : text;
  }

  private async bind(address: string, driver: string | null): Promise<void> {
    await bindDriver(this.roots, address, driver);
    const group = Number(basename(await readlink(join(this.roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', address, 'iommu_group'))));
    this.onBound?.(address, driver, group);
  }

  /** A probe: the override names the only driver that may bind; else the ID tables' driver. */
  private async probe(address: string, only?: string): Promise<boolean> {
    if ((await this.driverOf(address)) !== null) return false;
    const override = await this.overrideOf(address);
    const driver = only ?? override ?? this.native.get(address) ?? null;
    if (driver === null || (override !== null && driver !== override) || this.absent.has(driver)) return false;
    await this.bind(address, driver);
    return true;
  }

  async write(path: string, value: string): Promise<void> {
    const write = { path, value };
    this.writes.push(write);
    await this.observer?.(write);
    const fault = this.faults.find((f) => f.times > 0 && f.match(write));
    if (fault) {
      fault.times -= 1;
      throw errno(fault.code, path);
    }
    const parts = this.rel(path);
    const bdf = value.trim().toLowerCase();
    // bus/pci/drivers_probe
    if (parts.join('/') === 'bus/pci/drivers_probe') {
      await this.mustExist(bdf, path);
      await this.probe(bdf);
      return;
    }
    // bus/pci/drivers/<driver>/{bind,unbind}
    if (parts.length === 5 && parts[0] === 'bus' && parts[2] === 'drivers' && (parts[4] === 'bind' || parts[4] === 'unbind')) {
      const driver = parts[3]!;
      await this.mustExist(bdf, path);
      const now = await this.driverOf(bdf);
      if (parts[4] === 'unbind') {
        if (now !== driver) throw errno('ENODEV', path);
        await this.bind(bdf, null);
        return;
      }
      if (now !== null) throw errno('EBUSY', path);
      if (!(await this.probe(bdf, driver))) throw errno('ENODEV', path);
      return;
    }
    // A function's driver_override, reached through any path to its directory.
    if (basename(path) === 'driver_override') {
      const text = value.replace(/\n$/, '');
      await writeFile(await realpath(path), `${text === '' ? '(null)' : text}\n`);
      return;
    }
    await writeFile(path, value);
  }

  private async mustExist(address: string, path: string): Promise<void> {
    try {
      await realpath(join(this.roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices', address));
    } catch {
      throw errno('ENODEV', path);
    }
  }
}
