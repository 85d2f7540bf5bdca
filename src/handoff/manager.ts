// The handoff preparation mode's bookkeeping, keyed by group set: PreStartContainer
// carries only device IDs, and a group belongs to one container at a time.
//
// - Allocate makes a per-allocation directory `alloc-<16 hex>/` (0700) under the
//   host directory with the plugin's record (record.json) and a `sock/`
//   subdirectory; only `sock/` is mounted into that container, read-only, so the
//   pod can reach the socket but can never touch the record (which a restarted
//   plugin trusts) or plant anything where the plugin writes.
// - PreStartContainer prepares (through the pluggable HandoffSource) and serves
//   the socket in every directory allocated for that group set: init containers
//   and the app container of one pod get the same groups in turn, and only the
//   one running can connect. A repeated PreStart releases an unclaimed
//   preparation and prepares anew.
// - One claim; then the plugin closes its copies and removes the sockets.
// - Unclaimed preparations are released after the claim timeout, when
//   PodResources shows no pod holds the groups (the directories go too), and
//   at shutdown (directories stay, so a restarted plugin adopts them).
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readdir, rm, chmod, writeFile, unlink, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { RequestError } from '../errors.js';
import type { IommuGroup } from '../topology/types.js';
import type { ResourceConfig } from '../config/schema.js';
import type { AllocationExtra } from '../prepare/types.js';
import { containerDirFor } from './paths.js';
import { resourceEnvSuffix } from '../inventory/advertised.js';
import {
  HANDOFF_PROTOCOL_VERSION,
  HANDOFF_RECORD_NAME,
  HANDOFF_SOCKET_DIR,
  HANDOFF_SOCKET_NAME,
  encodeResponse,
  type HandoffDescription,
} from './protocol.js';
import { HandoffEndpoint, sendError, type EndpointLimits } from './server.js';
import type { HandoffConnection, HandoffTransport } from './transport.js';

/** What one preparation hands over. */
export interface HandoffPayload {
  description: HandoffDescription;
  /** The plugin's fds in wire order: container, memory, groups. */
  fds: number[];
  /** The fds were delivered: close the plugin's copies only; the kernel objects live on in the claimer. */
  handedOver(): Promise<void>;
  /** Nobody claimed: undo everything. */
  release(): Promise<void>;
}

/** Where the fds come from: the VFIO sequence on a node, anything fd-shaped in tests. */
export type HandoffSource = (resource: ResourceConfig, groups: IommuGroup[]) => Promise<HandoffPayload>;

/** The subset of a PodResources listing the manager needs. */
export interface DevicesInUse {
  /** When the listing was requested (ms since epoch). */
  takenAtMs: number;
  /** resource name -> device IDs held by some container. */
  byResource: ReadonlyMap<string, ReadonlySet<string>>;
  /**
   * resource name -> the device ID sets held by single containers, each as
   * sorted numeric IDs joined by ",". When given, a group set is held only if
   * one container holds exactly it; without it, if every one of its groups is held.
   */
  groupSets?: ReadonlyMap<string, ReadonlySet<string>>;
}

export interface HandoffManagerOptions {
  /** Host directory holding the per-allocation directories. */
  hostDir: string;
  /** Where the per-allocation directory appears in the container (a sub-directory per resource). */
  containerDir: string;
  transport: HandoffTransport;
  source: HandoffSource;
  logger?: Logger;
  /** Claim timeout when the resource does not set one (ms). */
  defaultClaimTimeoutMs?: number;
  /** Override every resource's claim timeout (tests). */
  claimTimeoutMs?: number;
  /** Allocations younger than this are not released by a PodResources listing (the kubelet may not list them yet). */
  podResourcesGraceMs?: number;
  /** Directories kept per group set (init containers + app); the oldest goes first. */
  maxAllocationsPerGroupSet?: number;
  limits?: EndpointLimits;
  now?: () => number;
}

export type SlotState = 'allocated' | 'preparing' | 'ready' | 'claiming' | 'claimed' | 'released' | 'failed';

interface AllocationRecord {
  id: string;
  /** The per-allocation directory (the record, never mounted). */
  dir: string;
  /** Its `sock/` subdirectory: the only part the container sees (read-only). */
  socketDir: string;
  createdMs: number;
  endpoint: HandoffEndpoint | null;
}

