// What the node reporter writes, computed from a snapshot: the Node condition,
// the capability labels, and the device transitions that become Events. Pure
// functions, so the rules are tested without an API server.
import type { ConflictReport, NodeCapabilities, NodeSnapshot } from './snapshot.js';

/**
 * The Node condition type this plugin owns. CamelCase like the kubelet's own
 * types; True means every advertised IOMMU group can be passed through now.
 */
export const CONDITION_TYPE = 'PowerVfioDevicePluginHealthy';

/** Prefix of every node label this plugin owns; labels under it that we no longer want are removed. */
export const LABEL_PREFIX = 'power-vfio.ibm.com/';

export const ConditionReason = {
  AllDevicesHealthy: 'AllDevicesHealthy',
  DevicesUnhealthy: 'DevicesUnhealthy',
  SelectionConflict: 'SelectionConflict',
  NoDevices: 'NoDevices',
} as const;
export type ConditionReason = (typeof ConditionReason)[keyof typeof ConditionReason];

export const EventReason = {
  DeviceUnhealthy: 'DeviceUnhealthy',
  DeviceHealthy: 'DeviceHealthy',
  DeviceAdded: 'DeviceAdded',
  DeviceRemoved: 'DeviceRemoved',
  SelectionConflict: 'SelectionConflict',
  /** Managed binding could not move a group between its host drivers and vfio-pci. */
  DeviceRebindFailed: 'DeviceRebindFailed',
} as const;
export type EventReason = (typeof EventReason)[keyof typeof EventReason];

export interface ConditionState {
  status: 'True' | 'False';
  reason: ConditionReason;
  message: string;
}

/** Longest condition message written; the API has no hard limit but kubectl output should stay readable. */
export const MAX_CONDITION_MESSAGE = 1024;
/** Longest event message (events.k8s.io/v1 caps `note` at 1 kB; we keep core/v1 events the same). */
export const MAX_EVENT_MESSAGE = 1024;
/** Longest per-group cause quoted in a summary. */
const MAX_CAUSE = 200;

export function truncate(text: string, max: number): string {
  if (text.length <= max) return text;
  return `${text.slice(0, Math.max(0, max - 3)).trimEnd()}...`;
}

/** Joins entries with `sep` while they fit in `max` characters, then says how many were left out. */
export function joinWithin(entries: readonly string[], sep: string, max: number): string {
  const all = entries.join(sep);
  if (all.length <= max) return all;
  let out = '';
  let used = 0;
  for (const entry of entries) {
    const candidate = used === 0 ? entry : `${out}${sep}${entry}`;
    const suffix = `${sep}and ${entries.length - used - 1} more`;
    if (candidate.length + suffix.length > max) break;
    out = candidate;
    used += 1;
  }
  if (used === 0) {
    // Even the first entry is too long: keep a cut version of it.
    const suffix = `${sep}and ${entries.length - 1} more`;
    out = truncate(entries[0] ?? '', Math.max(10, max - suffix.length));
    used = 1;
  }
  return `${out}${sep}and ${entries.length - used} more`;
}

function sortIds(ids: string[]): string[] {
  return ids.sort((a, b) => {
    const na = Number(a);
    const nb = Number(b);
    return Number.isFinite(na) && Number.isFinite(nb) ? na - nb : a.localeCompare(b);
  });
}

function conflictText(conflicts: readonly ConflictReport[]): string {
  const groups = sortIds(conflicts.map((c) => String(c.group)));
  const plural = groups.length === 1 ? 'group' : 'groups';
  return `IOMMU ${plural} ${joinWithin(groups, ', ', 200)} ${groups.length === 1 ? 'matches' : 'match'} several resources and ${groups.length === 1 ? 'is' : 'are'} advertised by none; make the resource selectors disjoint`;
}

