// The sPAPR TCE container sequence over a VfioBinding, in the order QEMU (the
// reference client) uses: open the group, check it is viable, open the
// container, API version, CHECK_EXTENSION v2 then v1, SET_CONTAINER,
// SET_IOMMU v2 else v1, GET_INFO; v1 ENABLE; v2 REGISTER_MEMORY, replace the
// default window by one sized for the request; MAP_DMA with one call per
// contiguous range, the window bounds checked before every call (a map past
// a window's end crashes pseries kernels). Every resource is pushed on a
// teardown stack as soon as it exists, so success and every failure release
// in the order unmap, TCE_REMOVE, UNREGISTER, UNSET_CONTAINER, close. Several
// groups share the first group's container where the kernel lets them (powernv
// v2); elsewhere (v1, pseries v2) each gets a container of its own mapping the
// same memory at the same iova.
import type { SpaprTceInfo, VfioBinding } from './binding.js';
import { KernelOopsError, VfioError, isVfioError } from './errors.js';
import { formatBytes, type DmaMemory, type IommuVersion, type PrepareOptions, type PreparedContainer, type PreparedIommuContainer } from './dma-plan.js';
import { allocateDmaMemory } from './dma-memory.js';
import { mapContainer } from './dma-window.js';
import { describe, fail, ioctlFailure, type SequenceContext } from './sequence-context.js';
import { Teardown } from './teardown.js';

// The planning arithmetic and the shapes live in dma-plan.ts, steps 8-9 (window, mappings) in
// dma-window.ts, the failures' wording in sequence-context.ts, the verify mode in verify-groups.ts.
export {
  acceptedLevels,
  assertInsideWindow,
  coalesceRanges,
  formatBytes,
  type DmaMemory,
  type DmaWindow,
  type GroupVerification,
  type IommuVersion,
  type MappedRange,
  type PrepareOptions,
  type PreparedContainer,
  type PreparedIommuContainer,
  type VerifyOptions,
} from './dma-plan.js';
export { allocateDmaMemory } from './dma-memory.js';

async function openGroup(ctx: SequenceContext, group: number): Promise<number> {
  let fd: number;
  try {
    fd = await ctx.binding.openGroup(ctx.devRoot, group);
  } catch (err) {
    const path = err instanceof VfioError ? err.path : `/dev/vfio/${group}`;
    if (isVfioError(err, 'ENOENT')) {
      fail('ERR_VFIO_GROUP_MISSING', 'open-group', group, `${path} does not exist`,
        `bind every function of IOMMU group ${group} to vfio-pci (driver_override, then drivers_probe) and mount /dev/vfio into the plugin`, err);
    }
    if (isVfioError(err, 'EBUSY')) {
      fail('ERR_VFIO_GROUP_BUSY', 'open-group', group, `IOMMU group ${group} is already open (${path})`,
        'a group opens only once: stop whatever holds it (another pod, QEMU, an unclaimed handoff); `fuser -v /dev/vfio/N` names it', err);
    }
    if (isVfioError(err, 'EACCES', 'EPERM')) {
      fail('ERR_VFIO_ACCESS', 'open-group', group, `permission denied opening ${path}`,
        'run the plugin as root (or with access to /dev/vfio) and mount /dev/vfio read-write', err);
    }
    return ioctlFailure('open-group', group, err);
  }
  ctx.teardown.push(`close group ${group}`, () => ctx.binding.close(fd));
  let status;
  try {
    status = await ctx.binding.groupGetStatus(fd);
  } catch (err) {
    return ioctlFailure('group-status', group, err);
  }
  if (!status.viable) {
    fail('ERR_VFIO_GROUP_NOT_VIABLE', 'group-status', group, `IOMMU group ${group} is not viable (a device in it has a host driver bound)`,
      `bind every function of group ${group} to vfio-pci or leave it without a driver (the whole group is passed through)`);
  }
  return fd;
}

