// Reads IOMMU groups out of sysfs and /dev/vfio under the given roots. Async
// I/O only, so a node with thousands of groups never blocks the event loop;
// work is spread over a small pool so libuv's threads stay busy without
// queueing tens of thousands of requests at once.
import { lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import {
  isGroupNumber,
  isPciAddress,
  isVfioDriver,
  linkBasename,
  makeEehInfo,
  normaliseHexId,
  parseDecimal,
  parseDriverOverride,
  parseEehPeState,
  parseGroupName,
  parseHexNumber,
  pciDomain,
  type EehPeState,
  parseAerFatalTotal,
  parsePcieRoot,
  decodeEehStateRead,
  isEehAbsentCode,
} from './parse.js';
import { readAttr, readLinkAttr, type ReadResult } from './sysfs-read.js';
import type { DiscoveryIssue, DiscoveryRoots, EehInfo, IommuGroup, PciFunction, Topology } from './types.js';

export interface DiscoverOptions {
  logger?: Logger;
  /** Groups scanned at once; the default keeps libuv's pool busy without flooding it. */
  concurrency?: number;
  /** Ends the scan between groups (shutdown during a long scan); the promise rejects with the reason. */
  signal?: AbortSignal;
}

export interface GroupScanResult {
  /** Null when the group does not exist in sysfs. */
  group: IommuGroup | null;
  issues: DiscoveryIssue[];
}

const DEFAULT_CONCURRENCY = 32;

// ---- paths -----------------------------------------------------------------

export function iommuGroupsDir(roots: DiscoveryRoots): string {
  return join(roots.sysfsRoot, 'sys', 'kernel', 'iommu_groups');
}

export function pciDevicesDir(roots: DiscoveryRoots): string {
  return join(roots.sysfsRoot, 'sys', 'bus', 'pci', 'devices');
}

export function vfioDevDir(roots: DiscoveryRoots): string {
  return join(roots.devRoot, 'dev', 'vfio');
}

/** `<devRoot>/dev/vfio/N`. */
export function groupDevNodePath(roots: DiscoveryRoots, id: number): string {
  return join(vfioDevDir(roots), String(id));
}

// ---- small async helpers ---------------------------------------------------

function errCode(err: unknown): string {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : 'EUNKNOWN';
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Run `fn` over `items` with at most `limit` in flight; results keep the input order. An aborted `signal` stops taking items. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>, signal?: AbortSignal): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      signal?.throwIfAborted();
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  const workers = Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker);
  await Promise.all(workers);
  return results;
}

// ---- one function ----------------------------------------------------------

interface FunctionScan {
  fn: PciFunction | null;
  /** Why the function could not be read; set when `fn` is null. */
  failure?: string;
  issues: DiscoveryIssue[];
}

