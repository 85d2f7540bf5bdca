// The one inventory both kubelet front ends serve: which configured resource
// each discovered group belongs to and how healthy it is now. The daemon
// applies every topology here; the device plugin and the DRA driver only adapt
// the result to their own wire.
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { ResourceConfig } from '../config/schema.js';
import { selectGroups, type SelectionConflict } from '../config/selection.js';
import type { Topology } from '../topology/types.js';
import { groupHealth, type GroupHealth } from '../health/group-health.js';
import type { IommuGroup } from '../topology/types.js';
import { hostDriverProblem } from '../topology/scan.js';
import type { AdvertisedDevice } from './advertised.js';

/**
 * A managed group as health judges it: the allowed host drivers its endpoints
 * are on, and the /dev/vfio node that appears once they move, are prepare's
 * to change, not faults. Everything else (EEH, AER, a driver that is not
 * allowed, a function that cannot be read) still counts.
 */
export function managedHealthView(group: IommuGroup, allowedDrivers: readonly string[]): IommuGroup {
  const movable = group.functions.filter((fn) => !fn.isBridge && fn.driver !== null && allowedDrivers.includes(fn.driver));
  const expected = new Set(movable.map((fn) => hostDriverProblem(fn.address, fn.driver!)));
  const nodeProblem = (p: string): boolean => p.startsWith('Device node ') && p.endsWith(`; bind the functions of group ${group.id} to vfio-pci`);
  // The node is missing only until the functions move; once none is left to move it is a fault again.
  const waiting = movable.length > 0 || group.functions.some((fn) => !fn.isBridge && fn.driver === null);
  const problems = group.problems.filter((p) => !expected.has(p) && !(waiting && nodeProblem(p)));
  return { ...group, problems, usable: problems.length === 0 };
}

/** What is offered now, per resource, with the selection conflicts. */
export interface InventoryState {
  /** Every configured resource, its devices ascending by group number. */
  byResource: ReadonlyMap<string, readonly AdvertisedDevice[]>;
  conflicts: readonly SelectionConflict[];
  /** The topology this state was computed from. */
  topology: Topology;
}

/** The devices of each resource and the conflicts, as plain data for reporting and metrics. */
export interface InventorySnapshot {
  resources: { name: string; devices: { id: string; healthy: boolean; reason?: string }[] }[];
  conflicts: SelectionConflict[];
}

export interface InventoryOptions {
  resources: readonly ResourceConfig[];
  /** A group's health; defaults to the stateless rules of group-health.ts. */
  health?: (group: IommuGroup) => GroupHealth;
  logger?: Logger;
}

const EMPTY_TOPOLOGY: Topology = { groups: new Map(), containerNode: false, issues: [] };

export class Inventory {
  readonly resources: readonly ResourceConfig[];
  private readonly health: (group: IommuGroup) => GroupHealth;
  private readonly logger: Logger;
  private state: InventoryState;
  private conflictsText = '';

  constructor(options: InventoryOptions) {
    this.resources = options.resources;
    this.health = options.health ?? groupHealth;
    this.logger = (options.logger ?? silentLogger()).child({ room: 'inventory' });
    this.state = { byResource: new Map(options.resources.map((r) => [r.name, []])), conflicts: [], topology: EMPTY_TOPOLOGY };
  }

  /** Recomputes selection and health from a topology; returns the new state. */
  apply(topology: Topology): InventoryState {
    const selection = selectGroups(topology, this.resources);
    const byResource = new Map<string, AdvertisedDevice[]>();
    for (const resource of this.resources) {
      const groups = selection.byResource.get(resource.name) ?? [];
      byResource.set(
        resource.name,
        groups.map((group) => {
          const managed = resource.binding?.mode === 'managed';
          const health = this.health(managed ? managedHealthView(group, resource.binding?.allowedDrivers ?? []) : group);
          return { group, healthy: health.healthy, ...(health.reason ? { reason: health.reason } : {}) };
        }),
      );
    }
    this.state = { byResource, conflicts: selection.conflicts, topology };
    const text = JSON.stringify(selection.conflicts);
    if (text !== this.conflictsText) {
      this.conflictsText = text;
      for (const conflict of selection.conflicts) {
        this.logger.warn(
          { group: conflict.group, resources: conflict.resources },
          'IOMMU group matches several resources; offered by none until the selectors are made disjoint',
        );
      }
    }
    return this.state;
  }

  current(): InventoryState {
    return this.state;
  }

  resource(name: string): ResourceConfig | undefined {
    return this.resources.find((r) => r.name === name);
  }

  snapshot(): InventorySnapshot {
    return {
      resources: this.resources.map((r) => ({
        name: r.name,
        devices: (this.state.byResource.get(r.name) ?? []).map((d) => ({
          id: String(d.group.id),
          healthy: d.healthy,
          ...(d.reason ? { reason: d.reason } : {}),
        })),
      })),
      conflicts: [...this.state.conflicts],
    };
  }
}
