// Kernel uevents as a topology signal. Real sysfs sends no inotify events, so
// driver bind/unbind, hot-unplug and EEH recovery are only seen by the slow
// safety poll unless we listen to the kernel itself: a NETLINK_KOBJECT_UEVENT
// socket read by a native thread (native/uevent.cc). This module parses the
// datagrams, says which IOMMU groups an event touches, and defines the
// UeventSource the watcher consumes (the netlink one, and a fake for tests).
import { createRequire } from 'node:module';
import { readlink, statfs } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../log.js';
import { isGroupNumber, isPciAddress } from './parse.js';
import { pciDevicesDir } from './scan.js';
import type { DiscoveryRoots } from './types.js';

// ---- the message ------------------------------------------------------------

/** One kernel uevent. */
export interface Uevent {
  /** `add`, `remove`, `change`, `bind`, `unbind`, `move`, `online`, `offline`. */
  action: string;
  /** Path under /sys, from the kernel: `/devices/pci0030:00/0030:00:00.0/0030:01:00.0`. */
  devpath: string;
  /** `pci`, `vfio`, `misc`, ... */
  subsystem: string;
  /** `DRIVER`: set on bind and on events of a bound device. */
  driver?: string;
  /** `PCI_SLOT_NAME`, lower case: the function's address. */
  pciSlotName?: string;
  /** `DEVNAME`, relative to /dev: `vfio/3`. */
  devname?: string;
  /** `SEQNUM`, the kernel's event counter. */
  seqnum?: number;
  /** Every KEY=VALUE pair, including the ones above (`ERROR_EVENT` on EEH recovery). */
  env: Readonly<Record<string, string>>;
}

const LIBUDEV_MAGIC = 'libudev\0';
const decoder = new TextDecoder('utf-8', { fatal: false });

/**
 * Parse a kernel uevent datagram: `ACTION@DEVPATH\0KEY=VALUE\0...`. Returns
 * null for udev's re-broadcasts (`libudev\0` header), garbage, and messages
 * too truncated to name their action, device and subsystem. A truncated last
 * field (no closing NUL) is dropped rather than trusted.
 */
export function parseUevent(data: Uint8Array): Uevent | null {
  if (data.length < 3) return null;
  const text = decoder.decode(data);
  if (text.startsWith(LIBUDEV_MAGIC)) return null;
  const fields = text.split('\0');
  // A well-formed message ends with NUL, so the last element is ''. Anything
  // else there is a field cut short by truncation.
  fields.pop();
  const header = fields.shift();
  if (header === undefined) return null;
  const at = header.indexOf('@');
  if (at <= 0) return null;
  const action = header.slice(0, at);
  const devpath = header.slice(at + 1);
  if (!/^[a-z_]+$/.test(action) || !devpath.startsWith('/')) return null;

  const env: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const f of fields) {
    const eq = f.indexOf('=');
    if (eq <= 0) continue;
    const key = f.slice(0, eq);
    if (!/^[A-Za-z0-9_]+$/.test(key)) continue;
    env[key] = f.slice(eq + 1);
  }
  // The kernel repeats the header in the environment; a mismatch is not a kernel message.
  if (env['ACTION'] !== undefined && env['ACTION'] !== action) return null;
  if (env['DEVPATH'] !== undefined && env['DEVPATH'] !== devpath) return null;
  const subsystem = env['SUBSYSTEM'];
  if (subsystem === undefined || subsystem === '') return null;

  const event: Uevent = { action, devpath, subsystem, env };
  const driver = env['DRIVER'];
  if (driver !== undefined && driver !== '') event.driver = driver;
  const slot = env['PCI_SLOT_NAME'];
  if (slot !== undefined && isPciAddress(slot)) event.pciSlotName = slot.toLowerCase();
  const devname = env['DEVNAME'];
  if (devname !== undefined && devname !== '') event.devname = devname;
  const seq = env['SEQNUM'];
  if (seq !== undefined && /^\d+$/.test(seq)) event.seqnum = Number(seq);
  return event;
}