async function chooseIommu(
  ctx: SequenceContext,
  containerFd: number,
  groups: number[],
  want: 'auto' | IommuVersion,
): Promise<IommuVersion> {
  const k = ctx.binding.constants;
  const hasV2 = (await ctx.binding.checkExtension(containerFd, k.spaprTceV2Iommu)) > 0;
  const hasV1 = (await ctx.binding.checkExtension(containerFd, k.spaprTceIommu)) > 0;
  if (!hasV2 && !hasV1) {
    fail('ERR_VFIO_NO_SPAPR_IOMMU', 'check-extension', groups[0], 'the kernel offers no sPAPR TCE IOMMU',
      'load the vfio_iommu_spapr_tce module (modprobe vfio_iommu_spapr_tce); this plugin needs an IBM POWER kernel');
  }
  return (want === 'v1' || !hasV2) ? (hasV1 ? 'v1' : 'v2') : 'v2';
}

/**
 * Prepares one container holding `groups`, with `memorySize` bytes of DMA
 * memory mapped at the start of its window. Release it with `release()`;
 * on failure everything is already released and a VfioPrepareError says why.
 */
export async function prepareContainer(binding: VfioBinding, options: PrepareOptions): Promise<PreparedContainer> {
  if (options.groups.length === 0) throw new RangeError('prepareContainer needs at least one group');
  if (new Set(options.groups).size !== options.groups.length) throw new RangeError('groups must be distinct');
  if (options.memorySize <= 0n) throw new RangeError('memorySize must be positive');
  const ctx: SequenceContext = {
    binding,
    devRoot: options.devRoot,
    logger: options.logger,
    teardown: new Teardown(),
    lockedBefore: await binding.lockedMemoryBytes(),
  };
  const log = options.logger;
  const first = options.groups[0]!;
  try {
    return await prepareInner(ctx, options, first);
  } catch (err) {
    if (err instanceof KernelOopsError) throw err;
    const failures = await ctx.teardown.run(log);
    if (failures.length > 0 && err instanceof Error) {
      log?.error({ failures: failures.map((f) => f.step) }, 'VFIO teardown after a failed preparation was incomplete');
    }
    throw err;
  }
}

async function prepareInner(ctx: SequenceContext, options: PrepareOptions, first: number): Promise<PreparedContainer> {
  const { binding } = ctx;
  const log = ctx.logger;

  // 1. groups, viability
  const groups: Array<{ group: number; fd: number }> = [];
  for (const group of options.groups) groups.push({ group, fd: await openGroup(ctx, group) });

  // 2-6. the first group's container: API, extensions, SET_CONTAINER, SET_IOMMU, info, EEH
  const head = await openIommuContainer(ctx, groups[0]!, options.iommu ?? 'auto', options);
  const iommu = head.iommu;
  const info = head.info;

  // 7. memory, shared by every container of the allocation
  let memory: DmaMemory;
  try {
    memory = await allocateDmaMemory(binding, options.memorySize, options.hugePageShift !== undefined ? { hugePageShift: options.hugePageShift } : {});
  } catch (err) {
    return memoryFailure(options, first, err);
  }
  ctx.teardown.push('release memory', () => memory.release());

  // 8-9. window and mappings of the first container
  const containers: PreparedIommuContainer[] = [];
  containers.push(await mapContainer(ctx, head.containerFd, [groups[0]!], iommu, info, memory, options));

  // 10. the other groups. Join the first container where the kernel allows it (powernv v2 programs
  // the existing windows and TCEs into the new PE). v1 takes one group (EBUSY) and pseries v2 none
  // once a window exists (EPERM), nor can it create a window for two groups: there each group gets
  // a container of its own, with the same memory registered (charged once per process) and the
  // same window, so the device sees one iova layout whichever group it is in.
  for (const g of groups.slice(1)) {
    const joined = await joinContainer(ctx, g, containers[0]!.containerFd);
    if (joined) {
      containers[0]!.groups.push(g);
      continue;
    }
    log?.info({ group: g.group, firstGroup: first, iommu }, 'The container refused a second group: the group gets a container of its own');
    const own = await openIommuContainer(ctx, g, iommu, options);
    const prepared = await mapContainer(ctx, own.containerFd, [g], iommu, own.info, memory, options, containers[0]!.window);
    containers.push(prepared);
  }

  const lockedBytes = (await binding.lockedMemoryBytes()) - ctx.lockedBefore;
  const window = containers[0]!.window;
  log?.debug({ groups: options.groups, containers: containers.length, iommu, windowStart: `0x${window.start.toString(16)}`, windowSize: `0x${window.size.toString(16)}`, lockedBytes: lockedBytes.toString() }, 'VFIO container prepared');
  const teardown = ctx.teardown;
  return {
    containerFd: containers[0]!.containerFd,
    groups,
    containers,
    iommu,
    info,
    window,
    memory,
    mappings: containers[0]!.mappings,
    lockedBytes,
    async release() {
      const failures = await teardown.run(log);
      if (failures.length > 0) {
        const oops = failures.find((f) => f.error instanceof KernelOopsError);
        if (oops) throw oops.error;
        fail('ERR_VFIO_RELEASE', failures[0]!.step, first, `releasing the container of group(s) ${options.groups.join(', ')} failed at ${failures.map((f) => f.step).join(', ')} (${describe(failures[0]!.error)})`,
          'the remaining fds were closed, which makes the kernel release the rest; check VmLck of the plugin if this repeats', failures[0]!.error);
      }
    },
  };
}

