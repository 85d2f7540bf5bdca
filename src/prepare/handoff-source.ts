// The handoff mode's fd source on a VFIO kernel (native or simulated): the
// whole sPAPR container sequence, kept, described for the claimer.
import type { Logger } from '../log.js';
import { RequestError } from '../errors.js';
import type { ResourceConfig } from '../config/schema.js';
import type { IommuGroup } from '../topology/types.js';
import type { VfioBinding } from '../vfio/binding.js';
import { prepareContainer, type PreparedContainer } from '../vfio/container-sequence.js';
import { verifyGroups } from '../vfio/verify-groups.js';
import { VfioPrepareError } from '../vfio/errors.js';
import type { HandoffPayload, HandoffSource } from '../handoff/manager.js';
import { FD_INDEX_CONTAINER, FD_INDEX_FIRST_GROUP, FD_INDEX_MEMORY, HANDOFF_PROTOCOL_VERSION, hex, type HandoffDescription } from '../handoff/protocol.js';

export interface VfioHandoffSourceOptions {
  binding: VfioBinding;
  devRoot: string;
  logger?: Logger;
  /** Called before each preparation (the simulated kernel learns hot-plugged groups). */
  beforePrepare?: (groups: IommuGroup[]) => void;
  /** Told of every finished preparation, for metrics. */
  onResult?: (resource: string, mode: 'handoff', result: 'ok' | 'failed', seconds: number, code?: string) => void;
}

/** The description a claimer gets for a prepared container. */
export function describePrepared(binding: VfioBinding, resource: string, prepared: PreparedContainer, groups: readonly IommuGroup[]): HandoffDescription {
  const byId = new Map(groups.map((g) => [g.id, g]));
  const v2 = prepared.iommu === 'v2';
  return {
    protocol: HANDOFF_PROTOCOL_VERSION,
    resource,
    iommu: { type: v2 ? 'spapr-tce-v2' : 'spapr-tce', value: v2 ? binding.constants.spaprTceV2Iommu : binding.constants.spaprTceIommu },
    window: {
      start: hex(prepared.window.start),
      size: hex(prepared.window.size),
      pageShift: prepared.window.pageShift,
      pageSize: hex(1n << BigInt(prepared.window.pageShift)),
      created: prepared.window.created,
    },
    memory: {
      fdIndex: FD_INDEX_MEMORY,
      size: hex(prepared.memory.size),
      pageSize: hex(prepared.memory.pageSize),
      hugetlb: prepared.memory.pageSize !== BigInt(binding.pageSize),
    },
    container: { fdIndex: FD_INDEX_CONTAINER },
    groups: prepared.groups.map((g, i) => ({
      group: g.group,
      fdIndex: FD_INDEX_FIRST_GROUP + i,
      functions: byId.get(g.group)?.functions.map((f) => f.address) ?? [],
    })),
    ranges: prepared.mappings.map((m) => ({ iova: hex(m.iova), size: hex(m.size), offset: hex(m.offset) })),
    fds: ['container', 'memory', ...prepared.groups.map((g) => `group:${g.group}`)],
  };
}

/** Wraps a kept PreparedContainer as a payload. */
export function payloadOf(binding: VfioBinding, prepared: PreparedContainer, description: HandoffDescription, logger?: Logger): HandoffPayload {
  return {
    description,
    fds: [prepared.containerFd, prepared.memory.fd, ...prepared.groups.map((g) => g.fd)],
    async handedOver() {
      // Only our copies: no unmap, no unregister, no unset. The claimer's fds keep
      // the container, its windows and mappings alive; the pinned pages stay
      // pinned after our munmap. The pod's exit then releases it all. Where the
      // kernel needed a container per group (v1, pseries v2), only the first
      // container's fd travels: each further container stays alive through its
      // group's fd, which is all the pod can use it by (its mm is ours).
      const failures: string[] = [];
      const extraContainers = prepared.containers.slice(1).map((c) => c.containerFd);
      for (const fd of [prepared.containerFd, prepared.memory.fd, ...prepared.groups.map((g) => g.fd), ...extraContainers]) {
        await binding.close(fd).catch((err: unknown) => failures.push(`close ${fd}: ${(err as Error).message}`));
      }
      await binding.munmap(prepared.memory.address, prepared.memory.size).catch((err: unknown) => failures.push(`munmap: ${(err as Error).message}`));
      if (failures.length > 0) {
        logger?.error({ failures }, 'Dropping the plugin\'s copies of a claimed handoff was incomplete');
        throw new Error(failures.join('; '));
      }
    },
    release: () => prepared.release(),
  };
}

export function createVfioHandoffSource(options: VfioHandoffSourceOptions): HandoffSource {
  const windowSizes = new Map<string, bigint>();
  return async (resource: ResourceConfig, groups: IommuGroup[]): Promise<HandoffPayload> => {
    options.beforePrepare?.(groups);
    const ids = groups.map((g) => g.id);
    const handoff = resource.preparation.handoff;
    const started = process.hrtime.bigint();
    const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
    try {
      let memorySize: bigint;
      if (handoff?.memorySize !== undefined) {
        memorySize = BigInt(handoff.memorySize);
      } else {
        // The whole default window: learn its size once per group set (a probe container, released).
        const key = ids.join(',');
        let size = windowSizes.get(key);
        if (size === undefined) {
          const [probe] = await verifyGroups(options.binding, [ids[0]!], { devRoot: options.devRoot, ...(handoff?.iommu ? { iommu: handoff.iommu } : {}) });
          size = BigInt(probe!.info.dma32WindowSize);
          windowSizes.set(key, size);
        }
        memorySize = size;
      }
      const prepared = await prepareContainer(options.binding, {
        devRoot: options.devRoot,
        groups: ids,
        memorySize,
        ...(handoff?.hugePageShift !== undefined ? { hugePageShift: handoff.hugePageShift } : {}),
        ...(handoff?.iommu !== undefined ? { iommu: handoff.iommu } : {}),
        ...(options.logger ? { logger: options.logger } : {}),
      });
      options.onResult?.(resource.name, 'handoff', 'ok', seconds());
      return payloadOf(options.binding, prepared, describePrepared(options.binding, resource.name, prepared, groups), options.logger);
    } catch (err) {
      options.onResult?.(resource.name, 'handoff', 'failed', seconds(), err instanceof VfioPrepareError ? err.code : 'unexpected');
      if (err instanceof VfioPrepareError) {
        const where = err.group !== undefined ? `IOMMU group ${err.group}` : `groups ${ids.join(',')}`;
        throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `Preparing the handoff of ${where} of ${resource.name} failed: ${err.message}`, { cause: err });
      }
      throw err;
    }
  };
}
