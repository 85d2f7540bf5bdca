// The handoff preparation mode's bookkeeping, keyed by group set: PreStartContainer
// carries only device IDs, and a group belongs to one container at a time.
//
// - Allocate makes a per-allocation directory (0700, with allocation.json) under
//   the host directory and mounts it into that container only.
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
import { mkdir, readdir, readFile, rm, chmod, writeFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { RequestError } from '../errors.js';
import type { IommuGroup } from '../topology/types.js';
import type { ResourceConfig } from '../config/schema.js';
import type { ContainerAllocateResponse } from '../generated/v1beta1/ContainerAllocateResponse.js';
import { resourceEnvSuffix } from '../kubelet/allocation.js';
import { HANDOFF_PROTOCOL_VERSION, HANDOFF_SOCKET_NAME, encodeResponse, type HandoffDescription } from './protocol.js';
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
  dir: string;
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
  dirs: string[];
  sockets: string[];
  claims: number;
}

const ALLOCATION_DIR = /^alloc-[0-9a-f]{16}$/;
const ALLOCATION_FILE = 'allocation.json';

export function groupSetKey(resource: string, groups: readonly number[]): string {
  return `${resource}:${[...groups].sort((a, b) => a - b).join(',')}`;
}

/** The container path of a resource's handoff directory: `<containerDir>/<resource with / as _>`. */
export function containerDirFor(containerDir: string, resource: string): string {
  return join(containerDir, resource.replace(/[^A-Za-z0-9._-]/g, '_'));
}

export function claimTimeoutMsOf(resource: ResourceConfig | null, fallbackMs: number): number {
  const seconds = resource?.preparation.handoff?.claimTimeoutSeconds;
  return seconds !== undefined ? seconds * 1000 : fallbackMs;
}

export class HandoffManager {
  private readonly slots = new Map<string, Slot>();
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
   * shows their groups free. Unreadable ones are removed.
   */
  async start(): Promise<void> {
    await mkdir(this.options.hostDir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(this.options.hostDir)) {
      if (!ALLOCATION_DIR.test(name)) continue;
      const dir = join(this.options.hostDir, name);
      await unlink(join(dir, HANDOFF_SOCKET_NAME)).catch(() => undefined);
      let record: { resource?: unknown; groups?: unknown; createdMs?: unknown };
      try {
        record = JSON.parse(await readFile(join(dir, ALLOCATION_FILE), 'utf8')) as typeof record;
      } catch {
        record = {};
      }
      const groups = record.groups;
      if (typeof record.resource !== 'string' || !Array.isArray(groups) || groups.length === 0 || !groups.every((g) => Number.isInteger(g) && g >= 0)) {
        this.logger.warn({ dir }, 'Removed a handoff directory of a previous run without a readable allocation record');
        await rm(dir, { recursive: true, force: true });
        continue;
      }
      const slot = this.slotFor(record.resource, groups as number[], null);
      slot.allocations.push({ id: name, dir, createdMs: typeof record.createdMs === 'number' ? record.createdMs : 0, endpoint: null });
      slot.allocations.sort((a, b) => a.createdMs - b.createdMs);
      this.logger.info({ dir, resource: record.resource, groups }, 'Adopted a handoff directory of a previous run');
    }
  }