function memoryFailure(options: PrepareOptions, group: number, err: unknown): never {
  const huge = options.hugePageShift !== undefined;
  const what = `cannot allocate ${formatBytes(options.memorySize)} of DMA memory${huge ? ` in ${formatBytes(1n << BigInt(options.hugePageShift!))} huge pages` : ''} (${describe(err)})`;
  if (huge && isVfioError(err, 'ENODEV')) {
    // memfd_create(MFD_HUGETLB) is ENODEV when the kernel has no huge pages of that size at all.
    const kib = (1n << BigInt(options.hugePageShift!)) / 1024n;
    fail('ERR_VFIO_MEMORY', 'allocate-memory', group, `${what}: the kernel has no ${formatBytes(1n << BigInt(options.hugePageShift!))} huge pages`,
      `pick a huge page size the node offers (listed in /sys/kernel/mm/hugepages, here hugepages-${kib}kB is missing), or boot the node with hugepagesz=${formatBytes(1n << BigInt(options.hugePageShift!)).replace(/ ([KMG])iB/, '$1')} hugepages=N`, err);
  }
  fail('ERR_VFIO_MEMORY', 'allocate-memory', group, what,
    huge ? 'reserve enough huge pages on the node (vm.nr_hugepages or hugepagesz=/hugepages= on the kernel command line)' : 'free memory on the node or ask for less', err);
}

