// What this node's DRA pool looks like as ResourceSlice objects: one device per
// IOMMU group, with the attributes DeviceClasses select on and a NoSchedule taint
// on unhealthy groups. Pure: the publisher decides when and where to write them.
// The API server's schema is structural only; the limits it enforces in code
// (counts, name syntax, value lengths) are checked here, so a pool that would be
// refused fails at build time with the device named instead of as a 422 later.
import { createHash } from 'node:crypto';
import type { AdvertisedDevice } from '../inventory/advertised.js';
import { isVfioDriver } from '../topology/parse.js';
import type { IommuGroup } from '../topology/types.js';
import { deviceNameOf, primaryFunction } from './device-name.js';

export const RESOURCE_SLICE_API_VERSION = 'resource.k8s.io/v1';
export const RESOURCE_SLICE_KIND = 'ResourceSlice';
/** Label on every slice we write, to find them with kubectl; the publisher selects by spec fields. */
export const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
export const MANAGED_BY_VALUE = 'power-vfio-device-plugin';
/** Domain of the attributes Kubernetes standardised. */
export const STANDARD_ATTRIBUTE_DOMAIN = 'resource.kubernetes.io';

/** Limits of resource.k8s.io/v1 that validation enforces beyond the schema. */
export const LIMITS = {
  devicesPerSlice: 128,
  /** When any device of the slice has taints (or counters, or list attributes). */
  devicesPerSliceWithTaints: 64,
  attributesAndCapacityPerDevice: 32,
  attributeNameLength: 32,
  attributeDomainLength: 63,
  attributeStringLength: 64,
  taintsPerDevice: 16,
  objectNameLength: 253,
} as const;

export interface IommuVerification {
  spaprTceV2: boolean;
  dynamicWindows: boolean;
  /** Bytes, ascending. */
  iommuPageSizes: number[];
  /** Bytes of the default DMA window, when the verification read it. */
  defaultWindowSize?: number;
}

/** One device of the pool: a group offered under a configured resource name. */
export interface PublishedDevice {
  /** The configured resource name, e.g. `ibm.com/nvme`; DeviceClasses select on it. */
  resource: string;
  device: AdvertisedDevice;
  /** What a verification of this group learned; absent until one ran. */
  verification?: IommuVerification;
  /** Set for a resource with managed binding: its groups may sit on host drivers until a claim takes them. */
  binding?: 'managed';
  /** The group is moving between drivers now (taken for a claim, or given back). */
  rebinding?: 'taking' | 'givingBack';
  /** The last move of the group failed: why. */
  rebindFailure?: string;
}

export interface SliceContext {
  driver: string;
  nodeName: string;
  /** The Node's uid; the slices get an ownerReference to the Node when it is known. */
  nodeUid?: string;
  platform: 'powernv' | 'pseries' | null;
  generation: number;
}

export interface DeviceAttribute {
  bool?: boolean;
  int?: number;
  string?: string;
  version?: string;
}

export type TaintEffect = 'NoSchedule' | 'NoExecute' | 'None';

export interface DeviceTaint {
  key: string;
  value?: string;
  effect: TaintEffect;
  /** Set by the API server; never sent. */
  timeAdded?: string;
}

/** Why a device is tainted, as the taint's value (a label value). */
export type TaintCause = 'EEHFrozen' | 'AERFatal' | 'DeviceNodeMissing' | 'HostDriver' | 'Unusable';

/** Why a managed device is tainted while or after it moved between drivers. */
export type BindingTaintCause = 'Rebinding' | 'RebindFailed';