interface Slot {
  key: string;
  resourceName: string;
  resource: ResourceConfig | null;
  groups: number[];
  allocations: AllocationRecord[];
  state: SlotState;
  payload: HandoffPayload | null;
  reason: string;
  timer: NodeJS.Timeout | null;
  /** Last Allocate or PreStartContainer (ms). */
  touchedMs: number;
  /** Serialises prepare, release and removal of this slot. */
  queue: Promise<void>;
  claiming: Promise<void> | null;
  claims: number;
}

export interface SlotStatus {
  key: string;
  resource: string;
  groups: number[];
  state: SlotState;
  reason: string;
  /** The per-allocation directories (records; never mounted). */
  dirs: string[];
  /** Their `sock/` subdirectories, the mounted part. */
  socketDirs: string[];
  sockets: string[];
  claims: number;
}

const ALLOCATION_DIR = /^alloc-[0-9a-f]{16}$/;
/** A record is a few hundred bytes; anything larger is not ours. */
const MAX_RECORD_BYTES = 4096;
const MAX_GROUP_ID = 1 << 20;

export interface AllocationFileRecord {
  version: 1;
  resource: string;
  groups: number[];
  createdMs: number;
}

/**
 * Reads an allocation record without trusting the file: no symlinks
 * (O_NOFOLLOW), no blocking on a FIFO or device (O_NONBLOCK, then fstat must
 * say regular file), at most MAX_RECORD_BYTES, and validated field by field.
 * Returns the record or a reason.
 */