  private slotFor(resourceName: string, groups: number[], resource: ResourceConfig | null): Slot {
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
      this.slots.set(key, slot);
    }
    if (resource) slot.resource = resource;
    return slot;
  }

  private serial<T>(slot: Slot, run: () => Promise<T>): Promise<T> {
    const result = slot.queue.then(run);
    slot.queue = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /**
   * Allocate for one container of a handoff resource: a fresh directory, its
   * mount and the env naming the socket. Throws RequestError when the host
   * directory is unusable.
   */
  async allocate(resource: ResourceConfig, groups: readonly IommuGroup[]): Promise<Pick<ContainerAllocateResponse, 'envs' | 'mounts'>> {
    const ids = groups.map((g) => g.id);
    const id = `alloc-${randomBytes(8).toString('hex')}`;
    const dir = join(this.options.hostDir, id);
    const socket = join(dir, HANDOFF_SOCKET_NAME);
    if (Buffer.byteLength(socket) > 107) {
      throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `The handoff socket path ${socket} is longer than a unix socket allows (107 bytes): choose a shorter handoff host directory`);
    }
    try {
      await mkdir(this.options.hostDir, { recursive: true, mode: 0o700 });
      await mkdir(dir, { mode: 0o700 });
      await chmod(dir, 0o700);
      await writeFile(join(dir, ALLOCATION_FILE), `${JSON.stringify({ version: 1, resource: resource.name, groups: ids, createdMs: this.now() })}\n`, { mode: 0o600 });
    } catch (err) {
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `Cannot create the handoff directory ${dir}: ${(err as Error).message}; check that the handoff host directory is a writable host path`, { cause: err });
    }
    const slot = this.slotFor(resource.name, ids, resource);
    await this.serial(slot, async () => {
      if (slot.state === 'ready') {
        // Every container of a pod is allocated before any starts: an unclaimed preparation now belongs to a pod that went.
        await this.releasePayload(slot, 'the groups were allocated again');
      }
      slot.allocations.push({ id, dir, createdMs: this.now(), endpoint: null });
      slot.touchedMs = this.now();
      const max = this.options.maxAllocationsPerGroupSet ?? 8;
      while (slot.allocations.length > max) {
        const old = slot.allocations.shift()!;
        await this.removeAllocation(old);
      }
    });
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
    return { envs, mounts: [{ container_path: inContainer, host_path: dir, read_only: false }] };
  }

  /** PreStartContainer: prepare and serve. Throws (failing the container start) when preparation fails. */
  async preStart(resource: ResourceConfig, groups: IommuGroup[]): Promise<void> {
    if (this.stopped) throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', 'The plugin is shutting down');
    const ids = groups.map((g) => g.id);
    const slot = this.slots.get(groupSetKey(resource.name, ids));
    if (!slot || slot.allocations.length === 0) {
      throw new RequestError(
        'PVDP_ERR_PREPARATION',
        'precondition',
        `No handoff directory was allocated for IOMMU group(s) ${ids.join(', ')} of ${resource.name}: this plugin did not see the Allocate (delete the pod so it is allocated again)`,
      );
    }
    slot.resource = resource;
    await this.serial(slot, async () => {
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
      for (const a of slot.allocations) {
        a.endpoint ??= new HandoffEndpoint(join(a.dir, HANDOFF_SOCKET_NAME), this.options.transport, { claim: (c) => this.claim(slot, c) }, this.logger, this.options.limits);
        await a.endpoint.listen();
      }
      const timeoutMs = this.options.claimTimeoutMs ?? claimTimeoutMsOf(resource, this.options.defaultClaimTimeoutMs ?? 120_000);
      slot.timer = setTimeout(() => {
        slot.timer = null;
        void this.serial(slot, async () => {
          if (slot.state !== 'ready' || slot.payload !== payload) return;
          await this.releasePayload(slot, `nobody claimed it within the claim timeout of ${timeoutMs / 1000} s`);
        }).catch((err: unknown) => this.logger.error({ key: slot.key, err: (err as Error).message }, 'Releasing an unclaimed handoff failed'));
      }, timeoutMs);
      slot.timer.unref();
      this.logger.info({ resource: resource.name, groups: ids, sockets: slot.allocations.length, claimTimeoutMs: timeoutMs }, 'Prepared a handoff; waiting for the claim');
    });
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
        slot.state = 'ready';
        this.logger.warn({ key: slot.key, err: (err as Error).message }, 'Sending a claimed handoff failed; it stays available');
        return;
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

  /** Releases and forgets every group set no pod holds any more (from a PodResources listing). */
  async reconcile(inUse: DevicesInUse): Promise<void> {
    const grace = this.options.podResourcesGraceMs ?? 30_000;
    for (const slot of [...this.slots.values()]) {
      if (slot.touchedMs > inUse.takenAtMs - grace) continue;
      const held = inUse.byResource.get(slot.resourceName);
      if (slot.groups.some((g) => held?.has(String(g)))) continue;
      await this.serial(slot, async () => {
        if (this.slots.get(slot.key) !== slot || slot.touchedMs > inUse.takenAtMs - grace) return;
        await this.releasePayload(slot, 'no pod holds the groups any more (PodResources)');
        for (const a of slot.allocations) await this.removeAllocation(a);
        slot.allocations = [];
        this.slots.delete(slot.key);
        this.logger.info({ resource: slot.resourceName, groups: slot.groups }, 'Removed the handoff directories of groups no pod holds');
      });
    }
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
      sockets: s.allocations.filter((a) => a.endpoint?.listening).map((a) => a.endpoint!.socketPath),
      claims: s.claims,
    }));
  }

  /** Waits until every slot's queued work is done (tests). */
  async idle(): Promise<void> {
    await Promise.all([...this.slots.values()].map((s) => s.queue));
  }
}
