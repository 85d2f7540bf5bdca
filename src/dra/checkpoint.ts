// What this driver has prepared, on disk, so that a restarted driver can still
// unprepare it and clean up after a prepare it did not finish. Written
// atomically (a temporary file, fsync, rename) before prepare answers; read
// defensively (a regular file, bounded, validated), because a damaged
// checkpoint must not stop the driver from serving the node.
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';

/** A set of groups of one resource prepared together, as the handoff room knows it. */
export interface PreparedGroupSet {
  resource: string;
  groups: number[];
  mode: 'none' | 'verify' | 'handoff';
}

export interface PreparedDevice {
  requestNames: string[];
  poolName: string;
  deviceName: string;
  cdiDeviceIds: string[];
  group: number;
}

/** A function of a group managed binding took, as it was before the first write. */
export interface OriginalBinding {
  address: string;
  driver: string | null;
  driverOverride: string | null;
  isBridge: boolean;
}

/** A group of a managed resource: its functions' drivers before it was taken, to give it back. */
export interface GroupRebinding {
  resource: string;
  group: number;
  /** Bound on each rebinding of the group. */
  timeoutMs: number;
  functions: OriginalBinding[];
}

export interface CheckpointClaim {
  namespace: string;
  name: string;
  /**
   * `preparing` until the answer is ready: a restart finds it and undoes it.
   * `unpreparing` once the claim is released but its groups are not yet back
   * on their host drivers: a restart (or the kubelet's retry) finishes it.
   */
  state: 'preparing' | 'prepared' | 'unpreparing';
  /** Groups of managed resources, recorded before the first sysfs write. */
  bindings?: GroupRebinding[];
  groupSets: PreparedGroupSet[];
  devices: PreparedDevice[];
  /** The CDI spec file written for the claim (base name), when written. */
  cdiSpecFile: string | null;
  /** The spec's content, to write it again should the file go missing while the claim is prepared. */
  cdiSpec?: unknown;
}

export interface CheckpointData {
  version: 1;
  driver: string;
  /** By claim uid. */
  claims: Record<string, CheckpointClaim>;
}

/** A checkpoint is a few hundred bytes per claim; anything far larger is not ours. */
const MAX_CHECKPOINT_BYTES = 16 << 20;

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');
const isGroup = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) < 1 << 20;

// Addresses and drivers become sysfs paths and values: only what sysfs itself would show.
const PCI_ADDRESS = /^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;
const DRIVER = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$/;
const driverOrNull = (v: unknown): boolean => v === null || (typeof v === 'string' && DRIVER.test(v));

function validRebinding(value: unknown): value is GroupRebinding {
  if (!isObject(value) || typeof value['resource'] !== 'string' || !isGroup(value['group'])) return false;
  if (typeof value['timeoutMs'] !== 'number' || !(value['timeoutMs'] > 0 && value['timeoutMs'] <= 3_600_000)) return false;
  const fns = value['functions'];
  return (
    Array.isArray(fns) &&
    fns.every(
      (f) => isObject(f) && typeof f['address'] === 'string' && PCI_ADDRESS.test(f['address']) && driverOrNull(f['driver']) && driverOrNull(f['driverOverride']) && typeof f['isBridge'] === 'boolean',
    )
  );
}

function validClaim(value: unknown): value is CheckpointClaim {
  if (!isObject(value)) return false;
  if (typeof value['namespace'] !== 'string' || typeof value['name'] !== 'string') return false;
  if (value['state'] !== 'preparing' && value['state'] !== 'prepared' && value['state'] !== 'unpreparing') return false;
  if (value['bindings'] !== undefined && !(Array.isArray(value['bindings']) && value['bindings'].every(validRebinding))) return false;
  if (value['cdiSpecFile'] !== null && (typeof value['cdiSpecFile'] !== 'string' || basename(value['cdiSpecFile']) !== value['cdiSpecFile'])) return false;
  const sets = value['groupSets'];
  if (!Array.isArray(sets) || !sets.every((s) => isObject(s) && typeof s['resource'] === 'string' && Array.isArray(s['groups']) && s['groups'].every(isGroup) && ['none', 'verify', 'handoff'].includes(s['mode'] as string))) return false;
  const devices = value['devices'];
  return (
    Array.isArray(devices) &&
    devices.every(
      (d) => isObject(d) && isStringArray(d['requestNames']) && typeof d['poolName'] === 'string' && typeof d['deviceName'] === 'string' && isStringArray(d['cdiDeviceIds']) && isGroup(d['group']),
    )
  );
}

export class CheckpointError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CheckpointError';
  }
}

export class Checkpoint {
  readonly path: string;

  constructor(dir: string, name: string, private readonly driver: string) {
    this.path = join(dir, name);
  }

  /**
   * Reads the checkpoint; a missing one is empty. A damaged one (not a regular
   * file, too large, not JSON, another driver's, or invalid entries) throws
   * CheckpointError: the caller moves it aside and starts empty, saying so.
   */
  async read(): Promise<CheckpointData> {
    let handle;
    try {
      handle = await open(this.path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, driver: this.driver, claims: {} };
      throw new CheckpointError(`Cannot open the checkpoint ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    let text: string;
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new CheckpointError(`The checkpoint ${this.path} is not a regular file`);
      if (st.size > MAX_CHECKPOINT_BYTES) throw new CheckpointError(`The checkpoint ${this.path} is larger than ${MAX_CHECKPOINT_BYTES} bytes`);
      text = (await handle.readFile()).toString('utf8');
    } finally {
      await handle.close().catch(() => undefined);
    }
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch {
      throw new CheckpointError(`The checkpoint ${this.path} is not JSON`);
    }
    if (!isObject(data) || data['version'] !== 1 || !isObject(data['claims'])) {
      throw new CheckpointError(`The checkpoint ${this.path} is not a version 1 checkpoint`);
    }
    if (data['driver'] !== this.driver) {
      throw new CheckpointError(`The checkpoint ${this.path} belongs to driver ${String(data['driver'])}, not ${this.driver}`);
    }
    const claims: Record<string, CheckpointClaim> = {};
    for (const [uid, claim] of Object.entries(data['claims'])) {
      if (!validClaim(claim)) throw new CheckpointError(`The checkpoint ${this.path} has an invalid entry for claim ${uid}`);
      claims[uid] = claim;
    }
    return { version: 1, driver: this.driver, claims };
  }

  /** Replaces the checkpoint atomically: the file is either the old or the new one, never half of either. */
  async write(data: CheckpointData): Promise<void> {
    await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    const tmp = `${this.path}.${process.pid}.tmp`;
    const handle = await open(tmp, 'w', 0o600);
    try {
      await handle.writeFile(`${JSON.stringify(data)}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await rename(tmp, this.path);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
  }

  /** Moves a damaged checkpoint aside (kept for the operator) and returns where it went. */
  async setAside(nowMs: number): Promise<string> {
    const aside = `${this.path}.damaged-${nowMs}`;
    await rename(this.path, aside);
    return aside;
  }
}