async function readFunctionAt(base: string, address: string, group: number): Promise<FunctionScan> {
  const issues: DiscoveryIssue[] = [];
  const issue = (attr: string, message: string): void => {
    issues.push({ path: join(base, attr), message, group });
  };
  const [vendorR, deviceR, classR, subVendorR, subDeviceR, driverR, overrideR, numaR, physfnR, aerR, selfR] = await Promise.all([
    readAttr(join(base, 'vendor')),
    readAttr(join(base, 'device')),
    readAttr(join(base, 'class')),
    readAttr(join(base, 'subsystem_vendor')),
    readAttr(join(base, 'subsystem_device')),
    readLinkAttr(join(base, 'driver')),
    readAttr(join(base, 'driver_override')),
    readAttr(join(base, 'numa_node')),
    readLinkAttr(join(base, 'physfn')),
    readAttr(join(base, 'aer_dev_fatal')),
    // The bus (or group) entry links into /sys/devices/pciDDDD:BB/...: the root complex.
    readLinkAttr(base),
  ]);

  // Identity attributes are required: without them no selector can match safely.
  const required = (r: ReadResult, attr: string, digits: number): string | null => {
    if (!r.ok) {
      issue(attr, `Cannot read ${attr} of function ${address}: ${r.code}`);
      return null;
    }
    const v = normaliseHexId(r.text, digits);
    if (v === null) issue(attr, `Unexpected content in ${attr} of function ${address}: ${JSON.stringify(r.text.trim().slice(0, 40))}`);
    return v;
  };
  const vendor = required(vendorR, 'vendor', 4);
  const device = required(deviceR, 'device', 4);
  const classCode = required(classR, 'class', 6);

  // The driver decides usability: anything but "no link" that we cannot read is a failure.
  let driver: string | null = null;
  let driverFailed = false;
  if (driverR.ok) driver = linkBasename(driverR.text);
  else if (driverR.code !== 'ENOENT') {
    driverFailed = true;
    issue('driver', `Cannot read the driver link of function ${address}: ${driverR.code}`);
  }

  if (vendor === null || device === null || classCode === null || driverFailed) {
    return { fn: null, failure: 'its identity or driver could not be read', issues };
  }

  const optionalHex = (r: ReadResult, attr: string): string | null => {
    if (!r.ok) return null;
    const v = normaliseHexId(r.text, 4);
    if (v === null) issue(attr, `Unexpected content in ${attr} of function ${address}: ${JSON.stringify(r.text.trim().slice(0, 40))}`);
    return v;
  };

  let numaNode = -1;
  if (numaR.ok) {
    const n = parseDecimal(numaR.text);
    if (n === null || n < -1) issue('numa_node', `Unexpected content in numa_node of function ${address}: ${JSON.stringify(numaR.text.trim().slice(0, 40))}`);
    else numaNode = n;
  }

  let physfn: string | null = null;
  if (physfnR.ok) {
    const parent = linkBasename(physfnR.text);
    if (isPciAddress(parent)) physfn = parent.toLowerCase();
    else issue('physfn', `The physfn link of function ${address} does not name a PCI function: ${physfnR.text}`);
  }

  return {
    fn: {
      address,
      domain: pciDomain(address) ?? 0,
      vendor,
      device,
      subsystemVendor: optionalHex(subVendorR, 'subsystem_vendor'),
      subsystemDevice: optionalHex(subDeviceR, 'subsystem_device'),
      classCode,
      isBridge: classCode.startsWith('06'),
      driver,
      driverOverride: overrideR.ok ? parseDriverOverride(overrideR.text) : null,
      numaNode,
      physfn,
      aerFatal: aerR.ok ? parseAerFatalTotal(aerR.text) : null,
      pcieRoot: selfR.ok ? parsePcieRoot(selfR.text) : null,
    },
    issues,
  };
}

/** stat as a value: null when the path resolves, else the error code. */
async function resolveError(path: string): Promise<string | null> {
  try {
    await stat(path);
    return null;
  } catch (err) {
    return errCode(err);
  }
}

/**
 * Read one function through `/sys/bus/pci/devices/BDF`; when that link is
 * missing or broken, through the group's own link to the same device. The
 * group's link is what makes the function a member: when it cannot be
 * resolved, whatever the bus link shows is not known to be this member.
 */
async function readFunction(roots: DiscoveryRoots, group: number, address: string): Promise<FunctionScan> {
  const busPath = join(pciDevicesDir(roots), address);
  const groupPath = join(iommuGroupsDir(roots), String(group), 'devices', address);
  const [first, groupLinkError] = await Promise.all([readFunctionAt(busPath, address, group), resolveError(groupPath)]);
  if (groupLinkError !== null) {
    return {
      fn: null,
      failure: `its link ${groupPath} cannot be resolved (${groupLinkError})`,
      issues: [{ path: groupPath, message: `The group link of function ${address} cannot be resolved: ${groupLinkError}`, group }],
    };
  }
  if (first.fn !== null || (await exists(busPath))) return first;
  const second = await readFunctionAt(groupPath, address, group);
  const note: DiscoveryIssue = { path: busPath, message: `The bus link of function ${address} is missing or broken`, group };
  if (second.fn !== null) return { fn: second.fn, issues: [note, ...second.issues] };
  return { fn: null, failure: `its device directory ${groupPath} cannot be read`, issues: [note, ...second.issues] };
}

// ---- EEH -------------------------------------------------------------------

/**
 * EEH describes the PE, so any member tells it; read through the group's link
 * (the member as the group knows it). Absent files or ENODEV mean no EEH;
 * a state file that exists but cannot be read or parsed leaves the PE state
 * unknown, which health does not take for healthy.
 */