/** A container with one group attached and its IOMMU set: steps 2-6 of the sequence. */
async function openIommuContainer(
  ctx: SequenceContext,
  g: { group: number; fd: number },
  want: 'auto' | IommuVersion,
  options: PrepareOptions,
): Promise<{ containerFd: number; iommu: IommuVersion; info: SpaprTceInfo }> {
  const { binding } = ctx;
  const k = binding.constants;
  const log = ctx.logger;
  const group = g.group;

  // 2. container, API version
  let containerFd: number;
  try {
    containerFd = await binding.openContainer(ctx.devRoot);
  } catch (err) {
    if (isVfioError(err, 'ENOENT', 'EACCES', 'EPERM')) {
      fail('ERR_VFIO_ACCESS', 'open-container', group, `cannot open the VFIO container node (${describe(err)})`,
        'load the vfio module and mount /dev/vfio (with /dev/vfio/vfio) into the plugin', err);
    }
    return ioctlFailure('open-container', group, err);
  }
  ctx.teardown.push('close container', () => binding.close(containerFd));
  const api = await binding.getApiVersion(containerFd).catch((err: unknown) => ioctlFailure('api-version', group, err));
  if (api !== k.apiVersion) {
    fail('ERR_VFIO_API', 'api-version', group, `the kernel speaks VFIO API ${api}, not ${k.apiVersion}`,
      'run a kernel whose VFIO API matches the one this plugin was built for');
  }

  // 3. extensions
  const wanted = await chooseIommu(ctx, containerFd, options.groups, want)
    .catch((err: unknown) => ioctlFailure('check-extension', group, err));

  // 4. SET_CONTAINER
  try {
    await binding.groupSetContainer(g.fd, containerFd);
  } catch (err) {
    if (isVfioError(err, 'EPERM')) {
      fail('ERR_VFIO_GROUP_NOT_VIABLE', 'set-container', group, `IOMMU group ${group} is claimed by a host driver`,
        `bind every function of group ${group} to vfio-pci`, err);
    }
    return ioctlFailure('set-container', group, err);
  }
  ctx.teardown.push(`unset container of group ${group}`, () => binding.groupUnsetContainer(g.fd));

  // 5. SET_IOMMU v2, else v1
  let iommu: IommuVersion = wanted;
  try {
    await binding.setIommu(containerFd, iommu === 'v2' ? k.spaprTceV2Iommu : k.spaprTceIommu);
  } catch (err) {
    if (iommu === 'v2' && want === 'auto' && isVfioError(err)) {
      log?.info({ groups: options.groups, code: err.code }, 'SPAPR TCE v2 refused, falling back to v1');
      iommu = 'v1';
      try {
        await binding.setIommu(containerFd, k.spaprTceIommu);
      } catch (err1) {
        fail('ERR_VFIO_IOMMU_REFUSED', 'set-iommu', group, `the kernel refused both sPAPR TCE IOMMU types (v2: ${describe(err)}; v1: ${describe(err1)})`,
          'check dmesg for vfio_iommu_spapr_tce messages', err1);
      }
    } else {
      fail('ERR_VFIO_IOMMU_REFUSED', 'set-iommu', group, `SET_IOMMU ${iommu} failed: ${describe(err)}`,
        'check dmesg for vfio_iommu_spapr_tce messages', err);
    }
  }

  // 6. info, EEH state
  const info = await binding.spaprTceGetInfo(containerFd).catch((err: unknown) => ioctlFailure('get-info', group, err));
  if ((await binding.checkExtension(containerFd, k.eehExtension).catch(() => 0)) > 0) {
    let state: number | null = null;
    try {
      state = await binding.eehPeOp(containerFd, { op: k.eehPeOp.getState });
    } catch (err) {
      if (!isVfioError(err, 'ENODEV')) return ioctlFailure('eeh-state', group, err);
    }
    if (state !== null && state !== k.eehPeState.normal) {
      fail('ERR_VFIO_EEH_FROZEN', 'eeh-state', group, `the PE of group ${group} is not in its normal EEH state (state ${state})`,
        'let EEH recovery finish or reset the device before scheduling work on it; do not write eeh_pe_state');
    }
  }
  return { containerFd, iommu, info };
}

/**
 * Attaches a group to a prepared container. False when the container refuses a further group
 * (EBUSY on v1, EPERM on pseries v2 while a window exists) and the group is still viable, so it
 * needs a container of its own; a non-viable group fails as such.
 */
async function joinContainer(ctx: SequenceContext, g: { group: number; fd: number }, containerFd: number): Promise<boolean> {
  const { binding } = ctx;
  try {
    await binding.groupSetContainer(g.fd, containerFd);
  } catch (err) {
    if (isVfioError(err, 'EBUSY')) return false;
    if (isVfioError(err, 'EPERM')) {
      // EPERM is also the answer for a group a host driver claimed since it was opened.
      const status = await binding.groupGetStatus(g.fd).catch((e: unknown) => ioctlFailure('group-status', g.group, e));
      if (status.viable) return false;
      fail('ERR_VFIO_GROUP_NOT_VIABLE', 'set-container', g.group, `IOMMU group ${g.group} is claimed by a host driver`,
        `bind every function of group ${g.group} to vfio-pci`, err);
    }
    return ioctlFailure('set-container', g.group, err);
  }
  ctx.teardown.push(`unset container of group ${g.group}`, () => binding.groupUnsetContainer(g.fd));
  return true;
}