export interface SliceDevice {
  name: string;
  attributes?: Record<string, DeviceAttribute>;
  taints?: DeviceTaint[];
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface ResourceSlice {
  apiVersion: typeof RESOURCE_SLICE_API_VERSION;
  kind: typeof RESOURCE_SLICE_KIND;
  metadata: {
    name: string;
    labels?: Record<string, string>;
    ownerReferences?: OwnerReference[];
    uid?: string;
    resourceVersion?: string;
    creationTimestamp?: string;
  };
  spec: {
    driver: string;
    pool: { name: string; generation: number; resourceSliceCount: number };
    nodeName: string;
    devices?: SliceDevice[];
  };
}

// ---- attributes ------------------------------------------------------------------------------

/** 4096 -> `4Ki`, 16 MiB -> `16Mi`: the largest binary unit that divides the size. */
export function formatPageSize(bytes: number): string {
  const units = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi'];
  let value = bytes;
  let unit = 0;
  while (unit < units.length - 1 && value >= 1024 && value % 1024 === 0) {
    value /= 1024;
    unit += 1;
  }
  return `${value}${units[unit]}`;
}

/** The group's PHB: from its name when the kernel gave one, else the PCI domain of its first function. */
function phbOf(group: IommuGroup): number | undefined {
  if (group.phb !== null) return group.phb;
  return group.functions[0]?.domain;
}

/**
 * The device's attributes: the standard ones other components look up
 * (KubeVirt reads `pciBusID`), then ours without a domain.
 */
export function deviceAttributes(d: PublishedDevice, ctx: Pick<SliceContext, 'platform'>): Record<string, DeviceAttribute> {
  const group = d.device.group;
  const fn = primaryFunction(group);
  const attrs: Record<string, DeviceAttribute> = {};
  const std = (name: string) => `${STANDARD_ATTRIBUTE_DOMAIN}/${name}`;
  if (fn) attrs[std('pciBusID')] = { string: fn.address };
  if (fn?.pcieRoot) attrs[std('pcieRoot')] = { string: fn.pcieRoot };
  const numa = group.numaNodes[0];
  if (numa !== undefined && numa >= 0) attrs[std('numaNode')] = { int: numa };

  attrs['resource'] = { string: d.resource };
  attrs['iommuGroup'] = { int: group.id };
  const phb = phbOf(group);
  if (phb !== undefined) attrs['phb'] = { int: phb };
  if (group.pe !== null) attrs['pe'] = { int: group.pe };
  if (fn) {
    attrs['vendor'] = { string: fn.vendor };
    attrs['device'] = { string: fn.device };
    attrs['class'] = { string: fn.classCode };
    if (fn.subsystemVendor) attrs['subsystemVendor'] = { string: fn.subsystemVendor };
    if (fn.subsystemDevice) attrs['subsystemDevice'] = { string: fn.subsystemDevice };
    if (fn.driver) attrs['driver'] = { string: fn.driver };
  }
  attrs['functions'] = { int: group.functions.length };
  if (d.binding === 'managed') {
    attrs['binding'] = { string: 'managed' };
    // Which drivers hold the endpoints now: a host driver until a claim takes the group, then vfio-pci.
    const drivers = [...new Set(group.functions.filter((f) => !f.isBridge).map((f) => f.driver ?? 'none'))].sort();
    attrs['currentDrivers'] = { string: drivers.join(',').slice(0, LIMITS.attributeStringLength) };
  }
  if (ctx.platform) attrs['platform'] = { string: ctx.platform };
  // sPAPR has no iommufd: say so rather than let a consumer infer it from /dev/iommu.
  attrs['iommufd'] = { bool: false };
  attrs['eeh'] = { bool: group.eeh !== null };
  const v = d.verification;
  if (v) {
    attrs['spaprTceV2'] = { bool: v.spaprTceV2 };
    attrs['dynamicWindows'] = { bool: v.dynamicWindows };
    if (v.iommuPageSizes.length > 0) attrs['iommuPageSizes'] = { string: v.iommuPageSizes.map(formatPageSize).join(',') };
    if (v.defaultWindowSize !== undefined) attrs['defaultWindowSize'] = { int: v.defaultWindowSize };
  }
  return attrs;
}

// ---- taints ----------------------------------------------------------------------------------

/** Why an unhealthy device is unhealthy, most specific first; null when healthy. */
export function taintCause(device: AdvertisedDevice): TaintCause | null {
  if (device.healthy) return null;
  const group = device.group;
  if (group.eeh?.frozen) return 'EEHFrozen';
  if (device.reason && /\bAER\b.*\bfatal\b/i.test(device.reason)) return 'AERFatal';
  if (!group.devNode) return 'DeviceNodeMissing';
  if (group.functions.some((fn) => !fn.isBridge && fn.driver !== null && !isVfioDriver(fn.driver))) return 'HostDriver';
  return 'Unusable';
}

export function taintKey(driver: string): string {
  return `${driver}/unhealthy`;
}

/** The key of the taints on a managed device that is moving between drivers or failed to. */
export function bindingTaintKey(driver: string): string {
  return `${driver}/binding`;
}

export function bindingTaintCause(d: PublishedDevice): BindingTaintCause | null {
  if (d.rebinding) return 'Rebinding';
  if (d.rebindFailure !== undefined) return 'RebindFailed';
  return null;
}

/** NoSchedule keeps new claims away; running workloads are not evicted for a health change. */
export function deviceTaints(d: PublishedDevice, driver: string): DeviceTaint[] {
  const taints: DeviceTaint[] = [];
  const cause = taintCause(d.device);
  if (cause !== null) taints.push({ key: taintKey(driver), value: cause, effect: 'NoSchedule' });
  // A group in transition is offered to no new claim; one whose move failed may sit on the wrong driver.
  const binding = bindingTaintCause(d);
  if (binding !== null) taints.push({ key: bindingTaintKey(driver), value: binding, effect: 'NoSchedule' });
  return taints;
}

// ---- slices ----------------------------------------------------------------------------------

/**
 * `<node>-<driver, dots as dashes>-<index>`. When that is no DNS subdomain (over
 * 253 characters, or the node name's last label grows past 63), it becomes one
 * label: the start of that name, dots as dashes, and a hash of the whole so
 * names stay distinct and stable.
 */
export function sliceName(driver: string, nodeName: string, index: number): string {
  const prefix = `${nodeName}-${driver.replace(/\./g, '-')}`;
  const suffix = `-${index}`;
  if (isDnsSubdomain(`${prefix}${suffix}`)) return `${prefix}${suffix}`;
  const hash = createHash('sha256').update(prefix).digest('hex').slice(0, 10);
  const room = 63 - suffix.length - hash.length - 1;
  // A cut may end in '-', which a DNS label forbids.
  const cut = prefix.replace(/\./g, '-').slice(0, room).replace(/-+$/, '');
  return `${cut}-${hash}${suffix}`;
}

/**
 * The pool as slices, devices sorted by name. At most 128 devices a slice, 64
 * whenever any device of the pool is tainted (simpler than packing by slice, and
 * never over). An empty pool is one slice without devices, so readers still see
 * the pool and its generation. Throws, naming the device, when a limit would break.
 */
export function buildSlices(ctx: SliceContext, devices: readonly PublishedDevice[]): ResourceSlice[] {
  checkContext(ctx);
  const built: SliceDevice[] = [];
  const seen = new Map<string, PublishedDevice>();
  for (const d of devices) {
    const name = deviceNameOf(d.device.group);
    const earlier = seen.get(name);
    if (earlier) {
      throw new Error(
        `device ${name} (IOMMU group ${d.device.group.id}, resource ${d.resource}) is offered twice in the pool ` +
          `(also as group ${earlier.device.group.id} of ${earlier.resource}); each group may belong to one resource only`,
      );
    }
    seen.set(name, d);
    const device: SliceDevice = { name, attributes: deviceAttributes(d, ctx) };
    const taints = deviceTaints(d, ctx.driver);
    if (taints.length > 0) device.taints = taints;
    checkDevice(device, d);
    built.push(device);
  }
  built.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  const perSlice = built.some((d) => d.taints && d.taints.length > 0) ? LIMITS.devicesPerSliceWithTaints : LIMITS.devicesPerSlice;
  const chunks: SliceDevice[][] = [];
  for (let i = 0; i < built.length; i += perSlice) chunks.push(built.slice(i, i + perSlice));
  if (chunks.length === 0) chunks.push([]);

  return chunks.map((chunk, index) => {
    const slice: ResourceSlice = {
      apiVersion: RESOURCE_SLICE_API_VERSION,
      kind: RESOURCE_SLICE_KIND,
      metadata: {
        name: sliceName(ctx.driver, ctx.nodeName, index),
        labels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE },
        ...(ctx.nodeUid
          ? { ownerReferences: [{ apiVersion: 'v1', kind: 'Node', name: ctx.nodeName, uid: ctx.nodeUid, controller: false }] }
          : {}),
      },
      spec: {
        driver: ctx.driver,
        pool: { name: ctx.nodeName, generation: ctx.generation, resourceSliceCount: chunks.length },
        nodeName: ctx.nodeName,
        devices: chunk,
      },
    };
    validateSlice(slice);
    return slice;
  });
}

