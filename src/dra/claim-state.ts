// The one owner of what the DRA driver has prepared. Prepare and unprepare of
// a claim run one at a time and are idempotent: the kubelet retries both until
// they succeed, and calls them again after its own restarts. Every change is
// in the checkpoint before the kubelet gets an answer, so a restarted driver
// can unprepare what an earlier process prepared and undo what it left half done.
// Moving the groups of managed resources between drivers is claim-rebinding.ts.
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ResourceConfig } from '../config/schema.js';
import type { IommuGroup } from '../topology/types.js';
import type { AdvertisedDevice } from '../inventory/advertised.js';
import { VFIO_CONTAINER_PATH, groupEnvironment, groupNodePath } from '../inventory/advertised.js';
import type { AllocationExtra } from '../prepare/types.js';
import { buildClaimSpec, type CdiMount, type ClaimSpec, type ClaimSpecDirectory } from '../cdi/claim-specs.js';
import { claimAllocation, ClaimRefusal, type ClaimRef } from './claim-allocation.js';
import { ClaimConfigError, effectivePreparation } from './claim-config.js';
import { Checkpoint, CheckpointError, type CheckpointClaim, type GroupRebinding, type PreparedDevice, type PreparedGroupSet } from './checkpoint.js';
import { ClaimRebinding, type ManagedBinding, type RebindingListener, type RebindingState } from './claim-rebinding.js';

/** What prepare does to groups: the same preparer the device plugin runs in PreStartContainer. */
export interface ClaimPreparation {
  /** Prepares the groups of one resource (its preparation already the claim's); handoff returns its mount and env. */
  prepare(resource: ResourceConfig, groups: IommuGroup[]): Promise<AllocationExtra | null>;
  /** Releases what a handoff preparation kept for these groups and removes its directories; unknown sets are fine. */
  release(resourceName: string, groups: readonly number[]): Promise<void>;
}

/** Reads a claim from the API server; throws ClaimRefusal when it does not exist, anything else when it could not be read. */
export type ClaimSource = (ref: ClaimRef) => Promise<unknown>;

/** A device of this node's pool by name, with the resource it belongs to. */
export type DeviceLookup = (deviceName: string) => { resource: ResourceConfig; device: AdvertisedDevice } | undefined;

export interface ClaimStateOptions {
  driver: string;
  /** This node's pool (the node name). */
  pool: string;
  checkpoint: Checkpoint;
  cdi: ClaimSpecDirectory;
  claims: ClaimSource;
  lookup: DeviceLookup;
  preparation: ClaimPreparation;
  /** Managed binding; without it a claim for a managed resource is refused. */
  binding?: ManagedBinding;
  rebinding?: RebindingListener;
  logger?: Logger;
  now?: () => number;
}

export type PrepareResult = { devices: PreparedDevice[] } | { error: string };

function describe(ref: ClaimRef): string {
  return `ResourceClaim ${ref.namespace}/${ref.name} (uid ${ref.uid})`;
}

function mountOf(extra: NonNullable<AllocationExtra['mounts']>[number]): CdiMount {
  return {
    hostPath: extra.host_path,
    containerPath: extra.container_path,
    type: 'bind',
    options: [extra.read_only ? 'ro' : 'rw', 'nosuid', 'nodev', 'bind'],
  };
}

interface PlannedSet {
  resource: ResourceConfig;
  groups: IommuGroup[];
}

export class ClaimState {
  private readonly logger: Logger;
  private readonly entries = new Map<string, CheckpointClaim>();
  /** Per claim uid: the tail of its prepare/unprepare queue. */
  private readonly queues = new Map<string, Promise<unknown>>();
  private persisting: Promise<void> = Promise.resolve();
  private started = false;
  private readonly rebinder: ClaimRebinding;