async function readEeh(roots: DiscoveryRoots, group: number, address: string): Promise<{ eeh: EehInfo | null; issues: DiscoveryIssue[] }> {
  const base = join(iommuGroupsDir(roots), String(group), 'devices', address);
  const statePath = join(base, 'eeh_pe_state');
  const [stateR, addrR, modeR] = await Promise.all([
    readAttr(statePath),
    readAttr(join(base, 'eeh_pe_config_addr')),
    readAttr(join(base, 'eeh_mode')),
  ]);
  const issues: DiscoveryIssue[] = [];
  const absent = (r: ReadResult): boolean => !r.ok && isEehAbsentCode(r.code);
  if (absent(stateR) && absent(addrR) && absent(modeR)) {
    // No EEH. A member whose directory is gone reads the same, but its own
    // failure (readFunction) already keeps the group from being usable.
    return { eeh: null, issues };
  }

  const reading = decodeEehStateRead(statePath, stateR);
  let state: EehPeState | null = null;
  let stateUnknown: string | undefined;
  if (reading.kind === 'known') state = reading.state;
  else if (reading.kind === 'unknown') {
    stateUnknown = reading.reason;
    issues.push({ path: statePath, message: `The EEH state of the PE is unknown: ${reading.reason}`, group });
  }
  const hex = (r: ReadResult, attr: string): number | null => {
    if (!r.ok) {
      if (!isEehAbsentCode(r.code)) issues.push({ path: join(base, attr), message: `Cannot read ${attr}: ${r.code}`, group });
      return null;
    }
    const v = parseHexNumber(r.text);
    if (v === null) issues.push({ path: join(base, attr), message: `Unexpected content in ${attr}: ${JSON.stringify(r.text.trim().slice(0, 40))}`, group });
    return v;
  };
  return { eeh: makeEehInfo(state, hex(addrR, 'eeh_pe_config_addr'), hex(modeR, 'eeh_mode'), address, stateUnknown), issues };
}

// ---- one group -------------------------------------------------------------

/** Drivers that leave a group viable for VFIO besides the vfio ones. */
const HARMLESS_DRIVER = 'pci-stub';
const BRIDGE_DRIVER = 'pcieport';

/** The problem groupProblems reports for an endpoint on a host driver. */
export function hostDriverProblem(address: string, driver: string): string {
  return `Function ${address} is bound to host driver ${driver}; bind it to vfio-pci`;
}

/** The problem groupProblems reports when /dev/vfio/N is missing. */
export function devNodeProblem(devNodePath: string, id: number): string {
  return `Device node ${devNodePath} does not exist; bind the functions of group ${id} to vfio-pci`;
}

/** Why a group is not usable; empty when it is. Exported for tests and callers with their own data. */
export function groupProblems(
  id: number,
  functions: readonly PciFunction[],
  devNode: boolean,
  devNodePath: string,
  unreadable: readonly string[] = [],
): string[] {
  const problems: string[] = [];
  if (functions.length === 0 && unreadable.length === 0) {
    problems.push(`Group ${id} has no PCI functions`);
  }
  for (const u of unreadable) problems.push(u);
  for (const f of functions) {
    const d = f.driver;
    if (d === null || isVfioDriver(d) || d === HARMLESS_DRIVER) continue;
    if (f.isBridge && d === BRIDGE_DRIVER) continue;
    problems.push(
      f.isBridge
        ? `Bridge ${f.address} is bound to driver ${d}; unbind it, or bind it to vfio-pci or pcieport`
        : hostDriverProblem(f.address, d),
    );
  }
  if (!devNode) {
    problems.push(devNodeProblem(devNodePath, id));
  }
  return problems;
}

/**
 * Scan one group. `devNode` may be passed when the caller already listed
 * /dev/vfio (a full scan), saving one stat per group.
 */