/** True when two slices say the same thing, ignoring what the server adds (uid, resourceVersion, timeAdded...). */
export function sameSliceContent(a: ResourceSlice, b: ResourceSlice): boolean {
  return sliceFingerprint(a) === sliceFingerprint(b);
}

/** What sameSliceContent compares, as a string to keep and compare again. */
export function sliceFingerprint(slice: ResourceSlice): string {
  return canonical(ownedPart(slice));
}

/** The parts of a slice we write, in a comparable form. */
function ownedPart(slice: ResourceSlice): unknown {
  const devices = (slice.spec.devices ?? []).map((d) => ({
    name: d.name,
    attributes: d.attributes ?? {},
    taints: (d.taints ?? []).map((t) => ({ key: t.key, value: t.value ?? '', effect: t.effect })),
  }));
  return {
    name: slice.metadata.name,
    managedBy: slice.metadata.labels?.[MANAGED_BY_LABEL] ?? null,
    owners: (slice.metadata.ownerReferences ?? []).map((o) => ({ apiVersion: o.apiVersion, kind: o.kind, name: o.name, uid: o.uid })),
    driver: slice.spec.driver,
    pool: slice.spec.pool,
    nodeName: slice.spec.nodeName,
    devices,
  };
}

/** JSON with object keys sorted, so key order never makes two equal things differ. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      const obj = v as Record<string, unknown>;
      return Object.fromEntries(Object.keys(obj).sort().map((k) => [k, obj[k]]));
    }
    return v;
  });
}

// ---- limits ----------------------------------------------------------------------------------

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const C_IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
// Semantic versioning 2.0.0, as the API server checks `version` attributes.
const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

export function isDnsLabel(s: string): boolean {
  return s.length <= 63 && DNS_LABEL.test(s);
}

export function isDnsSubdomain(s: string, maxLength: number = LIMITS.objectNameLength): boolean {
  return s.length > 0 && s.length <= maxLength && s.split('.').every((label) => label.length <= 63 && DNS_LABEL.test(label));
}

/** `name` (a C identifier of at most 32) or `domain/name` (a DNS subdomain of at most 63 before the slash). */
export function attributeNameProblem(name: string): string | null {
  const slash = name.indexOf('/');
  const id = slash < 0 ? name : name.slice(slash + 1);
  if (slash >= 0) {
    const domain = name.slice(0, slash);
    if (!isDnsSubdomain(domain, LIMITS.attributeDomainLength)) {
      return `the domain "${domain}" is not a DNS subdomain of at most ${LIMITS.attributeDomainLength} characters`;
    }
  }
  if (id.length > LIMITS.attributeNameLength || !C_IDENTIFIER.test(id)) {
    return `"${id}" is not a C identifier of at most ${LIMITS.attributeNameLength} characters`;
  }
  return null;
}