/** Build a datagram the way the kernel does (tests and the fake source use it). */
export function formatUevent(action: string, devpath: string, env: Record<string, string | number>): Buffer {
  const fields = [`${action}@${devpath}`, `ACTION=${action}`, `DEVPATH=${devpath}`];
  for (const [k, v] of Object.entries(env)) if (k !== 'ACTION' && k !== 'DEVPATH') fields.push(`${k}=${v}`);
  return Buffer.from(`${fields.join('\0')}\0`, 'utf8');
}

// ---- what an event means for the topology ------------------------------------

/** What a uevent asks the watcher to rescan. */
export type UeventTarget =
  | { kind: 'groups'; groups: number[] }
  /** The container node /dev/vfio/vfio came or went. */
  | { kind: 'container' }
  /** Something happened that cannot be pinned to a group yet (a PCI add before its group link exists). */
  | { kind: 'all'; why: string }
  | { kind: 'none' };

export interface UeventMappingContext {
  roots: DiscoveryRoots;
  /** Groups the watcher currently lists that function in (a removed function has no link left to read). */
  groupsOfFunction(address: string): number[];
}

/** Actions on a PCI function that can change its group's health. */
const PCI_ACTIONS = new Set(['add', 'remove', 'bind', 'unbind', 'change', 'online', 'offline', 'move']);

/** The PCI function an event is about: `PCI_SLOT_NAME`, else the devpath's last PCI address. */
export function functionOfUevent(event: Uevent): string | null {
  if (event.pciSlotName !== undefined) return event.pciSlotName;
  const parts = event.devpath.split('/');
  for (let i = parts.length - 1; i >= 0; i--) {
    const p = parts[i] ?? '';
    if (isPciAddress(p)) return p.toLowerCase();
  }
  return null;
}

/** The group `<sysfs>/bus/pci/devices/BDF/iommu_group` links to, or null. */
export async function groupOfFunction(roots: DiscoveryRoots, address: string): Promise<number | null> {
  try {
    const target = await readlink(join(pciDevicesDir(roots), address, 'iommu_group'));
    const name = basename(target);
    return isGroupNumber(name) ? Number(name) : null;
  } catch {
    return null;
  }
}

/** Which groups to rescan for one event. Never throws. */
export async function targetOfUevent(event: Uevent, ctx: UeventMappingContext): Promise<UeventTarget> {
  switch (event.subsystem) {
    case 'vfio': {
      // /dev/vfio/N, the group's character device.
      const m = /^vfio\/(\d+)$/.exec(event.devname ?? '');
      if (m !== null && isGroupNumber(m[1] ?? '')) return { kind: 'groups', groups: [Number(m[1])] };
      return { kind: 'none' };
    }
    case 'misc':
      // /dev/vfio/vfio is a misc device: the vfio module was loaded or removed.
      return event.devname === 'vfio/vfio' ? { kind: 'container' } : { kind: 'none' };
    case 'pci':
    case 'vfio-dev': {
      // vfio-dev is the per-device cdev (iommufd) under the PCI function's directory.
      if (event.subsystem === 'pci' && !PCI_ACTIONS.has(event.action)) return { kind: 'none' };
      const address = functionOfUevent(event);
      if (address === null) return { kind: 'none' };
      const known = ctx.groupsOfFunction(address);
      const linked = event.action === 'remove' && event.subsystem === 'pci' ? null : await groupOfFunction(ctx.roots, address);
      const groups = [...new Set([...known, ...(linked === null ? [] : [linked])])].sort((a, b) => a - b);
      if (groups.length > 0) return { kind: 'groups', groups };
      // On POWER the group is attached after the add uevent (pcibios_bus_add_device):
      // the link may not exist yet. Let the cheap fingerprint pass find it.
      if (event.action === 'add' && event.subsystem === 'pci') return { kind: 'all', why: `function ${address} added without an IOMMU group link yet` };
      return { kind: 'none' };
    }
    default:
      return { kind: 'none' };
  }
}

// ---- sources -----------------------------------------------------------------

