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
  // A PE whose state exists but cannot be read may well be frozen: doubt is not health.
  if (group.eeh?.stateUnknown !== undefined) {
    reasons.push(`the EEH state of the PE is unknown: ${group.eeh.stateUnknown}`);
  }
  return reasons.length === 0 ? { healthy: true } : { healthy: false, reason: reasons.join('; ') };
}
