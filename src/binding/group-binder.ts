// Takes the endpoints of an IOMMU group from their host drivers to vfio-pci
// and gives them back, through sysfs as the kernel documents it: driver_override
// names the only driver that may bind, `drivers/<d>/unbind` lets go, and
// `drivers_probe` binds again. Bridges are never touched. Every path is under
// the discovery roots; waits are bounded and poll the tree, because the kernel
// may probe asynchronously (nvme does) and creates /dev/vfio/N a moment later.
import { constants as fsConstants } from 'node:fs';
import { access, open, readdir, readFile, readlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { hostUse } from './in-use.js';
import { BindingError, type FunctionDriver, type GroupInspection, type SysfsWriter } from './types.js';

export const VFIO_PCI = 'vfio-pci';
/** Drivers a bridge may stay on without making its group non-viable. */
const BRIDGE_DRIVERS_KEEPING_VIABILITY = ['pcieport', 'pci-stub'];

export interface GroupBinderOptions {
  /** Root under which `sys/` lives. */
  sysfsRoot: string;
  /** Root under which `dev/vfio` lives. */
  devRoot: string;
  /** Root under which `proc/` lives (mounts, open files). */
  procRoot: string;
  /** Default: write the real attribute file. */
  writer?: SysfsWriter;
  logger?: Logger;
  /** How often a wait looks again (default 50 ms). */
  pollMs?: number;
}

/** Writes a sysfs attribute: an existing file only (a missing one is ENOENT, never created). */
export async function writeAttribute(path: string, value: string): Promise<void> {
  const handle = await open(path, fsConstants.O_WRONLY);
  try {
    await handle.write(value);
  } finally {
    await handle.close();
  }
}

function errorText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `${e.code}${e.message && !e.message.startsWith(e.code) ? ` (${e.message})` : ''}` : String((err as Error).message ?? err);
}

export class GroupBinder {
  private readonly write: SysfsWriter;
  private readonly logger: Logger;
  private readonly pollMs: number;

  constructor(private readonly options: GroupBinderOptions) {
    this.write = options.writer ?? writeAttribute;
    this.logger = (options.logger ?? silentLogger()).child({ room: 'binding' });
    this.pollMs = options.pollMs ?? 50;
  }

  private sys(...parts: string[]): string {
    return join(this.options.sysfsRoot, 'sys', ...parts);
  }

  private deviceDir(address: string): string {
    return this.sys('bus', 'pci', 'devices', address);
  }

  private devNode(group: number): string {
    return join(this.options.devRoot, 'dev', 'vfio', String(group));
  }

