// The ResourceSlice publisher's writes, in the order that keeps readers safe:
// compare what the server holds with what we want, write every slice of a new
// generation (creating, or replacing at the server's resourceVersion after a
// conflict), and only then delete the slices of this pool we no longer have.
// It remembers what it wrote, so a watch event can be told apart from our own.
import type { V1ResourceSlice } from '@kubernetes/client-node';
import type { Logger } from '../log.js';
import { eachLimited, fromClientSlice, RequestFailure, toClientSlice, type Clients, type SliceApi, type WatchEvent } from './slice-api.js';
import { sameSliceContent, sliceFingerprint, type ResourceSlice } from './slices.js';

/** How often a write is retried at once after a 409 before the attempt counts as failed. */
const CONFLICT_RETRIES = 3;
/** Slices written at the same time: a large pool comes back quickly after the kubelet deleted it. */
const WRITE_CONCURRENCY = 4;

interface PublishedSlice {
  slice: ResourceSlice;
  resourceVersion: string | undefined;
  key: string;
  /** sliceFingerprint(slice), kept to compare watch events cheaply. */
  fingerprint: string;
}

export class SliceWrites {
  /** The slices of the last publish, by name: what we wrote, the resourceVersion the server gave it, the content key. */
  published = new Map<string, PublishedSlice>();
  /** Fingerprints of the slices being written right now: their watch events may come before the server's answers. */
  private writing = new Map<string, string>();

  constructor(
    private readonly api: SliceApi,
    private readonly logger: Logger,
    private readonly nodeName: string,
    private readonly driver: string,
  ) {}

  fieldSelector(): string {
    return `spec.nodeName=${this.nodeName},spec.driver=${this.driver}`;
  }

  /** Every slice of this node and driver, whoever wrote it (the field selector is checked again here), and the list's resourceVersion. */
  async listOurs(clients: Clients): Promise<{ items: V1ResourceSlice[]; resourceVersion: string | undefined }> {
    const list = await this.api.call('listResourceSlices', (o) => clients.resource.listResourceSlice({ fieldSelector: this.fieldSelector() }, o));
    const items = (list.items ?? []).filter((s) => s.spec?.nodeName === this.nodeName && s.spec?.driver === this.driver);
    return { items, resourceVersion: list.metadata?.resourceVersion };
  }

  /**
   * True when the server holds every slice of `wanted`, each unchanged since we
   * wrote it or equal in content, and nothing else of this pool at the same or a
   * higher generation (readers would take that for the pool).
   */
  matches(existing: V1ResourceSlice[], wanted: ResourceSlice[], key: string): boolean {
    const names = new Set(wanted.map((w) => w.metadata.name));
    const generation = wanted[0]?.spec.pool.generation ?? 0;
    if (existing.some((s) => !names.has(s.metadata?.name ?? '') && (s.spec?.pool?.generation ?? 0) >= generation)) return false;
    const byName = new Map(existing.map((s) => [s.metadata?.name ?? '', s]));
    return wanted.every((want) => {
      const have = byName.get(want.metadata.name);
      if (!have) return false;
      const ours = this.published.get(want.metadata.name);
      // Untouched since we wrote it, from the same content: no need to compare it field by field.
      if (
        ours?.resourceVersion !== undefined &&
        have.metadata?.resourceVersion === ours.resourceVersion &&
        ours.key === key &&
        ours.slice.spec.pool.generation === want.spec.pool.generation
      ) {
        return true;
      }
      return sameSliceContent(fromClientSlice(have), want);
    });
  }

  /** Writes every slice of the new generation, then deletes the rest, so two generations overlap only briefly. */
  async publish(clients: Clients, slices: ResourceSlice[], existing: V1ResourceSlice[], key: string): Promise<void> {
    const existingByName = new Map(existing.map((s) => [s.metadata?.name ?? '', s]));
    const written = new Map<string, PublishedSlice>();
    const fingerprints = new Map(slices.map((s) => [s.metadata.name, sliceFingerprint(s)]));
    this.writing = fingerprints;
    await eachLimited(slices, WRITE_CONCURRENCY, async (slice) => {
      const current = existingByName.get(slice.metadata.name);
      const stored = await this.write(clients, slice, current?.metadata?.resourceVersion, current !== undefined);
      const entry = { slice, resourceVersion: stored.metadata?.resourceVersion, key, fingerprint: fingerprints.get(slice.metadata.name)! };
      written.set(slice.metadata.name, entry);
      // Partial progress counts: a retry compares against what is already there.
      this.published.set(slice.metadata.name, entry);
    }).finally(() => {
      this.writing = new Map();
    });
    this.published = written;
    await this.deleteOthers(clients, existing, new Set(written.keys()));
  }

