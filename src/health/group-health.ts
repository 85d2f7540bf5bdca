// A group's health as the kubelet sees it: Healthy only when passthrough would
// work now. The reason names what broke so operators can act on it.
import type { IommuGroup } from '../topology/types.js';

export interface GroupHealth {
  healthy: boolean;
  reason?: string;
}

export function groupHealth(group: IommuGroup): GroupHealth {
  const reasons = [...group.problems];
  if (group.eeh?.frozen) {
    reasons.push(`the PE is frozen by EEH (eeh_pe_state of ${group.eeh.source})`);
  }
  return reasons.length === 0 ? { healthy: true } : { healthy: false, reason: reasons.join('; ') };
}