  /** The driver a function is on now, null when unbound. */
  async driverOf(address: string): Promise<string | null> {
    try {
      return basename(await readlink(join(this.deviceDir(address), 'driver')));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  private async readFunction(address: string): Promise<FunctionDriver> {
    const dir = this.deviceDir(address);
    const [driver, override, cls] = await Promise.all([
      this.driverOf(address),
      readFile(join(dir, 'driver_override'), 'utf8').catch(() => null),
      readFile(join(dir, 'class'), 'utf8'),
    ]);
    const o = override?.trim() ?? '';
    return {
      address,
      driver,
      driverOverride: o === '' || o === '(null)' ? null : o,
      isBridge: cls.trim().replace(/^0x/, '').startsWith('06'),
    };
  }

  /** Every function of the group now, by address. */
  async functionsOf(group: number): Promise<FunctionDriver[]> {
    const dir = this.sys('kernel', 'iommu_groups', String(group), 'devices');
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch (err) {
      throw new BindingError(`cannot list the functions of IOMMU group ${group} (${dir}: ${errorText(err)})`, group, { cause: err });
    }
    try {
      return await Promise.all(names.map((a) => this.readFunction(a)));
    } catch (err) {
      throw new BindingError(`cannot read the functions of IOMMU group ${group}: ${errorText(err)}`, group, { cause: err });
    }
  }

  /**
   * The group as it is and what stops taking it: an endpoint on a driver that
   * is not allowed, a bridge on a driver that would keep the group from being
   * viable, and anything the host uses under an endpoint still on its driver.
   */
  async inspect(group: number, allowedDrivers: readonly string[]): Promise<GroupInspection> {
    const functions = await this.functionsOf(group);
    const blockers: string[] = [];
    const onHost: { address: string; dir: string }[] = [];
    for (const fn of functions) {
      const d = fn.driver;
      if (fn.isBridge) {
        if (d !== null && d !== VFIO_PCI && !BRIDGE_DRIVERS_KEEPING_VIABILITY.includes(d)) {
          blockers.push(`bridge ${fn.address} is on driver ${d}; managed binding leaves bridges alone, and on ${d} it keeps the group from being viable`);
        }
        continue;
      }
      if (d === null || d === VFIO_PCI) continue;
      if (!allowedDrivers.includes(d)) {
        blockers.push(`function ${fn.address} is on driver ${d}, which the resource's binding.allowedDrivers (${allowedDrivers.join(', ')}) does not list`);
        continue;
      }
      onHost.push({ address: fn.address, dir: this.deviceDir(fn.address) });
    }
    if (functions.every((f) => f.isBridge)) blockers.push(`IOMMU group ${group} has no endpoint to take`);
    blockers.push(...(await hostUse(onHost, this.options.procRoot)));
    return { group, functions, blockers };
  }

  /**
   * Moves every endpoint not on vfio-pci to it, then waits (up to `timeoutMs`)
   * for each to be bound and for /dev/vfio/N. On any failure every function is
   * given back to `original` before the error is thrown.
   */
  async take(group: number, original: readonly FunctionDriver[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const moving = original.filter((f) => !f.isBridge && f.driver !== VFIO_PCI);
    try {
      for (const fn of moving) {
        await this.attempt(group, `set driver_override of ${fn.address} to ${VFIO_PCI}`, join(this.deviceDir(fn.address), 'driver_override'), VFIO_PCI);
        const now = await this.driverOf(fn.address);
        if (now !== null && now !== VFIO_PCI) {
          await this.attempt(group, `unbind ${fn.address} from ${now}`, this.sys('bus', 'pci', 'drivers', now, 'unbind'), fn.address);
        }
        if (now !== VFIO_PCI) await this.attempt(group, `probe ${fn.address}`, this.sys('bus', 'pci', 'drivers_probe'), fn.address);
      }
      await this.waitFor(group, deadline, timeoutMs, async () => {
        const drivers = await Promise.all(moving.map(async (f) => [f.address, await this.driverOf(f.address)] as const));
        const missing = drivers.filter(([, d]) => d !== VFIO_PCI).map(([a, d]) => `${a} is on ${d ?? 'no driver'}`);
        const node = await access(this.devNode(group)).then(
          () => true,
          () => false,
        );
        if (missing.length === 0 && node) return null;
        return [...missing, ...(node ? [] : [`${this.devNode(group)} does not exist`])].join(', ');
      }, `for IOMMU group ${group} to be bound to ${VFIO_PCI}`);
      if (moving.length > 0) {
        this.logger.info({ group, functions: moving.map((f) => `${f.address}:${f.driver ?? 'none'}`) }, 'Took an IOMMU group from its host drivers to vfio-pci');
      }
    } catch (err) {
      const rollback = await this.giveBack(group, original, Math.max(timeoutMs, 1000)).then(
        () => 'every function was given back',
        (e: unknown) => `giving the functions back failed too: ${(e as Error).message}`,
      );
      throw new BindingError(`${(err as Error).message}; ${rollback}`, group, { cause: err });
    }
  }

  /**
   * Gives every endpoint that was not on vfio-pci back to its driver: restores
   * driver_override, unbinds from whatever holds it now, probes, and binds it
   * explicitly when probing did not (a driver bound by hand matches no ID
   * table). Idempotent: a function already back is left alone. Waits up to `timeoutMs`.
   */
  async giveBack(group: number, original: readonly FunctionDriver[], timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const returning = original.filter((f) => !f.isBridge && f.driver !== VFIO_PCI);
    const failures: string[] = [];
    for (const fn of returning) {
      try {
        await this.attempt(group, `restore driver_override of ${fn.address}`, join(this.deviceDir(fn.address), 'driver_override'), fn.driverOverride ?? '\n');
        const now = await this.driverOf(fn.address);
        if (now === fn.driver) continue;
        if (now !== null) await this.attempt(group, `unbind ${fn.address} from ${now}`, this.sys('bus', 'pci', 'drivers', now, 'unbind'), fn.address);
        if (fn.driver !== null) await this.attempt(group, `probe ${fn.address}`, this.sys('bus', 'pci', 'drivers_probe'), fn.address);
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
    if (failures.length > 0) throw new BindingError(`cannot give IOMMU group ${group} back to its host drivers: ${failures.join('; ')}`, group);
    const unbound = async (): Promise<FunctionDriver[]> => {
      const out: FunctionDriver[] = [];
      for (const f of returning) if (f.driver !== null && (await this.driverOf(f.address)) === null) out.push(f);
      return out;
    };
    // Probing binds by ID table; a driver that had the function through `bind` needs it again.
    await this.waitFor(group, Date.now() + Math.min(timeoutMs / 2, Math.max(0, deadline - Date.now())), timeoutMs, async () => ((await unbound()).length ? 'unbound' : null), '', true);
    for (const fn of await unbound()) {
      await this.attempt(group, `bind ${fn.address} to ${fn.driver}`, this.sys('bus', 'pci', 'drivers', fn.driver!, 'bind'), fn.address).catch((err: unknown) => failures.push((err as Error).message));
    }
    if (failures.length > 0) throw new BindingError(`cannot give IOMMU group ${group} back to its host drivers: ${failures.join('; ')}`, group);
    await this.waitFor(group, deadline, timeoutMs, async () => {
      const wrong: string[] = [];
      for (const f of returning) {
        const d = await this.driverOf(f.address);
        if (d !== f.driver) wrong.push(`${f.address} is on ${d ?? 'no driver'}, not ${f.driver ?? 'no driver'}`);
      }
      return wrong.length ? wrong.join(', ') : null;
    }, `for IOMMU group ${group} to be back on its host drivers`);
    if (returning.length > 0) {
      this.logger.info({ group, functions: returning.map((f) => `${f.address}:${f.driver ?? 'none'}`) }, 'Gave an IOMMU group back to its host drivers');
    }
  }

  private async attempt(group: number, what: string, path: string, value: string): Promise<void> {
    try {
      await this.write(path, value);
    } catch (err) {
      throw new BindingError(`cannot ${what} (write to ${path}: ${errorText(err)})`, group, { cause: err });
    }
  }

  /**
   * Polls `pending` (null when done, else what is still missing) until it is
   * done or `deadline` passes; throws naming what was missing, unless `quiet`.
   */
  private async waitFor(group: number, deadline: number, timeoutMs: number, pending: () => Promise<string | null>, what: string, quiet = false): Promise<void> {
    for (;;) {
      const missing = await pending();
      if (missing === null) return;
      if (Date.now() >= deadline) {
        if (quiet) return;
        throw new BindingError(`timed out after ${timeoutMs} ms waiting ${what}: ${missing}`, group);
      }
      await new Promise((resolve) => setTimeout(resolve, this.pollMs));
    }
  }
}