/** The condition that summarises a snapshot. */
export function conditionFor(snapshot: NodeSnapshot): ConditionState {
  const conflicts = snapshot.conflicts ?? [];
  let total = 0;
  const unhealthy: string[] = [];
  const perResource: string[] = [];
  for (const resource of snapshot.resources) {
    total += resource.devices.length;
    if (resource.devices.length > 0) perResource.push(`${resource.name}: ${resource.devices.length}`);
    const bad = resource.devices.filter((d) => !d.healthy);
    for (const device of sortDevices(bad)) {
      const cause = device.reason ? `: ${truncate(device.reason, MAX_CAUSE)}` : '';
      unhealthy.push(`${resource.name} group ${device.id}${cause}`);
    }
  }
  if (unhealthy.length > 0) {
    const head = `${unhealthy.length} of ${total} IOMMU groups ${unhealthy.length === 1 ? 'is' : 'are'} Unhealthy: `;
    const tail = conflicts.length > 0 ? `. ${conflictText(conflicts)}` : '';
    const budget = MAX_CONDITION_MESSAGE - head.length - Math.min(tail.length, 300);
    return {
      status: 'False',
      reason: ConditionReason.DevicesUnhealthy,
      message: truncate(head + joinWithin(unhealthy, '; ', budget) + tail, MAX_CONDITION_MESSAGE),
    };
  }
  if (conflicts.length > 0) {
    return { status: 'False', reason: ConditionReason.SelectionConflict, message: truncate(conflictText(conflicts), MAX_CONDITION_MESSAGE) };
  }
  if (total === 0) {
    return {
      status: 'True',
      reason: ConditionReason.NoDevices,
      message: 'No IOMMU group is advertised: no group is bound to vfio-pci and selected by a configured resource',
    };
  }
  return {
    status: 'True',
    reason: ConditionReason.AllDevicesHealthy,
    message: truncate(`All ${total} IOMMU groups are Healthy (${perResource.join(', ')})`, MAX_CONDITION_MESSAGE),
  };
}

function sortDevices<T extends { id: string }>(devices: T[]): T[] {
  const order = sortIds(devices.map((d) => d.id));
  return [...devices].sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id));
}

const LABEL_VALUE_MAX = 63;

/**
 * A valid label value: at most 63 characters of [A-Za-z0-9._-], beginning and
 * ending with an alphanumeric (empty is valid too). Other characters become `-`.
 */
export function labelValue(raw: string): string {
  let value = raw.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, LABEL_VALUE_MAX);
  value = value.replace(/^[^A-Za-z0-9]+/, '').replace(/[^A-Za-z0-9]+$/, '');
  return value;
}