/** A qualified label name: an optional DNS-subdomain prefix and `/`, then at most 63 characters. */
export function isLabelName(s: string): boolean {
  const slash = s.lastIndexOf('/');
  const name = slash < 0 ? s : s.slice(slash + 1);
  if (slash >= 0 && !isDnsSubdomain(s.slice(0, slash))) return false;
  return name.length > 0 && name.length <= 63 && LABEL_NAME.test(name);
}

export function isLabelValue(s: string): boolean {
  return s.length <= 63 && LABEL_VALUE.test(s);
}

function checkContext(ctx: SliceContext): void {
  if (!isDnsSubdomain(ctx.driver, 63)) throw new Error(`the DRA driver name "${ctx.driver}" is not a DNS subdomain of at most 63 characters`);
  if (!isDnsSubdomain(ctx.nodeName)) throw new Error(`the node name "${ctx.nodeName}" is not a DNS subdomain`);
  if (!Number.isSafeInteger(ctx.generation) || ctx.generation < 0) throw new Error(`the pool generation ${ctx.generation} is not a non-negative integer`);
}

/** Throws, naming the device and its group, when the device breaks a limit of the API. */
function checkDevice(device: SliceDevice, d: PublishedDevice): void {
  const where = `device ${device.name} (IOMMU group ${d.device.group.id}, resource ${d.resource})`;
  const problem = deviceProblem(device);
  if (problem) throw new Error(`${where} cannot be published: ${problem}`);
}