/** Where uevents come from. `start` throws when the source cannot be opened. */
export interface UeventSource {
  /** `netlink`, `fake`, ... for logs. */
  readonly kind: string;
  /**
   * Begin delivering parsed events. `onLost` is told when events were lost
   * (socket buffer overflow) or the source died (`fatal: true` on the error):
   * either way the consumer must rescan everything.
   */
  start(onEvent: (event: Uevent) => void, onLost?: (err: UeventLossError) => void): void;
  /** Stop delivering; idempotent. Nothing is delivered after it returns. */
  stop(): void;
}

/** Stable codes for uevent failures. */
export type UeventErrorCode = 'PVDP_ERR_UEVENT_UNAVAILABLE' | 'PVDP_ERR_UEVENT_LOST';

/** The netlink listener cannot be loaded or opened; the poll covers for it. */
export class UeventUnavailableError extends Error {
  readonly code: UeventErrorCode = 'PVDP_ERR_UEVENT_UNAVAILABLE';
  /** The system error code (`EACCES`, `EPROTONOSUPPORT`, ...) when a syscall failed. */
  readonly sysCode: string | undefined;
  readonly errno: number | undefined;
  readonly syscall: string | undefined;
  constructor(message: string, cause: unknown) {
    super(message, { cause });
    this.name = 'UeventUnavailableError';
    const c = (typeof cause === 'object' && cause !== null ? cause : {}) as { code?: unknown; errno?: unknown; syscall?: unknown };
    this.sysCode = typeof c.code === 'string' ? c.code : undefined;
    this.errno = typeof c.errno === 'number' ? c.errno : undefined;
    this.syscall = typeof c.syscall === 'string' ? c.syscall : undefined;
  }
}

/** Events were lost (`fatal`: the listener stopped for good). */
export class UeventLossError extends Error {
  readonly code: UeventErrorCode = 'PVDP_ERR_UEVENT_LOST';
  readonly fatal: boolean;
  constructor(message: string, fatal: boolean, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'UeventLossError';
    this.fatal = fatal;
  }
}

/** The addon's raw surface (native/uevent.cc). */
export interface UeventAddon {
  openUeventMonitor(onMessage: (data: Buffer) => void, onError?: (err: Error & { fatal?: boolean }) => void): UeventMonitorHandle;
}

export interface UeventMonitorHandle {
  /** Stops the listener thread; throws ERR_UEVENT_MONITOR_CLOSED when called twice. */
  close(): void;
  ref(): void;
  unref(): void;
}

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * The addon by path (never node-gyp-build, which loads the first `.node` of
 * build/Release and must keep finding the VFIO addon): `addonPath`, else
 * $PVDP_UEVENT_ADDON, else build/Release/vfio_uevent.node of the package.
 */
export function loadUeventAddon(addonPath: string | undefined = process.env['PVDP_UEVENT_ADDON']): UeventAddon {
  const require = createRequire(import.meta.url);
  const path = addonPath !== undefined && addonPath !== '' ? addonPath : join(repoRoot, 'build', 'Release', 'vfio_uevent.node');
  const addon = require(path) as Partial<UeventAddon>;
  if (typeof addon.openUeventMonitor !== 'function') throw new Error(`${path} is not the uevent addon`);
  return addon as UeventAddon;
}

export interface NetlinkUeventSourceOptions {
  /** Load the addon from here instead of the package's build. */
  addonPath?: string;
  /** An already loaded addon (tests). */
  addon?: UeventAddon;
  logger?: Logger;
}

/** Kernel uevents through the native netlink listener. */
export class NetlinkUeventSource implements UeventSource {
  readonly kind = 'netlink';
  readonly #options: NetlinkUeventSourceOptions;
  #handle: UeventMonitorHandle | null = null;
  #received = 0;
  #ignored = 0;

  constructor(options: NetlinkUeventSourceOptions = {}) {
    this.#options = options;
  }

