// Contract steps that must run in a process of their own: the ones that leave
// locked memory charged until the process exits (kernel leaks of locked_vm are
// per process, so a child that exits takes them along), and the ones that need
// a process without CAP_IPC_LOCK under a low RLIMIT_MEMLOCK. The simulator runs
// them in a spawned SimulatedProcess, the guest runner in a fresh Node process
// (test/vfio/contract/other-process.mjs). Results are plain JSON: bigints are
// decimal strings.
import type { Platform, VfioBinding } from './binding.js';
import { verifyGroups } from './verify-groups.js';
import { VfioError, VfioPrepareError } from './errors.js';
import { PLATFORM_PROFILES } from './simulated-kernel.js';

export interface ChildScriptArgs {
  devRoot: string;
  platform: Platform;
  group: number;
  iommu?: 'v1' | 'v2';
}

export type ChildResult = Record<string, string | number | boolean | null>;

export interface ChildProcessOptions {
  /** RLIMIT_MEMLOCK of the child, bytes. */
  memlockLimit?: bigint;
  /** Without CAP_IPC_LOCK (the limit is enforced). The guest runner drops to an unprivileged uid. */
  unprivileged?: boolean;
}

const KiB = 1024n;
const MiB = 1024n * KiB;

function codeOf(err: unknown): string {
  if (err instanceof VfioError) return err.code;
  throw err;
}

async function attempt(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return codeOf(err);
  }
}

/** A v2 container on the group with 64 KiB registered and a 1 MiB window of 4K pages. */
async function v2With64k(b: VfioBinding, a: ChildScriptArgs) {
  const groupFd = await b.openGroup(a.devRoot, a.group);
  const containerFd = await b.openContainer(a.devRoot);
  await b.groupSetContainer(groupFd, containerFd);
  await b.setIommu(containerFd, b.constants.spaprTceV2Iommu);
  const memFd = await b.memfdCreate('contract-child');
  await b.ftruncate(memFd, 64n * KiB);
  const address = await b.mmap(memFd, 64n * KiB);
  await b.registerMemory(containerFd, { vaddr: address, size: 64n * KiB });
  await b.tceRemove(containerFd, { startAddr: 0n });
  const start = await b.tceCreate(containerFd, { pageShift: 12, windowSize: 1n * MiB, levels: 1 });
  const rw = b.constants.dmaMapFlagRead | b.constants.dmaMapFlagWrite;
  await b.mapDma(containerFd, { vaddr: address, iova: start, size: 64n * KiB, flags: rw });
  return {
    groupFd,
    containerFd,
    address,
    start,
    async close() {
      await b.close(groupFd);
      await b.close(containerFd);
      await b.munmap(address, 64n * KiB);
      await b.close(memFd);
    },
  };
}

export const childScripts = {
  /** MAP 64K, UNMAP the first 32K, UNREGISTER, UNMAP the rest, REGISTER again, close all: what stays locked. */
  async partialUnmapLeak(b: VfioBinding, a: ChildScriptArgs): Promise<ChildResult> {
    const before = await b.lockedMemoryBytes();
    const c = await v2With64k(b, a);
    await b.unmapDma(c.containerFd, { iova: c.start, size: 32n * KiB });
    const unregister = await attempt(b.unregisterMemory(c.containerFd, { vaddr: c.address, size: 64n * KiB }));
    const unmapRest = await attempt(b.unmapDma(c.containerFd, { iova: c.start + 32n * KiB, size: 32n * KiB }));
    // Registering it again reuses the leaked region (no new charge); closing does not free it.
    const registerAgain = await attempt(b.registerMemory(c.containerFd, { vaddr: c.address, size: 64n * KiB }));
    await c.close();
    return { unregister, unmapRest, registerAgain, leaked: String((await b.lockedMemoryBytes()) - before) };
  },

  /** UNREGISTER while the whole region is mapped, then UNMAP and close all: what stays locked. */
  async mappedUnregisterLeak(b: VfioBinding, a: ChildScriptArgs): Promise<ChildResult> {
    const before = await b.lockedMemoryBytes();
    const c = await v2With64k(b, a);
    const unregister = await attempt(b.unregisterMemory(c.containerFd, { vaddr: c.address, size: 64n * KiB }));
    await b.unmapDma(c.containerFd, { iova: c.start, size: 64n * KiB });
    await c.close();
    return { unregister, leaked: String((await b.lockedMemoryBytes()) - before) };
  },

  /**
   * TCE_CREATE refused after its table was charged: the charge stays. pseries: levels 2, and a
   * size that is not a power of two; powernv: 5 levels for 256 MiB, and one level past 16 MiB.
   */
  async refusedTableCharge(b: VfioBinding, a: ChildScriptArgs): Promise<ChildResult> {
    const groupFd = await b.openGroup(a.devRoot, a.group);
    const containerFd = await b.openContainer(a.devRoot);
    await b.groupSetContainer(groupFd, containerFd);
    await b.setIommu(containerFd, b.constants.spaprTceV2Iommu);
    await b.tceRemove(containerFd, { startAddr: 0n });
    const out: ChildResult = {};
    const step = async (name: string, pageShift: number, windowSize: bigint, levels: number) => {
      const before = await b.lockedMemoryBytes();
      out[`${name}Code`] = await attempt(b.tceCreate(containerFd, { pageShift, windowSize, levels }));
      out[`${name}Kept`] = String((await b.lockedMemoryBytes()) - before);
    };
    if (PLATFORM_PROFILES[a.platform].family === 'pseries') {
      await step('levels2', 12, 256n * MiB, 2);
      await step('notPow2', 12, 3n * MiB, 1);
    } else {
      await step('levels5', 12, 256n * MiB, 5);
      await step('oneLevel16G', 12, 16n << 30n, 1);
    }
    const held = await b.lockedMemoryBytes();
    await b.close(groupFd);
    await b.close(containerFd);
    out['afterClose'] = String(await b.lockedMemoryBytes());
    out['held'] = String(held);
    return out;
  },

  /** v1 ENABLE of the group's container; what it charged. */
  async enable(b: VfioBinding, a: ChildScriptArgs): Promise<ChildResult> {
    const groupFd = await b.openGroup(a.devRoot, a.group);
    const containerFd = await b.openContainer(a.devRoot);
    try {
      await b.groupSetContainer(groupFd, containerFd);
      await b.setIommu(containerFd, b.constants.spaprTceIommu);
      const before = await b.lockedMemoryBytes();
      const enable = await attempt(b.enable(containerFd));
      return { enable, charged: String((await b.lockedMemoryBytes()) - before) };
    } finally {
      await b.close(groupFd);
      await b.close(containerFd);
    }
  },

  /** verifyGroups on the group: the failure's code and message, and what stayed locked. */
  async verify(b: VfioBinding, a: ChildScriptArgs): Promise<ChildResult> {
    const before = await b.lockedMemoryBytes();
    try {
      await verifyGroups(b, [a.group], { devRoot: a.devRoot, ...(a.iommu ? { iommu: a.iommu } : {}) });
      return { ok: true, leaked: String((await b.lockedMemoryBytes()) - before) };
    } catch (err) {
      if (!(err instanceof VfioPrepareError)) throw err;
      return { ok: false, code: err.code, message: err.message, leaked: String((await b.lockedMemoryBytes()) - before) };
    }
  },
} satisfies Record<string, (b: VfioBinding, a: ChildScriptArgs) => Promise<ChildResult>>;

export type ChildScriptName = keyof typeof childScripts;