/** The first limit a device breaks, or null. */
export function deviceProblem(device: SliceDevice): string | null {
  if (!isDnsLabel(device.name)) return `its name "${device.name}" is not a DNS label`;
  const attributes = Object.entries(device.attributes ?? {});
  if (attributes.length > LIMITS.attributesAndCapacityPerDevice) {
    return `it has ${attributes.length} attributes, more than the ${LIMITS.attributesAndCapacityPerDevice} allowed`;
  }
  for (const [name, value] of attributes) {
    const nameProblem = attributeNameProblem(name);
    if (nameProblem) return `attribute ${name}: ${nameProblem}`;
    const set = (['bool', 'int', 'string', 'version'] as const).filter((k) => value[k] !== undefined);
    if (set.length !== 1) return `attribute ${name} must have exactly one of bool, int, string, version (has ${set.length})`;
    if (value.int !== undefined && !Number.isSafeInteger(value.int)) return `attribute ${name}: ${value.int} is not an integer`;
    if (value.string !== undefined && value.string.length > LIMITS.attributeStringLength) {
      return `attribute ${name}: "${value.string}" is longer than ${LIMITS.attributeStringLength} characters`;
    }
    if (value.version !== undefined && (value.version.length > LIMITS.attributeStringLength || !SEMVER.test(value.version))) {
      return `attribute ${name}: "${value.version}" is not a semantic version of at most ${LIMITS.attributeStringLength} characters`;
    }
  }
  const taints = device.taints ?? [];
  if (taints.length > LIMITS.taintsPerDevice) return `it has ${taints.length} taints, more than the ${LIMITS.taintsPerDevice} allowed`;
  for (const taint of taints) {
    if (!isLabelName(taint.key)) return `taint key "${taint.key}" is not a label name`;
    if (taint.value !== undefined && !isLabelValue(taint.value)) return `taint value "${taint.value}" is not a label value`;
    if (!['NoSchedule', 'NoExecute', 'None'].includes(taint.effect)) return `taint effect "${taint.effect}" is unknown`;
  }
  return null;
}

/** Throws when a slice breaks a limit of the API: its name, its device count, any device. */
export function validateSlice(slice: ResourceSlice): void {
  const name = slice.metadata.name;
  if (!isDnsSubdomain(name)) throw new Error(`ResourceSlice name "${name}" is not a DNS subdomain of at most 253 characters`);
  const { pool } = slice.spec;
  if (!isDnsSubdomain(pool.name)) throw new Error(`ResourceSlice ${name}: pool name "${pool.name}" is not a DNS subdomain`);
  if (!Number.isSafeInteger(pool.resourceSliceCount) || pool.resourceSliceCount < 1) {
    throw new Error(`ResourceSlice ${name}: resourceSliceCount ${pool.resourceSliceCount} must be at least 1`);
  }
  const devices = slice.spec.devices ?? [];
  const tainted = devices.some((d) => (d.taints?.length ?? 0) > 0);
  const max = tainted ? LIMITS.devicesPerSliceWithTaints : LIMITS.devicesPerSlice;
  if (devices.length > max) {
    throw new Error(`ResourceSlice ${name} has ${devices.length} devices, more than the ${max} allowed${tainted ? ' when devices have taints' : ''}`);
  }
  const names = new Set<string>();
  for (const device of devices) {
    if (names.has(device.name)) throw new Error(`ResourceSlice ${name}: device ${device.name} appears twice`);
    names.add(device.name);
    const problem = deviceProblem(device);
    if (problem) throw new Error(`ResourceSlice ${name}: device ${device.name} cannot be published: ${problem}`);
  }
}