  constructor(private readonly options: ClaimStateOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ room: 'dra' });
    this.rebinder = new ClaimRebinding(options.binding, options.rebinding, this.logger);
  }

  get cdiKind(): string {
    return `${this.options.driver}/vfio`;
  }

  /**
   * Loads the checkpoint, undoes prepares a previous process did not finish,
   * and removes our CDI spec files that no prepared claim owns.
   */
  async start(): Promise<void> {
    let data;
    try {
      data = await this.options.checkpoint.read();
    } catch (err) {
      if (!(err instanceof CheckpointError)) throw err;
      const aside = await this.options.checkpoint.setAside((this.options.now ?? Date.now)()).catch(() => null);
      this.logger.error({ err: err.message, movedTo: aside }, 'The checkpoint is damaged; starting without it (claims prepared before cannot be unprepared by this driver)');
      data = { version: 1 as const, driver: this.options.driver, claims: {} };
    }
    for (const [uid, claim] of Object.entries(data.claims)) this.entries.set(uid, claim);
    for (const [uid, claim] of [...this.entries]) {
      if (claim.state === 'prepared') continue;
      this.logger.warn(
        { claim: `${claim.namespace}/${claim.name}`, uid },
        claim.state === 'preparing' ? 'Undoing a prepare that an earlier run did not finish' : 'Finishing an unprepare that an earlier run did not finish',
      );
      try {
        await this.undo(uid, claim);
      } catch (err) {
        // The kubelet's unprepare (or a new prepare of the claim) tries again; the node keeps being served.
        this.logger.error({ uid, err: (err as Error).message }, 'Cannot finish undoing a claim; it stays in the checkpoint');
      }
    }
    const owned = new Set([...this.entries.values()].map((c) => c.cdiSpecFile).filter((f): f is string => f !== null));
    for (const file of await this.options.cdi.list()) {
      if (owned.has(file)) continue;
      await this.options.cdi.remove(file).catch((err: unknown) => this.logger.error({ file, err: (err as Error).message }, 'Cannot remove a CDI spec no claim owns'));
      this.logger.info({ file }, 'Removed a CDI spec no prepared claim owns');
    }
    await this.persist();
    this.started = true;
    this.logger.info({ prepared: this.entries.size, checkpoint: this.options.checkpoint.path }, 'Prepared claims restored from the checkpoint');
  }

  /** Claims prepared now, by uid (tests, status). */
  prepared(): Map<string, CheckpointClaim> {
    return new Map([...this.entries].filter(([, c]) => c.state === 'prepared'));
  }

  /** Groups moving between drivers, and groups whose last move failed. */
  rebinding(): RebindingState {
    return this.rebinder.state();
  }

  /** Groups held by prepared claims (a device in use is not offered as free in status). */
  preparedGroups(): Set<number> {
    return new Set([...this.entries.values()].flatMap((c) => c.devices.map((d) => d.group)));
  }

  prepare(ref: ClaimRef): Promise<PrepareResult> {
    return this.queued(ref.uid, async () => {
      try {
        return { devices: await this.prepareNow(ref) };
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        const error = `Cannot prepare ${describe(ref)}: ${reason}`;
        this.logger.warn({ claim: `${ref.namespace}/${ref.name}`, uid: ref.uid, err: reason }, 'Refused to prepare a claim');
        return { error };
      }
    });
  }

  unprepare(ref: ClaimRef): Promise<{ error?: string }> {
    return this.queued(ref.uid, async () => {
      const entry = this.entries.get(ref.uid);
      // Unknown: never prepared here, or already unprepared. Both are success.
      if (!entry) return {};
      try {
        await this.undo(ref.uid, entry);
        await this.persist();
        this.logger.info({ claim: `${ref.namespace}/${ref.name}`, uid: ref.uid }, 'Unprepared a claim');
        return {};
      } catch (err) {
        const reason = (err as Error).message;
        this.logger.warn({ claim: `${ref.namespace}/${ref.name}`, uid: ref.uid, err: reason }, 'Unprepare failed; the kubelet will retry');
        return { error: `Cannot unprepare ${describe(ref)}: ${reason}` };
      }
    });
  }

  /** Waits for every queued prepare and unprepare (shutdown, tests). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.queues.values()]);
    await this.persisting;
  }

  private queued<T>(uid: string, run: () => Promise<T>): Promise<T> {
    const before = this.queues.get(uid) ?? Promise.resolve();
    const result = before.then(
      () => run(),
      () => run(),
    );
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.queues.set(uid, tail);
    void tail.then(() => {
      if (this.queues.get(uid) === tail) this.queues.delete(uid);
    });
    return result;
  }

  private async prepareNow(ref: ClaimRef): Promise<PreparedDevice[]> {
    if (!this.started) throw new Error('the driver is still starting; the kubelet will retry');
    const existing = this.entries.get(ref.uid);
    if (existing?.state === 'prepared') {
      // A repeated prepare: the same answer, nothing prepared twice. The spec comes back if someone removed it.
      if (existing.cdiSpecFile && existing.cdiSpec && !(await this.options.cdi.exists(existing.cdiSpecFile))) {
        await this.options.cdi.write(ref.uid, existing.cdiSpec as ClaimSpec);
        this.logger.warn({ uid: ref.uid, file: existing.cdiSpecFile }, 'The CDI spec of a prepared claim was missing; wrote it again');
      }
      return existing.devices;
    }
    if (existing) {
      // Released before, but its groups are not all back on their host drivers: finish that first.
      await this.undo(ref.uid, existing);
      await this.persist();
    }
    const claim = await this.options.claims(ref);
    const allocation = claimAllocation(claim, ref, this.options.driver);
    const seen = new Set<string>();
    const planned = new Map<string, PlannedSet>();
    const perDevice: { request: string; deviceName: string; group: IommuGroup; setKey: string }[] = [];
    for (const result of allocation.devices) {
      if (result.pool !== this.options.pool) {
        throw new ClaimRefusal(`device ${result.device} of request "${result.request}" is in pool ${result.pool}, not in this node's pool ${this.options.pool}`);
      }
      const found = this.options.lookup(result.device);
      if (!found) throw new ClaimRefusal(`device ${result.device} of request "${result.request}" is not a device of this node's pool ${this.options.pool} now`);
      const { device, resource } = found;
      if (!device.healthy) {
        throw new ClaimRefusal(`device ${result.device} (IOMMU group ${device.group.id}) of request "${result.request}" is unhealthy: ${device.reason ?? 'unknown reason'}`);
      }
      if (seen.has(result.device)) {
        // A group opens once: one device twice in a claim cannot be honoured.
        throw new ClaimRefusal(`device ${result.device} is allocated more than once in the claim`);
      }
      seen.add(result.device);
      let preparation;
      try {
        preparation = effectivePreparation(resource.preparation, allocation.config, result.request);
      } catch (err) {
        if (err instanceof ClaimConfigError) throw new ClaimRefusal(err.message);
        throw err;
      }
      const setKey = `${resource.name}\u0000${JSON.stringify(preparation)}`;
      let set = planned.get(setKey);
      if (!set) planned.set(setKey, (set = { resource: { ...resource, preparation }, groups: [] }));
      set.groups.push(device.group);
      perDevice.push({ request: result.request, deviceName: result.device, group: device.group, setKey });
    }
    const handoffResources = [...planned.values()].filter((s) => s.resource.preparation.mode === 'handoff').map((s) => s.resource.name);
    const twice = handoffResources.find((name, i) => handoffResources.indexOf(name) !== i);
    if (twice) {
      throw new ClaimRefusal(`requests for ${twice} ask for different handoff configurations; one claim gets one handoff per resource: give them the same configuration`);
    }
    const groupSets: PreparedGroupSet[] = [...planned.values()].map((s) => ({
      resource: s.resource.name,
      groups: s.groups.map((g) => g.id),
      mode: s.resource.preparation.mode,
    }));
    // Before this claim's own entry exists: every entry is another claim's.
    const bindings = await this.rebinder.plan(planned.values(), perDevice, () => this.entries.values());
    // Before anything changes on the node (the original drivers too): a crash from here on is undone at the next start.
    const entry: CheckpointClaim = {
      namespace: ref.namespace,
      name: ref.name,
      state: 'preparing',
      groupSets,
      ...(bindings.length > 0 ? { bindings } : {}),
      devices: [],
      cdiSpecFile: null,
    };
    this.entries.set(ref.uid, entry);
    await this.persistOrForget(ref.uid);
    const done: PlannedSet[] = [];
    const attempted: GroupRebinding[] = [];
    let written: string | null = null;
    try {
      for (const rebinding of bindings) {
        attempted.push(rebinding);
        await this.rebinder.move(rebinding, 'taking');
      }
      const extras: AllocationExtra[] = [];
      for (const set of planned.values()) {
        const extra = await this.options.preparation.prepare(set.resource, set.groups);
        done.push(set);
        if (extra) extras.push(extra);
      }
      const spec = this.specFor(ref, planned, perDevice, extras);
      written = await this.options.cdi.write(ref.uid, spec);
      const devices: PreparedDevice[] = perDevice.map((d) => ({
        requestNames: d.request.split(','),
        poolName: this.options.pool,
        deviceName: d.deviceName,
        cdiDeviceIds: [`${this.cdiKind}=${this.cdiName(ref, d.deviceName)}`],
        group: d.group.id,
      }));
      this.entries.set(ref.uid, { ...entry, state: 'prepared', devices, cdiSpecFile: written, cdiSpec: spec });
      await this.persist();
      this.logger.info(
        { claim: `${ref.namespace}/${ref.name}`, uid: ref.uid, devices: devices.map((d) => d.deviceName), groupSets },
        'Prepared a claim',
      );
      return devices;
    } catch (err) {
      for (const set of done.reverse()) {
        if (set.resource.preparation.mode !== 'handoff') continue;
        await this.options.preparation
          .release(set.resource.name, set.groups.map((g) => g.id))
          .catch((e: unknown) => this.logger.error({ uid: ref.uid, err: (e as Error).message }, 'Rolling back a handoff preparation failed'));
      }
      const file = written ?? this.options.cdi.fileName(ref.uid);
      await this.options.cdi.remove(file).catch(() => undefined);
      const stranded = await this.rebinder.giveBackAll(attempted.reverse());
      if (stranded.length > 0) {
        // Functions left on the wrong driver: kept, so an unprepare, a retry or a restart gives them back.
        this.entries.set(ref.uid, { ...entry, state: 'unpreparing', bindings: stranded.map((f) => f.rebinding) });
      } else {
        this.entries.delete(ref.uid);
      }
      await this.persist().catch((e: unknown) => this.logger.error({ err: (e as Error).message }, 'Cannot write the checkpoint after a rollback'));
      if (stranded.length > 0) {
        throw new Error(`${(err as Error).message}; rolling back failed: ${stranded.map((f) => f.message).join('; ')}`, { cause: err });
      }
      throw err;
    }
  }

  private cdiName(ref: ClaimRef, deviceName: string): string {
    return `${ref.uid}-${deviceName}`;
  }

  private specFor(
    ref: ClaimRef,
    planned: Map<string, PlannedSet>,
    perDevice: { deviceName: string; group: IommuGroup }[],
    extras: AllocationExtra[],
  ): ClaimSpec {
    // The variables name every function of the claim's groups, per resource, as in the device plugin mode.
    const byResource = new Map<string, IommuGroup[]>();
    for (const set of planned.values()) {
      const list = byResource.get(set.resource.name) ?? [];
      list.push(...set.groups);
      byResource.set(set.resource.name, list);
    }
    const env: Record<string, string> = {};
    for (const [resource, groups] of byResource) {
      Object.assign(env, groupEnvironment(resource, [...groups].sort((a, b) => a.id - b.id)));
    }
    const mounts: CdiMount[] = [];
    for (const extra of extras) {
      for (const [name, value] of Object.entries(extra.envs ?? {})) {
        if (name in env && env[name] !== value) {
          // PVDP_HANDOFF_SOCKET names one socket; with several handoffs each resource's own variable is the one to use.
          if (name === 'PVDP_HANDOFF_SOCKET' || name === 'PVDP_HANDOFF_GROUPS') continue;
          throw new Error(`environment variable ${name} would be set twice`);
        }
        env[name] = value;
      }
      for (const mount of extra.mounts ?? []) mounts.push(mountOf(mount));
    }
    return buildClaimSpec({
      kind: this.cdiKind,
      devices: perDevice.map((d) => ({ name: this.cdiName(ref, d.deviceName), deviceNodes: [groupNodePath(d.group.id)] })),
      commonDeviceNodes: [VFIO_CONTAINER_PATH],
      env,
      mounts,
    });
  }

  /**
   * Releases what a claim holds and removes its spec, then gives its managed
   * groups back to their host drivers; the caller persists. The checkpoint says
   * `unpreparing` before the first give-back write, and keeps the groups that
   * could not be given back, so a retry or a restart finishes the job.
   */
  private async undo(uid: string, claim: CheckpointClaim): Promise<void> {
    const failures: string[] = [];
    if (claim.state !== 'unpreparing') {
      for (const set of claim.groupSets) {
        if (set.mode !== 'handoff') continue;
        await this.options.preparation.release(set.resource, set.groups).catch((err: unknown) => failures.push(`releasing groups ${set.groups.join(',')}: ${(err as Error).message}`));
      }
      const file = claim.cdiSpecFile ?? this.options.cdi.fileName(uid);
      await this.options.cdi.remove(file).catch((err: unknown) => failures.push(`removing the CDI spec ${file}: ${(err as Error).message}`));
      if (failures.length > 0) throw new Error(failures.join('; '));
    }
    const bindings = claim.bindings ?? [];
    if (bindings.length > 0) {
      const releasing: CheckpointClaim = { ...claim, state: 'unpreparing', cdiSpecFile: null };
      delete releasing.cdiSpec;
      this.entries.set(uid, releasing);
      await this.persist();
      const stranded = await this.rebinder.giveBackAll([...bindings].reverse());
      if (stranded.length > 0) {
        this.entries.set(uid, { ...releasing, bindings: stranded.map((f) => f.rebinding) });
        throw new Error(stranded.map((f) => f.message).join('; '));
      }
    }
    this.entries.delete(uid);
  }

  /** Writes the checkpoint; if that fails the entry is forgotten so memory and disk agree. */
  private async persistOrForget(uid: string): Promise<void> {
    try {
      await this.persist();
    } catch (err) {
      this.entries.delete(uid);
      throw new Error(`cannot write the checkpoint ${this.options.checkpoint.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** One checkpoint write at a time, each of the state as it is when it runs. */
  private persist(): Promise<void> {
    const run = this.persisting
      .catch(() => undefined)
      .then(() => this.options.checkpoint.write({ version: 1, driver: this.options.driver, claims: Object.fromEntries(this.entries) }));
    this.persisting = run;
    return run;
  }
}