/** 4096 -> `4K`, 16 MiB -> `16M`, 1 GiB -> `1G`; sizes that are not a whole unit stay in bytes. */
export function pageSizeText(bytes: number): string {
  const units: Array<[number, string]> = [
    [2 ** 40, 'T'],
    [2 ** 30, 'G'],
    [2 ** 20, 'M'],
    [2 ** 10, 'K'],
  ];
  for (const [size, suffix] of units) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${suffix}`;
  }
  return String(bytes);
}

/** `4K.64K.2M.1G`: ascending, deduplicated, cut at a whole size to stay within 63 characters. */
export function pageSizesLabel(sizes: readonly number[]): string {
  const parts = [...new Set(sizes.filter((s) => Number.isInteger(s) && s > 0))].sort((a, b) => a - b).map(pageSizeText);
  let out = '';
  for (const part of parts) {
    const next = out.length === 0 ? part : `${out}.${part}`;
    if (next.length > LABEL_VALUE_MAX) break;
    out = next;
  }
  return out;
}

/** The labels (without stale-label removal) a set of capabilities gives. */
export function labelsFor(capabilities: NodeCapabilities, deviceCount: number): Record<string, string> {
  const labels: Record<string, string> = {};
  const set = (key: string, value: string) => {
    const v = labelValue(value);
    if (v.length > 0) labels[`${LABEL_PREFIX}${key}`] = v;
  };
  if (capabilities.spaprTceV2 !== undefined) set('spapr-tce-v2', String(capabilities.spaprTceV2));
  if (capabilities.dynamicWindows !== undefined) set('dynamic-windows', String(capabilities.dynamicWindows));
  if (capabilities.iommuPageSizes && capabilities.iommuPageSizes.length > 0) {
    set('iommu-page-sizes', pageSizesLabel(capabilities.iommuPageSizes));
  }
  if (capabilities.powerGeneration) set('power-generation', capabilities.powerGeneration.toLowerCase());
  if (capabilities.platform) set('platform', capabilities.platform.toLowerCase());
  set('groups', String(capabilities.groups ?? deviceCount));
  return labels;
}

export interface DeviceTransition {
  type: 'Normal' | 'Warning';
  reason: EventReason;
  message: string;
  /** Resource concerned, for summaries; undefined for node-wide events. */
  resource?: string;
  /** Device ID (group number) concerned. */
  device?: string;
}

interface DeviceState {
  healthy: boolean;
  reason: string | undefined;
}

function deviceStates(snapshot: NodeSnapshot | null): Map<string, Map<string, DeviceState>> {
  const out = new Map<string, Map<string, DeviceState>>();
  for (const resource of snapshot?.resources ?? []) {
    const devices = new Map<string, DeviceState>();
    for (const d of resource.devices) devices.set(d.id, { healthy: d.healthy, reason: d.reason });
    out.set(resource.name, devices);
  }
  return out;
}

function because(reason: string | undefined): string {
  return reason ? `: ${truncate(reason, MAX_EVENT_MESSAGE - 120)}` : '';
}

/**
 * Device transitions between two snapshots, one per device. On the first
 * snapshot (`previous` null) only unhealthy devices are worth an Event.
 */
export function transitionsBetween(previous: NodeSnapshot | null, next: NodeSnapshot): DeviceTransition[] {
  const before = deviceStates(previous);
  const after = deviceStates(next);
  const out: DeviceTransition[] = [];
  for (const [resource, devices] of after) {
    const old = before.get(resource);
    for (const id of sortIds([...devices.keys()])) {
      const now = devices.get(id);
      if (!now) continue;
      const was = old?.get(id);
      if (!was) {
        if (!now.healthy) {
          out.push({
            type: 'Warning',
            reason: EventReason.DeviceUnhealthy,
            message: `IOMMU group ${id} of resource ${resource} is Unhealthy${because(now.reason)}`,
            resource,
            device: id,
          });
        } else if (previous !== null) {
          out.push({
            type: 'Normal',
            reason: EventReason.DeviceAdded,
            message: `IOMMU group ${id} of resource ${resource} was added and is Healthy`,
            resource,
            device: id,
          });
        }
      } else if (was.healthy && !now.healthy) {
        out.push({
          type: 'Warning',
          reason: EventReason.DeviceUnhealthy,
          message: `IOMMU group ${id} of resource ${resource} became Unhealthy${because(now.reason)}`,
          resource,
          device: id,
        });
      } else if (!was.healthy && now.healthy) {
        out.push({
          type: 'Normal',
          reason: EventReason.DeviceHealthy,
          message: `IOMMU group ${id} of resource ${resource} is Healthy again`,
          resource,
          device: id,
        });
      }
    }
  }
  for (const [resource, devices] of before) {
    const now = after.get(resource);
    for (const id of sortIds([...devices.keys()])) {
      if (now?.has(id)) continue;
      out.push({
        type: 'Warning',
        reason: EventReason.DeviceRemoved,
        message: `IOMMU group ${id} of resource ${resource} is gone (hot-unplugged, unbound from VFIO or no longer selected)`,
        resource,
        device: id,
      });
    }
  }
  const oldConflicts = new Set((previous?.conflicts ?? []).map((c) => String(c.group)));
  for (const conflict of next.conflicts ?? []) {
    if (oldConflicts.has(String(conflict.group))) continue;
    out.push({
      type: 'Warning',
      reason: EventReason.SelectionConflict,
      message: `IOMMU group ${conflict.group} matches resources ${conflict.resources.join(', ')} and is advertised by none; make the selectors disjoint`,
      device: String(conflict.group),
    });
  }
  return out;
}

/** The verb of a transition's summary line. */
const SUMMARY_VERB: Record<EventReason, string> = {
  DeviceUnhealthy: 'became Unhealthy',
  DeviceHealthy: 'are Healthy again',
  DeviceAdded: 'were added',
  DeviceRemoved: 'are gone',
  SelectionConflict: 'match several resources and are advertised by none',
  DeviceRebindFailed: 'could not be moved between their host drivers and vfio-pci',
};

/** One line for many transitions of the same kind: a burst (a PHB freeze takes many PEs at once). */
export function summaryMessage(reason: EventReason, resource: string | undefined, devices: readonly string[]): string {
  const ids = joinWithin(sortIds([...devices]), ', ', 600);
  const of = resource ? ` of resource ${resource}` : '';
  return truncate(`${devices.length} IOMMU groups${of} ${SUMMARY_VERB[reason]}: ${ids}`, MAX_EVENT_MESSAGE);
}