export async function readAllocationRecord(path: string, nowMs: number): Promise<AllocationFileRecord | string> {
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK | fsConstants.O_NOCTTY);
  } catch (err) {
    return `cannot open ${HANDOFF_RECORD_NAME}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  let text: string;
  try {
    const st = await handle.stat();
    if (!st.isFile()) return `${HANDOFF_RECORD_NAME} is not a regular file`;
    if (st.size > MAX_RECORD_BYTES) return `${HANDOFF_RECORD_NAME} is larger than ${MAX_RECORD_BYTES} bytes`;
    const buffer = Buffer.alloc(MAX_RECORD_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_RECORD_BYTES) return `${HANDOFF_RECORD_NAME} is larger than ${MAX_RECORD_BYTES} bytes`;
    }
    text = buffer.subarray(0, length).toString('utf8');
  } catch (err) {
    return `cannot read ${HANDOFF_RECORD_NAME}: ${(err as Error).message}`;
  } finally {
    await handle.close().catch(() => undefined);
  }
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch {
    return `${HANDOFF_RECORD_NAME} is not JSON`;
  }
  if (typeof record !== 'object' || record === null || Array.isArray(record)) return `${HANDOFF_RECORD_NAME} is not an object`;
  const r = record as Record<string, unknown>;
  if (r['version'] !== 1) return `${HANDOFF_RECORD_NAME} has an unknown version`;
  const resource = r['resource'];
  if (typeof resource !== 'string' || resource.length === 0 || resource.length > 253 || !/^[A-Za-z0-9._/-]+$/.test(resource)) return `${HANDOFF_RECORD_NAME} has no valid resource`;
  const groups = r['groups'];
  if (!Array.isArray(groups) || groups.length === 0 || groups.length > 64 || !groups.every((g) => Number.isInteger(g) && (g as number) >= 0 && (g as number) < MAX_GROUP_ID)) {
    return `${HANDOFF_RECORD_NAME} has no valid groups`;
  }
  if (new Set(groups).size !== groups.length) return `${HANDOFF_RECORD_NAME} repeats a group`;
  const createdMs = r['createdMs'];
  if (typeof createdMs !== 'number' || !Number.isFinite(createdMs) || createdMs < 0 || createdMs > nowMs + 24 * 3600_000) return `${HANDOFF_RECORD_NAME} has no valid creation time`;
  return { version: 1, resource, groups: groups as number[], createdMs };
}

export function groupSetKey(resource: string, groups: readonly number[]): string {
  return `${resource}:${[...groups].sort((a, b) => a - b).join(',')}`;
}

export { containerDirFor } from './paths.js';

export function claimTimeoutMsOf(resource: ResourceConfig | null, fallbackMs: number): number {
  const seconds = resource?.preparation.handoff?.claimTimeoutSeconds;
  return seconds !== undefined ? seconds * 1000 : fallbackMs;
}

export class HandoffManager {
  private readonly slots = new Map<string, Slot>();
  /** IOMMU group -> the slots whose group set contains it (a group is one kernel object, whatever the resource). */
  private readonly byGroup = new Map<number, Set<Slot>>();
  private readonly logger: Logger;
  private readonly now: () => number;
  private stopped = false;

  constructor(private readonly options: HandoffManagerOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'handoff' });
    this.now = options.now ?? Date.now;
  }

  /**
   * Makes the host directory and adopts per-allocation directories of a
   * previous run: their sockets are stale (the kernel released whatever that
   * process held unclaimed when it exited) and are removed; the directories
   * stay for the containers that still have them mounted, until PodResources
   * shows their groups free. Directories without a valid record (or of the
   * older layout, whose record the pod could write) are removed. The record
   * lives outside the mounted `sock/` directory, so no pod could have written
   * it; it is still read defensively (no symlink, no FIFO, bounded, validated).
   */
  async start(): Promise<void> {
    await mkdir(this.options.hostDir, { recursive: true, mode: 0o700 });
    for (const entry of await readdir(this.options.hostDir, { withFileTypes: true })) {
      const name = entry.name;
      if (!ALLOCATION_DIR.test(name)) continue;
      const dir = join(this.options.hostDir, name);
      const socketDir = join(dir, HANDOFF_SOCKET_DIR);
      const drop = async (why: string) => {
        this.logger.warn({ dir, why }, 'Removed a handoff directory of a previous run without a valid allocation record');
        await rm(dir, { recursive: true, force: true }).catch((err: unknown) => this.logger.error({ dir, err: (err as Error).message }, 'Cannot remove a handoff directory'));
      };
      if (!entry.isDirectory()) {
        await drop('not a directory');
        continue;
      }
      const sockStat = await lstat(socketDir).catch(() => null);
      if (!sockStat?.isDirectory()) {
        await drop(`no ${HANDOFF_SOCKET_DIR}/ directory (an older layout, or damaged)`);
        continue;
      }
      const record = await readAllocationRecord(join(dir, HANDOFF_RECORD_NAME), this.now());
      if (typeof record === 'string') {
        await drop(record);
        continue;
      }
      const stale = join(socketDir, HANDOFF_SOCKET_NAME);
      const staleStat = await lstat(stale).catch(() => null);
      if (staleStat && !staleStat.isDirectory()) await unlink(stale).catch(() => undefined);
      const slot = this.slotFor(record.resource, record.groups, null);
      slot.allocations.push({ id: name, dir, socketDir, createdMs: record.createdMs, endpoint: null });
      slot.allocations.sort((a, b) => a.createdMs - b.createdMs);
      this.logger.info({ dir, resource: record.resource, groups: record.groups }, 'Adopted a handoff directory of a previous run');
    }
  }

  private slotFor(resourceName: string, groups: readonly number[], resource: ResourceConfig | null): Slot {
    const key = groupSetKey(resourceName, groups);
    let slot = this.slots.get(key);
    if (!slot) {
      slot = {
        key,
        resourceName,
        resource,
        groups: [...groups].sort((a, b) => a - b),
        allocations: [],
        state: 'allocated',
        payload: null,
        reason: '',
        timer: null,
        touchedMs: this.now(),
        queue: Promise.resolve(),
        claiming: null,
        claims: 0,
      };
      this.register(slot);
    }
    if (resource) slot.resource = resource;
    return slot;
  }

  private register(slot: Slot): void {
    this.slots.set(slot.key, slot);
    for (const g of slot.groups) {
      let set = this.byGroup.get(g);
      if (!set) this.byGroup.set(g, (set = new Set()));
      set.add(slot);
    }
  }

  private unregister(slot: Slot): void {
    if (this.slots.get(slot.key) === slot) this.slots.delete(slot.key);
    for (const g of slot.groups) {
      const set = this.byGroup.get(g);
      set?.delete(slot);
      if (set?.size === 0) this.byGroup.delete(g);
    }
  }

  /** Other slots sharing a group with `slot`. */
  private overlapping(slot: Slot): Slot[] {
    const found = new Set<Slot>();
    for (const g of slot.groups) for (const other of this.byGroup.get(g) ?? []) if (other !== slot) found.add(other);
    return [...found];
  }

  /**
   * The groups now belong to a new container (Allocate) or one is starting with
   * them (PreStart): an unclaimed preparation of another group set that shares
   * any of them holds the group fds open and would make the new preparation
   * fail, so it is released. Claimed ones are the kernel's business.
   */
  private async releaseOverlapping(slot: Slot, why: string): Promise<void> {
    for (const other of this.overlapping(slot)) {
      await this.serial(other, async () => {
        if (other.claiming) await other.claiming;
        if (other.state === 'ready') await this.releasePayload(other, why);
      });
    }
  }

  private serial<T>(slot: Slot, run: () => Promise<T>): Promise<T> {
    const result = slot.queue.then(run);
    slot.queue = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  private claimTimeoutMs(slot: Slot): number {
    return this.options.claimTimeoutMs ?? claimTimeoutMsOf(slot.resource, this.options.defaultClaimTimeoutMs ?? 120_000);
  }

  /**
   * Allocate for one container of a handoff resource: a fresh directory, its
   * mount and the env naming the socket. Throws RequestError when the host
   * directory is unusable.
   */
  async allocate(resource: ResourceConfig, groups: readonly IommuGroup[]): Promise<AllocationExtra> {
    const ids = groups.map((g) => g.id);
    const id = `alloc-${randomBytes(8).toString('hex')}`;
    const dir = join(this.options.hostDir, id);
    const socketDir = join(dir, HANDOFF_SOCKET_DIR);
    const socket = join(socketDir, HANDOFF_SOCKET_NAME);
    if (Buffer.byteLength(socket) > 107) {
      throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `The handoff socket path ${socket} is longer than a unix socket allows (107 bytes): choose a shorter handoff host directory`);
    }
    const createdMs = this.now();
    try {
      await mkdir(this.options.hostDir, { recursive: true, mode: 0o700 });
      await mkdir(dir, { mode: 0o700 });
      await chmod(dir, 0o700);
      await writeFile(join(dir, HANDOFF_RECORD_NAME), `${JSON.stringify({ version: 1, resource: resource.name, groups: ids, createdMs })}\n`, { mode: 0o600, flag: 'wx' });
      await mkdir(socketDir, { mode: 0o700 });
      await chmod(socketDir, 0o700);
    } catch (err) {
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `Cannot create the handoff directory ${dir}: ${(err as Error).message}; check that the handoff host directory is a writable host path`, { cause: err });
    }
    const key = groupSetKey(resource.name, ids);
    const allocation: AllocationRecord = { id, dir, socketDir, createdMs, endpoint: null };
    for (;;) {
      const slot = this.slotFor(resource.name, ids, resource);
      await this.releaseOverlapping(slot, `group(s) ${ids.join(', ')} were allocated to another container`);
      const placed = await this.serial(slot, async () => {
        if (this.slots.get(key) !== slot) {
          // reconcile() forgot this slot while we waited: bring it back, or join the one that replaced it.
          if (this.slots.has(key)) return false;
          this.register(slot);
        }
        if (slot.claiming) await slot.claiming;
        if (slot.state === 'ready') {
          // Every container of a pod is allocated before any starts: an unclaimed preparation now belongs to a pod that went.
          await this.releasePayload(slot, 'the groups were allocated again');
        }
        slot.resource = resource;
        slot.allocations.push(allocation);
        slot.touchedMs = this.now();
        const max = this.options.maxAllocationsPerGroupSet ?? 8;
        while (slot.allocations.length > max) {
          const old = slot.allocations.shift()!;
          await this.removeAllocation(old);
        }
        return true;
      });
      if (placed) break;
    }
    const inContainer = containerDirFor(this.options.containerDir, resource.name);
    const socketInContainer = join(inContainer, HANDOFF_SOCKET_NAME);
    const suffix = resourceEnvSuffix(resource.name);
    const handoff = resource.preparation.handoff;
    const envs: Record<string, string> = {
      PVDP_HANDOFF_SOCKET: socketInContainer,
      [`PVDP_HANDOFF_SOCKET_${suffix}`]: socketInContainer,
      PVDP_HANDOFF_PROTOCOL: String(HANDOFF_PROTOCOL_VERSION),
      PVDP_HANDOFF_GROUPS: ids.join(','),
      PVDP_HANDOFF_MEMORY_SIZE: handoff?.memorySize !== undefined ? String(handoff.memorySize) : 'window',
      PVDP_HANDOFF_CLAIM_TIMEOUT_SECONDS: String(claimTimeoutMsOf(resource, this.options.defaultClaimTimeoutMs ?? 120_000) / 1000),
    };
    if (handoff?.hugePageShift !== undefined) envs['PVDP_HANDOFF_HUGEPAGE_SIZE'] = String(2 ** handoff.hugePageShift);
    this.logger.info({ resource: resource.name, groups: ids, dir }, 'Allocated a handoff directory');
    // Only the socket directory, read-only: connect() works through a read-only mount, writes do not.
    return { envs, mounts: [{ container_path: inContainer, host_path: socketDir, read_only: true }] };
  }

  /** PreStartContainer: prepare and serve. Throws (failing the container start) when preparation fails. */
  async preStart(resource: ResourceConfig, groups: IommuGroup[]): Promise<void> {
    if (this.stopped) throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', 'The plugin is shutting down');
    const ids = groups.map((g) => g.id);
    const key = groupSetKey(resource.name, ids);
    const notAllocated = () =>
      new RequestError(
        'PVDP_ERR_PREPARATION',
        'precondition',
        `No handoff directory was allocated for IOMMU group(s) ${ids.join(', ')} of ${resource.name}: this plugin did not see the Allocate (delete the pod so it is allocated again)`,
      );
    const slot = this.slots.get(key);
    if (!slot || slot.allocations.length === 0) throw notAllocated();
    slot.resource = resource;
    await this.releaseOverlapping(slot, `group(s) ${ids.join(', ')} are being prepared for another container`);
    await this.serial(slot, async () => {
      if (this.slots.get(key) !== slot || slot.allocations.length === 0) throw notAllocated();
      if (slot.claiming) await slot.claiming;
      if (slot.state === 'ready') await this.releasePayload(slot, 'a new PreStartContainer for the same groups');
      slot.state = 'preparing';
      slot.reason = '';
      slot.touchedMs = this.now();
      let payload: HandoffPayload;
      try {
        payload = await this.options.source(resource, groups);
      } catch (err) {
        slot.state = 'failed';
        slot.reason = (err as Error).message;
        throw err;
      }
      if (this.stopped) {
        await payload.release();
        throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', 'The plugin is shutting down');
      }
      slot.payload = payload;
      slot.state = 'ready';
      slot.touchedMs = this.now();
      // The timer first: whatever happens while listening, the preparation is released in the end.
      const timeoutMs = this.claimTimeoutMs(slot);
      this.armTimer(slot, payload, timeoutMs);
      const stillReady = () => slot.state === 'ready' && slot.payload === payload;
      let listenError: Error | null = null;
      for (const a of slot.allocations) {
        if (!stillReady()) break;
        const endpoint = (a.endpoint ??= new HandoffEndpoint(join(a.socketDir, HANDOFF_SOCKET_NAME), this.options.transport, { claim: (c) => this.claim(slot, c) }, this.logger, this.options.limits));
        try {
          await endpoint.listen();
        } catch (err) {
          if (a.endpoint === endpoint) a.endpoint = null;
          listenError = err as Error;
          break;
        }
        if (!stillReady()) {
          // Claimed (or released) while this one was being opened: it must not stay open.
          await endpoint.close();
          if (a.endpoint === endpoint) a.endpoint = null;
          break;
        }
      }
      if (listenError) {
        const reason = `cannot serve the handoff socket: ${listenError.message}`;
        if (stillReady()) {
          await this.releasePayload(slot, reason);
          slot.state = 'failed';
          slot.reason = reason;
        }
        for (const a of slot.allocations) {
          await a.endpoint?.close();
          a.endpoint = null;
        }
        throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `Serving the handoff of group(s) ${ids.join(', ')} of ${resource.name} failed: ${reason}`, { cause: listenError });
      }
      this.logger.info({ resource: resource.name, groups: ids, sockets: slot.allocations.length, claimTimeoutMs: timeoutMs }, 'Prepared a handoff; waiting for the claim');
    });
  }

  private armTimer(slot: Slot, payload: HandoffPayload, timeoutMs: number): void {
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = setTimeout(() => {
      slot.timer = null;
      void this.serial(slot, async () => {
        // A claim in flight decides first: if its send fails the preparation is ready again and goes now.
        if (slot.claiming) await slot.claiming;
        if (slot.state !== 'ready' || slot.payload !== payload) return;
        await this.releasePayload(slot, `nobody claimed it within the claim timeout of ${timeoutMs / 1000} s`);
      }).catch((err: unknown) => this.logger.error({ key: slot.key, err: (err as Error).message }, 'Releasing an unclaimed handoff failed'));
    }, timeoutMs);
    slot.timer.unref();
  }

  private async claim(slot: Slot, connection: HandoffConnection): Promise<void> {
    switch (slot.state) {
      case 'claimed':
      case 'claiming':
        await sendError(connection, 'PVDP_HANDOFF_ALREADY_CLAIMED', `The preparation of group(s) ${slot.groups.join(', ')} was already claimed; restart the container to prepare again`);
        return;
      case 'released':
        await sendError(connection, 'PVDP_HANDOFF_RELEASED', `The preparation of group(s) ${slot.groups.join(', ')} was released: ${slot.reason}; restart the container to prepare again`);
        return;
      case 'failed':
        await sendError(connection, 'PVDP_HANDOFF_RELEASED', `The preparation of group(s) ${slot.groups.join(', ')} failed: ${slot.reason}`);
        return;
      case 'allocated':
      case 'preparing':
        await sendError(connection, 'PVDP_HANDOFF_NOT_READY', `The preparation of group(s) ${slot.groups.join(', ')} is not ready yet; retry shortly`);
        return;
      case 'ready':
        break;
    }
    const payload = slot.payload!;
    slot.state = 'claiming';
    let done!: () => void;
    slot.claiming = new Promise<void>((resolve) => (done = resolve));
    try {
      const response = encodeResponse({ protocol: HANDOFF_PROTOCOL_VERSION, result: 'claimed', description: payload.description });
      try {
        await connection.send(response, payload.fds);
      } catch (err) {
        if ((err as { fdsDelivered?: unknown }).fdsDelivered !== true) {
          // Nothing went out: the preparation stays available, under its claim timeout.
          slot.state = 'ready';
          if (!slot.timer) this.armTimer(slot, payload, this.claimTimeoutMs(slot));
          this.logger.warn({ key: slot.key, err: (err as Error).message }, 'Sending a claimed handoff failed; it stays available');
          return;
        }
        // The fds went out: the claimer holds them, so this is the claim, answered or not.
        this.logger.warn({ key: slot.key, err: (err as Error).message }, 'The claimer got the fds but not the whole answer; the claim stands');
      }
      slot.state = 'claimed';
      slot.claims += 1;
      slot.payload = null;
      if (slot.timer) clearTimeout(slot.timer);
      slot.timer = null;
      // Stop accepting first, so a late client finds no socket rather than a refusal.
      for (const a of slot.allocations) {
        await a.endpoint?.close();
        a.endpoint = null;
      }
      try {
        await payload.handedOver();
      } catch (err) {
        this.logger.error({ key: slot.key, err: (err as Error).message }, 'Closing the plugin\'s copies after a claim failed');
      }
      this.logger.info({ resource: slot.resourceName, groups: slot.groups }, 'Handoff claimed; the plugin holds nothing of it now');
    } finally {
      slot.claiming = null;
      done();
    }
  }

  /** Releases an unclaimed preparation; the sockets stay and answer PVDP_HANDOFF_RELEASED. Call inside serial(). */
  private async releasePayload(slot: Slot, reason: string): Promise<void> {
    if (slot.claiming) await slot.claiming;
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = null;
    const payload = slot.payload;
    slot.payload = null;
    if (slot.state === 'ready' || slot.state === 'preparing') {
      slot.state = 'released';
      slot.reason = reason;
    }
    if (!payload) return;
    this.logger.info({ resource: slot.resourceName, groups: slot.groups, reason }, 'Released an unclaimed handoff');
    try {
      await payload.release();
    } catch (err) {
      this.logger.error({ key: slot.key, err: (err as Error).message }, 'Releasing an unclaimed handoff failed');
    }
  }

  private async removeAllocation(a: AllocationRecord): Promise<void> {
    await a.endpoint?.close();
    a.endpoint = null;
    await rm(a.dir, { recursive: true, force: true });
  }

  /** Whether the listing shows a container holding exactly this slot's group set. */
  private heldBy(slot: Slot, inUse: DevicesInUse): boolean {
    if (inUse.groupSets) return inUse.groupSets.get(slot.resourceName)?.has(slot.groups.join(',')) ?? false;
    const held = inUse.byResource.get(slot.resourceName);
    return slot.groups.every((g) => held?.has(String(g)));
  }

  /**
   * Whether a PodResources listing may remove this slot: not while a
   * preparation waits for its claim or is being made or claimed (its claim
   * timeout releases it), and not within max(grace, claim timeout) of its last
   * Allocate or PreStart. The v1 List leaves ordinary init containers out, so
   * an allocation made for one looks free; this keeps it for its claim window.
   */
  private removable(slot: Slot, takenAtMs: number): boolean {
    if (slot.state === 'ready' || slot.state === 'preparing' || slot.state === 'claiming' || slot.claiming) return false;
    const window = Math.max(this.options.podResourcesGraceMs ?? 30_000, this.claimTimeoutMs(slot));
    return slot.touchedMs <= takenAtMs - window;
  }

  /**
   * Forgets every group set no container holds any more (from a PodResources
   * listing) and removes its directories; a group set is held only when one
   * container holds exactly it. Each slot on its own: a failure is logged and
   * the others go on.
   */
  async reconcile(inUse: DevicesInUse): Promise<void> {
    for (const slot of [...this.slots.values()]) {
      if (!this.removable(slot, inUse.takenAtMs) || this.heldBy(slot, inUse)) continue;
      try {
        await this.serial(slot, async () => {
          if (this.slots.get(slot.key) !== slot || !this.removable(slot, inUse.takenAtMs)) return;
          await this.removeSlot(slot, 'no pod holds the groups any more (PodResources)');
          this.logger.info({ resource: slot.resourceName, groups: slot.groups }, 'Removed the handoff directories of groups no pod holds');
        });
      } catch (err) {
        this.logger.error({ key: slot.key, err: (err as Error).message }, 'Removing the handoff directories of a free group set failed; the other group sets go on');
      }
    }
  }

  /** Releases an unclaimed preparation, removes the directories and forgets the slot. Call inside serial(). */
  private async removeSlot(slot: Slot, reason: string): Promise<void> {
    await this.releasePayload(slot, reason);
    const allocations = slot.allocations;
    slot.allocations = [];
    const failures: string[] = [];
    // The slot stays visible (status, idle) until its directories are gone.
    try {
      for (const a of allocations) await this.removeAllocation(a).catch((err: unknown) => failures.push(`${a.dir}: ${(err as Error).message}`));
    } finally {
      this.unregister(slot);
    }
    if (failures.length > 0) throw new Error(`removing ${failures.join('; ')}`);
  }

  /**
   * The owner of a group set says it is done with it (a DRA claim was
   * unprepared): an unclaimed preparation is released and the directories go.
   * A claimed one belongs to its pod; the kernel releases it when the pod's
   * fds close. An unknown group set is fine (already forgotten, or never here).
   */
  async forget(resourceName: string, groups: readonly number[], reason: string): Promise<void> {
    const slot = this.slots.get(groupSetKey(resourceName, groups));
    if (!slot) return;
    await this.serial(slot, async () => {
      if (this.slots.get(slot.key) !== slot) return;
      await this.removeSlot(slot, reason);
      this.logger.info({ resource: slot.resourceName, groups: slot.groups, reason }, 'Removed a handoff and its directories');
    });
  }

  /** Shutdown: release every unclaimed preparation and close every socket; directories stay for the next run. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const slot of this.slots.values()) {
      await this.serial(slot, async () => {
        await this.releasePayload(slot, 'the plugin shut down');
        for (const a of slot.allocations) {
          await a.endpoint?.close();
          await a.endpoint?.drain();
          a.endpoint = null;
        }
      });
    }
  }

  status(): SlotStatus[] {
    return [...this.slots.values()].map((s) => ({
      key: s.key,
      resource: s.resourceName,
      groups: s.groups,
      state: s.state,
      reason: s.reason,
      dirs: s.allocations.map((a) => a.dir),
      socketDirs: s.allocations.map((a) => a.socketDir),
      sockets: s.allocations.filter((a) => a.endpoint?.listening).map((a) => a.endpoint!.socketPath),
      claims: s.claims,
    }));
  }

  /** Waits until every slot's queued work is done (tests). */
  async idle(): Promise<void> {
    await Promise.all([...this.slots.values()].map((s) => s.queue));
  }
}