async function scanGroup(roots: DiscoveryRoots, id: number, devNodeKnown?: boolean): Promise<GroupScanResult> {
  const groupDir = join(iommuGroupsDir(roots), String(id));
  const devNodePath = groupDevNodePath(roots, id);
  const issues: DiscoveryIssue[] = [];

  const [entriesR, nameR, devNode] = await Promise.all([
    readdir(join(groupDir, 'devices')).then(
      (names) => ({ ok: true as const, names }),
      (err: unknown) => ({ ok: false as const, code: errCode(err) }),
    ),
    readAttr(join(groupDir, 'name')),
    devNodeKnown ?? exists(devNodePath),
  ]);

  let entries: string[] = [];
  if (entriesR.ok) {
    entries = entriesR.names;
  } else {
    if (!(await exists(groupDir))) {
      if (devNode) issues.push({ path: devNodePath, message: `Device node exists but sysfs has no IOMMU group ${id}`, group: id });
      return { group: null, issues };
    }
    issues.push({ path: join(groupDir, 'devices'), message: `Cannot list the devices of group ${id}: ${entriesR.code}`, group: id });
  }
  // Members the group has but that cannot be checked; a listing that failed hides them all.
  const unreadable: string[] = entriesR.ok
    ? []
    : [`The members of group ${id} cannot be listed (${join(groupDir, 'devices')}: ${entriesR.code}); the group cannot be checked`];

  const addresses: string[] = [];
  for (const e of entries) {
    if (isPciAddress(e)) addresses.push(e.toLowerCase());
    else issues.push({ path: join(groupDir, 'devices', e), message: `Unexpected entry in the devices of group ${id}`, group: id });
  }
  addresses.sort();

  // EEH describes the PE; read it from the first member alongside the functions.
  const firstAddress = addresses[0];
  const eehRead = firstAddress === undefined ? Promise.resolve(null) : readEeh(roots, id, firstAddress);
  const [scans, eehResult] = await Promise.all([Promise.all(addresses.map((a) => readFunction(roots, id, a))), eehRead]);
  const functions: PciFunction[] = [];
  scans.forEach((s, i) => {
    issues.push(...s.issues);
    if (s.fn !== null) functions.push(s.fn);
    else unreadable.push(`Function ${addresses[i] ?? '?'} could not be read (${s.failure ?? 'unknown reason'}); the group cannot be checked`);
  });

  let name: string | null = null;
  if (nameR.ok) name = nameR.text.trim();
  else if (nameR.code !== 'ENOENT') issues.push({ path: join(groupDir, 'name'), message: `Cannot read the name of group ${id}: ${nameR.code}`, group: id });
  const parsedName = name === null ? null : parseGroupName(name);
  // The name prints the PHB in decimal; addresses print the domain in hex.
  const domains = [...new Set(functions.map((f) => f.domain))].sort((a, b) => a - b);
  const phb = parsedName?.phb ?? domains[0] ?? null;
  if (domains.length > 1) issues.push({ path: groupDir, message: `Functions of group ${id} span several PCI domains: ${domains.join(', ')}`, group: id });

  const eeh: EehInfo | null = eehResult?.eeh ?? null;
  if (eehResult !== null) issues.push(...eehResult.issues);

  const numaNodes = [...new Set(functions.map((f) => f.numaNode).filter((n) => n >= 0))].sort((a, b) => a - b);
  const problems = groupProblems(id, functions, devNode, devNodePath, unreadable);
  const vfioCandidate = devNode || functions.some((f) => f.driver !== null && isVfioDriver(f.driver));

  return {
    group: {
      id,
      name,
      phb,
      pe: parsedName?.pe ?? null,
      functions,
      devNode,
      numaNodes,
      eeh,
      vfioCandidate,
      usable: problems.length === 0,
      problems,
    },
    issues,
  };
}

/** Scan one group only, for incremental rescans. `group` is null when sysfs has no such group. */
export async function discoverGroup(roots: DiscoveryRoots, id: number): Promise<GroupScanResult> {
  return scanGroup(roots, id);
}

// ---- the whole node --------------------------------------------------------

interface VfioDevListing {
  groups: Set<number>;
  containerNode: boolean;
}

export async function listVfioDevNodes(roots: DiscoveryRoots): Promise<VfioDevListing> {
  try {
    const names = await readdir(vfioDevDir(roots));
    const groups = new Set<number>();
    let containerNode = false;
    for (const n of names) {
      if (n === 'vfio') containerNode = true;
      else if (isGroupNumber(n)) groups.add(Number(n));
    }
    return { groups, containerNode };
  } catch {
    // No /dev/vfio yet: the vfio module is not loaded.
    return { groups: new Set(), containerNode: false };
  }
}

/**
 * The same facts as listVfioDevNodes for a few groups only: one stat per
 * named group instead of reading a directory that holds a node per group.
 */
export async function vfioDevNodesOf(roots: DiscoveryRoots, ids: readonly number[]): Promise<VfioDevListing> {
  const [containerNode, ...present] = await Promise.all([
    exists(join(vfioDevDir(roots), 'vfio')),
    ...ids.map((id) => exists(groupDevNodePath(roots, id))),
  ]);
  return { groups: new Set(ids.filter((_, i) => present[i])), containerNode: containerNode ?? false };
}

