// What a ResourceClaim's status says this driver must prepare: the allocated
// devices of our driver and our opaque configuration entries. Pure: the claim
// arrives as the API server's JSON, and nothing in it is trusted until checked.
import type { OpaqueConfigEntry } from './claim-config.js';

/** The claim reference the kubelet sends. */
export interface ClaimRef {
  namespace: string;
  uid: string;
  name: string;
}

/** One allocated device of our driver. */
export interface AllocatedDevice {
  request: string;
  pool: string;
  device: string;
}

export interface ClaimAllocation {
  devices: AllocatedDevice[];
  config: OpaqueConfigEntry[];
}

/** A claim this driver refuses to prepare, with the reason in words. */
export class ClaimRefusal extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ClaimRefusal';
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function claimName(ref: ClaimRef): string {
  return `ResourceClaim ${ref.namespace}/${ref.name}`;
}

/**
 * Reads the allocation of `claim` for `driver`. Refuses a claim that is not
 * the one the kubelet named (another uid: deleted and created again), that is
 * not allocated, or that has no device of ours.
 */
export function claimAllocation(claim: unknown, ref: ClaimRef, driver: string): ClaimAllocation {
  if (!isObject(claim)) throw new ClaimRefusal(`${claimName(ref)}: the API server returned no object`);
  const metadata = isObject(claim['metadata']) ? claim['metadata'] : {};
  if (metadata['uid'] !== ref.uid) {
    throw new ClaimRefusal(`${claimName(ref)} has uid ${String(metadata['uid'])}, not ${ref.uid}: the claim was deleted and created again`);
  }
  const status = isObject(claim['status']) ? claim['status'] : {};
  const allocation = isObject(status['allocation']) ? status['allocation'] : null;
  const devicesSection = allocation && isObject(allocation['devices']) ? allocation['devices'] : null;
  if (!devicesSection) throw new ClaimRefusal(`${claimName(ref)} is not allocated (no status.allocation.devices)`);
  const results = Array.isArray(devicesSection['results']) ? devicesSection['results'] : [];
  const devices: AllocatedDevice[] = [];
  results.forEach((result: unknown, index: number) => {
    if (!isObject(result) || result['driver'] !== driver) return;
    const request = result['request'];
    const pool = result['pool'];
    const device = result['device'];
    if (typeof request !== 'string' || typeof pool !== 'string' || typeof device !== 'string' || !request || !pool || !device) {
      throw new ClaimRefusal(`${claimName(ref)}: status.allocation.devices.results[${index}] lacks its request, pool or device`);
    }
    devices.push({ request, pool, device });
  });
  if (devices.length === 0) throw new ClaimRefusal(`${claimName(ref)} has no device of driver ${driver} allocated`);
  const config: OpaqueConfigEntry[] = [];
  const entries = Array.isArray(devicesSection['config']) ? devicesSection['config'] : [];
  entries.forEach((entry: unknown, index: number) => {
    if (!isObject(entry) || !isObject(entry['opaque']) || entry['opaque']['driver'] !== driver) return;
    const source = entry['source'] === 'FromClass' ? 'FromClass' : 'FromClaim';
    const requests = Array.isArray(entry['requests']) ? entry['requests'].filter((r): r is string => typeof r === 'string') : [];
    config.push({ index, source, requests, parameters: entry['opaque']['parameters'] });
  });
  return { devices, config };
}