  /** Deletes every listed slice of this node and driver that is not one of `keep` (by default: the ones we published). */
  async deleteOthers(clients: Clients, existing: V1ResourceSlice[], keep: Set<string> = new Set(this.published.keys())): Promise<void> {
    for (const old of existing) {
      const name = old.metadata?.name;
      if (!name || keep.has(name)) continue;
      this.logger.debug({ slice: name, generation: old.spec?.pool?.generation }, 'Deleting a ResourceSlice this pool no longer has');
      await this.api.call('deleteResourceSlice', (o) => clients.resource.deleteResourceSlice({ name }, o)).catch((err: unknown) => {
        // Gone already (the kubelet, or an earlier attempt): that is what we wanted.
        if (err instanceof RequestFailure && err.detail.kind === 'notFound') return;
        throw err;
      });
    }
  }

  /** What a watch event of this pool means for us: why to compare again, or null when it is ours or nothing. */
  judge(event: WatchEvent): string | null {
    const object = event.object;
    if (!object || event.type === 'BOOKMARK') return null;
    const metadata = (object['metadata'] ?? {}) as { name?: string; resourceVersion?: string };
    const spec = (object['spec'] ?? {}) as { nodeName?: string; driver?: string };
    if (spec.nodeName !== this.nodeName || spec.driver !== this.driver || !metadata.name) return null;
    const ours = this.published.get(metadata.name);
    if (event.type === 'DELETED') {
      // Slices we delete are never in `published`; one of ours vanishing (the kubelet at its start) is.
      return ours ? `ResourceSlice ${metadata.name} was deleted` : null;
    }
    if (ours && metadata.resourceVersion !== undefined && metadata.resourceVersion === ours.resourceVersion) return null;
    const fingerprint = sliceFingerprint(object as unknown as ResourceSlice);
    if (fingerprint === this.writing.get(metadata.name)) return null;
    if (ours) return fingerprint === ours.fingerprint ? null : `ResourceSlice ${metadata.name} was changed`;
    // A slice of our pool we did not write: someone else's, or left by an earlier run.
    return `ResourceSlice ${metadata.name} appeared`;
  }

  /** Creates or replaces one slice; a 409 re-reads it and tries again, a 404 on replace creates it. */
  private async write(clients: Clients, slice: ResourceSlice, resourceVersion: string | undefined, exists: boolean): Promise<V1ResourceSlice> {
    const name = slice.metadata.name;
    let rv = resourceVersion;
    let present = exists;
    for (let attempt = 0; ; attempt++) {
      try {
        if (present) {
          const body = toClientSlice({ ...slice, metadata: { ...slice.metadata, ...(rv !== undefined ? { resourceVersion: rv } : {}) } });
          return await this.api.call('replaceResourceSlice', (o) => clients.resource.replaceResourceSlice({ name, body }, o));
        }
        return await this.api.call('createResourceSlice', (o) => clients.resource.createResourceSlice({ body: toClientSlice(slice) }, o));
      } catch (err) {
        if (!(err instanceof RequestFailure) || attempt >= CONFLICT_RETRIES) throw err;
        if (err.detail.kind === 'conflict') {
          // Stale resourceVersion, or it exists already: take the server's version and replace it.
          try {
            const current = await this.api.call('getResourceSlice', (o) => clients.resource.readResourceSlice({ name }, o));
            rv = current.metadata?.resourceVersion;
            present = true;
          } catch (readErr) {
            if (!(readErr instanceof RequestFailure && readErr.detail.kind === 'notFound')) throw readErr;
            present = false;
          }
        } else if (err.detail.kind === 'notFound' && present) {
          // Deleted since we listed.
          present = false;
        } else {
          throw err;
        }
      }
    }
  }
}
