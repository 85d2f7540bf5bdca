// Container Device Interface specs for the advertised groups, one file per
// resource. With CDI on, Allocate names devices (`ibm.com/nvme=3`) and the
// container runtime injects the /dev/vfio nodes from these files.
import { mkdir, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VFIO_CONTAINER_PATH } from '../inventory/advertised.js';

export const CDI_VERSION = '0.6.0';
const FILE_PREFIX = 'power-vfio-';

export { cdiKindProblem } from './names.js';

/** The CDI kind of a resource is the resource name itself: `vendor.example/class`. */
export function cdiDeviceName(resource: string, group: number): string {
  return `${resource}=${group}`;
}

export function cdiSpecFileName(resource: string): string {
  return `${FILE_PREFIX}${resource.replace(/[^A-Za-z0-9.-]/g, '_')}.json`;
}

export interface CdiSpec {
  cdiVersion: string;
  kind: string;
  devices: { name: string; containerEdits: { deviceNodes: { path: string; permissions: string }[] } }[];
  containerEdits: { deviceNodes: { path: string; permissions: string }[] };
}

export function buildCdiSpec(resource: string, groups: readonly number[]): CdiSpec {
  return {
    cdiVersion: CDI_VERSION,
    kind: resource,
    devices: [...groups]
      .sort((a, b) => a - b)
      .map((g) => ({ name: String(g), containerEdits: { deviceNodes: [{ path: `/dev/vfio/${g}`, permissions: 'rw' }] } })),
    // Every container that gets a group also needs the VFIO container node.
    containerEdits: { deviceNodes: [{ path: VFIO_CONTAINER_PATH, permissions: 'rw' }] },
  };
}

/**
 * Writes each resource's spec atomically (temp file, then rename, so the
 * runtime never reads half a file), and removes our specs of resources that
 * are no longer configured. Files of other vendors are never touched. Specs
 * stay on shutdown: a container of a running pod that restarts while the
 * plugin is down still needs them.
 */
export class CdiSpecWriter {
  private readonly written = new Map<string, string>();
  private queue: Promise<void> = Promise.resolve();

  constructor(readonly dir: string) {}

  update(byResource: ReadonlyMap<string, readonly number[]>): Promise<void> {
    const snapshot = new Map([...byResource].map(([r, g]) => [r, [...g]]));
    // A failed write must not poison the ones after it.
    const next = this.queue.catch(() => undefined).then(() => this.write(snapshot));
    this.queue = next;
    return next;
  }

  private async write(byResource: Map<string, number[]>): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const wanted = new Set<string>();
    for (const [resource, groups] of byResource) {
      const file = cdiSpecFileName(resource);
      wanted.add(file);
      const text = `${JSON.stringify(buildCdiSpec(resource, groups), null, 2)}\n`;
      if (this.written.get(file) === text) continue;
      const tmp = join(this.dir, `.${file}.${process.pid}.tmp`);
      await writeFile(tmp, text, { mode: 0o644 });
      await rename(tmp, join(this.dir, file));
      this.written.set(file, text);
    }
    for (const name of await readdir(this.dir)) {
      if (name.startsWith(FILE_PREFIX) && name.endsWith('.json') && !wanted.has(name)) {
        await unlink(join(this.dir, name)).catch(() => undefined);
        this.written.delete(name);
      }
    }
  }
}
