// Says why a resource advertises nothing: a node without IOMMU groups, or
// selectors that match no group offered for passthrough. Each situation is
// logged once and again when it changes, never on every rescan.
import type { Logger } from '../log.js';
import type { Topology } from '../topology/types.js';
import type { ResourceConfig } from './schema.js';
import { groupMatches, selectGroups } from './selection.js';

export interface SelectionNoticesOptions {
  logger: Logger;
  resources: readonly ResourceConfig[];
  /** Where the groups are listed (`<sysfs root>/sys/kernel/iommu_groups`), named in the notice. */
  iommuGroupsDir: string;
}

interface UnmatchedResource {
  resource: string;
  /** Groups the selectors match that stay with a host driver (not offered for passthrough). */
  hostOwned: number[];
}

export class SelectionNotices {
  private noGroups: boolean | null = null;
  private unmatched = new Map<string, string>();

  constructor(private readonly options: SelectionNoticesOptions) {}

  /** Compares a topology with the last one seen and logs what changed. */
  update(topology: Topology): void {
    const { logger, resources } = this.options;
    const empty = topology.groups.size === 0;
    if (empty !== this.noGroups) {
      if (empty) {
        logger.warn(
          { dir: this.options.iommuGroupsDir, resources: resources.map((r) => r.name) },
          'No IOMMU groups on this node, so no resource has devices: VFIO passthrough needs the IOMMU, which gives each PE on POWER a group; on other machines enable it (intel_iommu=on or amd_iommu=on) or run with --simulate to try the plugin',
        );
      } else if (this.noGroups === true) {
        logger.info({ groups: topology.groups.size }, 'IOMMU groups appeared');
      }
      this.noGroups = empty;
    }
    // With no groups at all, the node-wide notice says it for every resource.
    const now = empty ? new Map<string, UnmatchedResource>() : this.unmatchedResources(topology);
    for (const [name, entry] of now) {
      const text = JSON.stringify(entry);
      if (this.unmatched.get(name) === text) continue;
      if (entry.hostOwned.length > 0) {
        logger.warn(
          { resource: name, hostOwnedGroups: entry.hostOwned },
          'Resource matches no IOMMU group offered for passthrough: the groups its selectors match stay with a host driver; bind their functions to vfio-pci to advertise them',
        );
      } else {
        logger.warn(
          { resource: name, groups: topology.groups.size },
          'Resource matches no IOMMU group and advertises no devices: check its selectors against the groups discovered',
        );
      }
    }
    for (const name of this.unmatched.keys()) {
      if (!now.has(name) && !empty) {
        logger.info({ resource: name }, 'Resource matches IOMMU groups again');
      }
    }
    this.unmatched = new Map([...now].map(([name, entry]) => [name, JSON.stringify(entry)]));
  }

  private unmatchedResources(topology: Topology): Map<string, UnmatchedResource> {
    const selection = selectGroups(topology, this.options.resources);
    const conflicted = new Set(selection.conflicts.flatMap((c) => c.resources));
    const out = new Map<string, UnmatchedResource>();
    for (const resource of this.options.resources) {
      // A resource that lost its groups to a conflict is reported as a conflict already.
      if ((selection.byResource.get(resource.name)?.length ?? 0) > 0 || conflicted.has(resource.name)) continue;
      const hostOwned = [...topology.groups.values()]
        .filter((g) => !g.vfioCandidate && groupMatches(g, resource.selectors))
        .map((g) => g.id)
        .sort((a, b) => a - b);
      out.set(resource.name, { resource: resource.name, hostOwned });
    }
    return out;
  }
}