  /** Datagrams received and datagrams that did not parse (libudev, garbage). */
  counts(): { received: number; ignored: number } {
    return { received: this.#received, ignored: this.#ignored };
  }

  start(onEvent: (event: Uevent) => void, onLost?: (err: UeventLossError) => void): void {
    if (this.#handle !== null) return;
    if (process.platform !== 'linux') {
      throw new UeventUnavailableError(`Kernel uevents need Linux, not ${process.platform}`, undefined);
    }
    let addon: UeventAddon;
    try {
      addon = this.#options.addon ?? loadUeventAddon(this.#options.addonPath);
    } catch (err) {
      throw new UeventUnavailableError(`Cannot load the uevent addon: ${(err as Error).message}`, err);
    }
    const onMessage = (data: Buffer): void => {
      this.#received++;
      const event = parseUevent(data);
      if (event === null) {
        this.#ignored++;
        return;
      }
      try {
        onEvent(event);
      } catch (err) {
        this.#options.logger?.error({ err }, 'A uevent listener threw');
      }
    };
    const onError = (err: Error & { fatal?: boolean }): void => {
      const fatal = err.fatal === true;
      if (fatal) {
        // The thread has ended; close() still releases the socket and lets the process exit.
        const h = this.#handle;
        this.#handle = null;
        try {
          h?.close();
        } catch {
          // Already closed.
        }
      }
      try {
        onLost?.(new UeventLossError(fatal ? `The uevent listener stopped: ${err.message}` : `Uevents were lost: ${err.message}`, fatal, err));
      } catch (e) {
        this.#options.logger?.error({ err: e }, 'A uevent loss listener threw');
      }
    };
    try {
      this.#handle = addon.openUeventMonitor(onMessage, onError);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      throw new UeventUnavailableError(
        `Cannot open a kernel uevent socket (${typeof code === 'string' ? code : (err as Error).message}); ` +
          'run the plugin with CAP_NET_ADMIN or privileged if this persists',
        err,
      );
    }
  }

  stop(): void {
    const h = this.#handle;
    this.#handle = null;
    if (h === null) return;
    try {
      h.close();
    } catch {
      // Already closed (the listener died on its own).
    }
  }
}

/** A UeventSource driven by the test: `emit` delivers synchronously, as parsed from a datagram. */
export class FakeUeventSource implements UeventSource {
  readonly kind = 'fake';
  #onEvent: ((event: Uevent) => void) | null = null;
  #onLost: ((err: UeventLossError) => void) | null = null;
  /** Throw this from `start`, to test the fallback. */
  failWith: Error | null = null;
  starts = 0;
  stops = 0;

  get running(): boolean {
    return this.#onEvent !== null;
  }

  start(onEvent: (event: Uevent) => void, onLost?: (err: UeventLossError) => void): void {
    this.starts++;
    if (this.failWith !== null) throw this.failWith;
    this.#onEvent = onEvent;
    this.#onLost = onLost ?? null;
  }

  stop(): void {
    this.stops++;
    this.#onEvent = null;
    this.#onLost = null;
  }

  /** Deliver one datagram (parsed as the netlink source would); false when it did not parse or nobody listens. */
  emitRaw(data: Uint8Array): boolean {
    const event = parseUevent(data);
    if (event === null || this.#onEvent === null) return false;
    this.#onEvent(event);
    return true;
  }

  emit(action: string, devpath: string, env: Record<string, string | number>): boolean {
    return this.emitRaw(formatUevent(action, devpath, env));
  }

  lose(fatal = false): void {
    this.#onLost?.(new UeventLossError('Uevents were lost (fake)', fatal));
    if (fatal) this.#onEvent = null;
  }
}

// ---- choosing the default source ------------------------------------------------

const SYSFS_MAGIC = 0x62656572;

/**
 * True when `<sysfsRoot>/sys` is the kernel's sysfs (also when mounted
 * elsewhere, like /host/sys in the chart), so the kernel's uevents describe it.
 * A test tree on tmpfs or ext4 gets no uevents.
 */
export async function isRealSysfs(roots: DiscoveryRoots): Promise<boolean> {
  try {
    const s = await statfs(join(roots.sysfsRoot, 'sys'));
    return Number(s.type) === SYSFS_MAGIC;
  } catch {
    return false;
  }
}
