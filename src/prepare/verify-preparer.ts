// The `verify` preparation mode as the kubelet room sees it: a Preparer that
// runs the whole sPAPR container sequence on each group and releases it, so a
// workload that opens the group itself starts on a device known to work.
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { RequestError } from '../errors.js';
import type { ResourceConfig } from '../config/schema.js';
import type { IommuGroup } from '../topology/types.js';
import type { Preparer } from './types.js';
import type { VfioBinding } from '../vfio/binding.js';
import { formatBytes } from '../vfio/container-sequence.js';
import { verifyGroups, type GroupVerification } from '../vfio/verify-groups.js';
import { VfioPrepareError } from '../vfio/errors.js';

export interface VerifyPreparerOptions {
  binding: VfioBinding;
  /** Root under which dev/vfio is opened. */
  devRoot: string;
  logger?: Logger;
  /** Called before each verification, e.g. to tell a simulated kernel about hot-plugged groups. */
  beforeVerify?: (groups: IommuGroup[]) => void;
  /** Told of every finished preparation, for metrics. */
  onResult?: (resource: string, mode: 'verify', result: 'ok' | 'failed', seconds: number, code?: string) => void;
  /** Told of each group verified, e.g. to label the node with what the kernel offers. */
  onVerified?: (verification: GroupVerification) => void;
}

export interface VerifyPreparer {
  preparer: Preparer;
  /** Last successful verification of a group. */
  last(group: number): GroupVerification | undefined;
}

export function describeVerification(v: GroupVerification): string {
  const pageSize = formatBytes(1n << BigInt(v.window.pageShift));
  return `sPAPR TCE ${v.iommu}, window 0x${v.window.start.toString(16)} + ${formatBytes(v.window.size)}, IOMMU page ${pageSize}, ${formatBytes(v.lockedBytes)} locked at peak, all released`;
}

export function createVerifyPreparer(options: VerifyPreparerOptions): VerifyPreparer {
  const logger = (options.logger ?? silentLogger()).child({ room: 'prepare' });
  const results = new Map<number, GroupVerification>();
  const preparer: Preparer = async (resource: ResourceConfig, groups: IommuGroup[]) => {
    if (resource.preparation.mode !== 'verify') {
      // Handoff resources are prepared by the handoff service; this would be a wiring mistake.
      throw new RequestError(
        'PVDP_ERR_PREPARATION',
        'precondition',
        `Internal error: the verify preparation was asked to prepare ${resource.name}, whose mode is ${resource.preparation.mode}`,
      );
    }
    options.beforeVerify?.(groups);
    const started = process.hrtime.bigint();
    try {
      const verified = await verifyGroups(
        options.binding,
        groups.map((g) => g.id),
        { devRoot: options.devRoot, logger },
      );
      for (const v of verified) {
        results.set(v.group, v);
        options.onVerified?.(v);
      }
      options.onResult?.(resource.name, 'verify', 'ok', Number(process.hrtime.bigint() - started) / 1e9);
    } catch (err) {
      options.onResult?.(
        resource.name,
        'verify',
        'failed',
        Number(process.hrtime.bigint() - started) / 1e9,
        err instanceof VfioPrepareError ? err.code : 'unexpected',
      );
      if (err instanceof VfioPrepareError) {
        const where = err.group !== undefined ? `IOMMU group ${err.group}` : `groups ${groups.map((g) => g.id).join(',')}`;
        throw new RequestError('PVDP_ERR_PREPARATION', 'precondition', `Verifying ${where} of ${resource.name} failed: ${err.message}`, {
          cause: err,
        });
      }
      throw err;
    }
  };
  return { preparer, last: (group) => results.get(group) };
}
