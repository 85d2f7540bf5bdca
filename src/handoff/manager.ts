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
//   at shutdown (directories stay, so a restarted plugin adopts them).//
// The parts: the directories and their records (allocation-record.ts), the slots and their
// lifecycle (slots.ts) and the claim's serving (claims.ts); this file answers the kubelet's calls.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, chmod, writeFile, unlink, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { RequestError } from '../errors.js';
import type { IommuGroup } from '../topology/types.js';
import type { ResourceConfig } from '../config/schema.js';
import type { AllocationExtra } from '../prepare/types.js';
import { resourceEnvSuffix } from '../inventory/advertised.js';
import { ALLOCATION_DIR, claimTimeoutMsOf, containerDirFor, groupSetKey, readAllocationRecord } from './allocation-record.js';
import { armClaimTimer, listenForClaim, type ClaimServing } from './claims.js';
import type { HandoffPayload, HandoffSource } from './payload.js';
import { HANDOFF_PROTOCOL_VERSION, HANDOFF_RECORD_NAME, HANDOFF_SOCKET_DIR, HANDOFF_SOCKET_NAME } from './protocol.js';
import type { EndpointLimits } from './server.js';
import { heldBy, releasePayload, removeAllocation, serial, SlotTable, type AllocationRecord, type DevicesInUse, type Slot, type SlotStatus } from './slots.js';
import type { HandoffTransport } from './transport.js';

export { claimTimeoutMsOf, containerDirFor, groupSetKey, readAllocationRecord, type AllocationFileRecord } from './allocation-record.js';
export type { HandoffPayload, HandoffSource } from './payload.js';
export type { DevicesInUse, SlotState, SlotStatus } from './slots.js';

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

export class HandoffManager {
  private readonly slots: SlotTable;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly serving: ClaimServing;
  private stopped = false;

  constructor(private readonly options: HandoffManagerOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'handoff' });
    this.now = options.now ?? Date.now;
    this.slots = new SlotTable(this.now);
    this.serving = {
      logger: this.logger,
      transport: options.transport,
      limits: options.limits,
      claimTimeoutMs: (slot) => this.claimTimeoutMs(slot),
    };
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
      const slot = this.slots.slotFor(record.resource, record.groups, null);
      slot.allocations.push({ id: name, dir, socketDir, createdMs: record.createdMs, endpoint: null });
      slot.allocations.sort((a, b) => a.createdMs - b.createdMs);
      this.logger.info({ dir, resource: record.resource, groups: record.groups }, 'Adopted a handoff directory of a previous run');
    }
  }

  /**
   * The groups now belong to a new container (Allocate) or one is starting with
   * them (PreStart): an unclaimed preparation of another group set that shares
   * any of them holds the group fds open and would make the new preparation
   * fail, so it is released. Claimed ones are the kernel's business.
   */
  private async releaseOverlapping(slot: Slot, why: string): Promise<void> {
    for (const other of this.slots.overlapping(slot)) {
      await this.serial(other, async () => {
        if (other.claiming) await other.claiming;
        if (other.state === 'ready') await releasePayload(other, why, this.logger);
      });
    }
  }

  private serial<T>(slot: Slot, run: () => Promise<T>): Promise<T> {
    return serial(slot, run);
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
      const slot = this.slots.slotFor(resource.name, ids, resource);
      await this.releaseOverlapping(slot, `group(s) ${ids.join(', ')} were allocated to another container`);
      const placed = await this.serial(slot, async () => {
        if (this.slots.get(key) !== slot) {
          // reconcile() forgot this slot while we waited: bring it back, or join the one that replaced it.
          if (this.slots.has(key)) return false;
          this.slots.register(slot);
        }
        if (slot.claiming) await slot.claiming;
        if (slot.state === 'ready') {
          // Every container of a pod is allocated before any starts: an unclaimed preparation now belongs to a pod that went.
          await releasePayload(slot, 'the groups were allocated again', this.logger);
        }
        slot.resource = resource;
        slot.allocations.push(allocation);
        slot.touchedMs = this.now();
        const max = this.options.maxAllocationsPerGroupSet ?? 8;
        while (slot.allocations.length > max) {
          const old = slot.allocations.shift()!;
          await removeAllocation(old);
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
      if (slot.state === 'ready') await releasePayload(slot, 'a new PreStartContainer for the same groups', this.logger);
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
      armClaimTimer(this.serving, slot, payload, timeoutMs);
      const listenError = await listenForClaim(this.serving, slot, payload);
      if (listenError) {
        const reason = `cannot serve the handoff socket: ${listenError.message}`;
        if (slot.state === 'ready' && slot.payload === payload) {
          await releasePayload(slot, reason, this.logger);
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
    for (const slot of this.slots.all()) {
      if (!this.removable(slot, inUse.takenAtMs) || heldBy(slot, inUse)) continue;
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

  status(): SlotStatus[] {
    return this.slots.status();
  }

  /** Waits until every slot's queued work is done (tests). */
  async idle(): Promise<void> {
    await this.slots.idle();
  }

  /** Releases an unclaimed preparation, removes the directories and forgets the slot. Call inside serial(). */
  private async removeSlot(slot: Slot, reason: string): Promise<void> {
    await releasePayload(slot, reason, this.logger);
    const allocations = slot.allocations;
    slot.allocations = [];
    const failures: string[] = [];
    // The slot stays visible (status, idle) until its directories are gone.
    try {
      for (const a of allocations) await removeAllocation(a).catch((err: unknown) => failures.push(`${a.dir}: ${(err as Error).message}`));
    } finally {
      this.slots.unregister(slot);
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
    for (const slot of this.slots.all()) {
      await this.serial(slot, async () => {
        await releasePayload(slot, 'the plugin shut down', this.logger);
        for (const a of slot.allocations) {
          await a.endpoint?.close();
          await a.endpoint?.drain();
          a.endpoint = null;
        }
      });
    }
  }

}
