// Transient CDI specs, one file per prepared DRA claim: the container runtime
// reads them when it creates a container that uses the claim. Spec-wide edits
// (the VFIO container node, the variables naming the functions, the handoff
// mount) apply once however many of the claim's devices a container gets; each
// device adds its own group node.
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readdir, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { CDI_VERSION } from './spec-writer.js';

export interface CdiMount {
  hostPath: string;
  containerPath: string;
  type: 'bind';
  options: string[];
}

export interface ClaimSpecDevice {
  /** The device's CDI name (unique in the spec). */
  name: string;
  /** Device nodes only this device brings (its /dev/vfio/N). */
  deviceNodes: string[];
}

export interface ClaimSpecInput {
  /** The CDI kind, `vendor/class`. */
  kind: string;
  devices: ClaimSpecDevice[];
  /** Nodes every container of the claim needs (/dev/vfio/vfio). */
  commonDeviceNodes: string[];
  env: Record<string, string>;
  mounts: CdiMount[];
}

export interface ClaimSpec {
  cdiVersion: string;
  kind: string;
  devices: { name: string; containerEdits: { deviceNodes: { path: string; permissions: string }[] } }[];
  containerEdits: {
    deviceNodes: { path: string; permissions: string }[];
    env?: string[];
    mounts?: CdiMount[];
  };
}

export function buildClaimSpec(input: ClaimSpecInput): ClaimSpec {
  const env = Object.entries(input.env)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`);
  return {
    cdiVersion: CDI_VERSION,
    kind: input.kind,
    devices: input.devices.map((d) => ({
      name: d.name,
      containerEdits: { deviceNodes: d.deviceNodes.map((path) => ({ path, permissions: 'rw' })) },
    })),
    containerEdits: {
      deviceNodes: input.commonDeviceNodes.map((path) => ({ path, permissions: 'rw' })),
      ...(env.length > 0 ? { env } : {}),
      ...(input.mounts.length > 0 ? { mounts: input.mounts } : {}),
    },
  };
}

/** CDI's rule for device names. */
export function cdiDeviceNameProblem(name: string): string | null {
  return /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/.test(name) ? null : `"${name}" is not a CDI device name (letters, digits, "_", ".", ":" and "-", starting with a letter or digit)`;
}

/**
 * The per-claim spec files of one driver in the CDI directory. File names
 * carry the driver and the claim uid, so files of other vendors (and other
 * drivers) are never touched.
 */
export class ClaimSpecDirectory {
  private readonly prefix: string;

  constructor(
    readonly dir: string,
    driver: string,
  ) {
    this.prefix = `${driver}-claim-`;
  }

  fileName(claimUid: string): string {
    return `${this.prefix}${claimUid.replace(/[^A-Za-z0-9-]/g, '_')}.json`;
  }

  /** Writes a claim's spec atomically, so the runtime never reads half a file. */
  async write(claimUid: string, spec: ClaimSpec): Promise<string> {
    await mkdir(this.dir, { recursive: true });
    const name = this.fileName(claimUid);
    const tmp = join(this.dir, `.${name}.${process.pid}.tmp`);
    const handle = await open(tmp, 'w', 0o644);
    try {
      await handle.writeFile(`${JSON.stringify(spec, null, 2)}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await rename(tmp, join(this.dir, name));
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
    return name;
  }

  /** Whether a claim's spec file is there (a regular file). */
  async exists(fileName: string): Promise<boolean> {
    try {
      const handle = await open(join(this.dir, fileName), fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
      try {
        return (await handle.stat()).isFile();
      } finally {
        await handle.close();
      }
    } catch {
      return false;
    }
  }

  async remove(fileName: string): Promise<void> {
    await unlink(join(this.dir, fileName)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  /** Our spec files (and temporary files a crash left) in the directory. */
  async list(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    return names.filter((n) => (n.startsWith(this.prefix) && n.endsWith('.json')) || (n.startsWith(`.${this.prefix}`) && n.endsWith('.tmp')));
  }
}