export interface GroupListing {
  ids: number[];
  issues: DiscoveryIssue[];
  /** False when the iommu_groups directory itself is missing. */
  present: boolean;
}

export async function listGroupIds(roots: DiscoveryRoots): Promise<GroupListing> {
  const dir = iommuGroupsDir(roots);
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    return { ids: [], issues: [{ path: dir, message: `Cannot list IOMMU groups (${errCode(err)}); is the IOMMU enabled?` }], present: false };
  }
  const ids: number[] = [];
  const issues: DiscoveryIssue[] = [];
  for (const n of names) {
    if (isGroupNumber(n)) ids.push(Number(n));
    else issues.push({ path: join(dir, n), message: 'IOMMU group directory name is not a decimal number' });
  }
  ids.sort((a, b) => a - b);
  return { ids, issues, present: true };
}

/** Scan every IOMMU group of the node. Never throws for odd trees: see `issues`. */
export async function discoverTopology(roots: DiscoveryRoots, options: DiscoverOptions = {}): Promise<Topology> {
  const log = options.logger ?? silentLogger();
  const started = performance.now();
  options.signal?.throwIfAborted();
  const [listing, dev] = await Promise.all([listGroupIds(roots), listVfioDevNodes(roots)]);
  const issues: DiscoveryIssue[] = [...listing.issues];
  const groups = new Map<number, IommuGroup>();
  const results = await mapLimit(
    listing.ids,
    options.concurrency ?? DEFAULT_CONCURRENCY,
    (id) => scanGroup(roots, id, dev.groups.has(id)),
    options.signal,
  );
  for (const r of results) {
    issues.push(...r.issues);
    if (r.group !== null) groups.set(r.group.id, r.group);
  }
  const listed = new Set(listing.ids);
  for (const n of [...dev.groups].sort((a, b) => a - b)) {
    if (!listed.has(n)) {
      issues.push({ path: groupDevNodePath(roots, n), message: `Device node exists but sysfs has no IOMMU group ${n}`, group: n });
    }
  }
  const durationMs = Math.round(performance.now() - started);
  log.debug({ groupCount: groups.size, issueCount: issues.length, durationMs }, 'Discovered topology');
  if (issues.length > 0) {
    log.warn({ issueCount: issues.length, firstIssues: issues.slice(0, 5) }, 'Discovery stepped over odd entries');
  }
  return { groups, containerNode: dev.containerNode, issues };
}

// ---- fingerprints for the cheap poll ----------------------------------------

/**
 * A cheap summary of a group: its members, each member's driver link, the
 * device node and the EEH state word. Equal fingerprints mean no rescan is
 * needed. Null when the group directory does not exist.
 */
export async function groupFingerprint(roots: DiscoveryRoots, id: number, devNode: boolean): Promise<string | null> {
  const groupDir = join(iommuGroupsDir(roots), String(id));
  let names: string[];
  try {
    names = await readdir(join(groupDir, 'devices'));
  } catch (err) {
    if (errCode(err) === 'ENOENT') {
      try {
        await lstat(groupDir);
      } catch {
        return null;
      }
      return `nodevices|${devNode ? 1 : 0}`;
    }
    return `error:${errCode(err)}|${devNode ? 1 : 0}`;
  }
  names.sort();
  const parts = await Promise.all(
    names.map(async (n) => {
      const [r, aer] = await Promise.all([
        readLinkAttr(join(groupDir, 'devices', n, 'driver')),
        readAttr(join(groupDir, 'devices', n, 'aer_dev_fatal')),
      ]);
      // A rise of the AER fatal count is a health change the poll must see.
      const aerTotal = aer.ok ? (parseAerFatalTotal(aer.text) ?? '?') : '';
      return `${n}=${r.ok ? linkBasename(r.text) : r.code === 'ENOENT' ? '' : `?${r.code}`}:${aerTotal}`;
    }),
  );
  const first = names[0];
  let eeh = '';
  if (first !== undefined) {
    const r = await readAttr(join(groupDir, 'devices', first, 'eeh_pe_state'));
    eeh = r.ok ? r.text.trim() : r.code;
  }
  return `${parts.join(',')}|${devNode ? 1 : 0}|${eeh}`;
}
