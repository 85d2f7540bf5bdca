// Reads IOMMU groups out of sysfs and /dev/vfio under the given roots. Async
// I/O only, so a node with thousands of groups never blocks the event loop:
// a few groups go through libuv's pool, a full scan of many through a worker
// thread that answers requests in batches (sysfs-worker.ts). Groups are
// scanned a bounded number at a time, so neither is flooded with tens of
// thousands of requests at once.
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import {
  isGroupNumber,
  isPciAddress,
  isVfioDriver,
  linkBasename,
  parseGroupName,
  parseAerFatalTotal,
} from './parse.js';
import { attrRequest, linkRequest, listedNames, listRequest, poolReader, rareRequest, statRequest, type ReadResult, type SysfsReader } from './sysfs-read.js';
import { WorkerReader } from './sysfs-worker.js';
import type { DiscoveryIssue, DiscoveryRoots, EehInfo, IommuGroup, PciFunction, Topology } from './types.js';
import { readEeh, readFunction, scanDirs, type ScanDirs } from './scan-function.js';
import { errCode, exists, groupDevNodePath, iommuGroupsDir, pciDevicesDir, vfioDevDir } from './sysfs-paths.js';

export { groupDevNodePath, iommuGroupsDir, pciDevicesDir, vfioDevDir } from './sysfs-paths.js';

export interface DiscoverOptions {
  logger?: Logger;
  /** Groups scanned at once; the default keeps the reader busy without flooding it. */
  concurrency?: number;
  /**
   * Read through a worker thread (true) or libuv's pool (false). Default: the
   * worker for WORKER_MIN_GROUPS groups or more, where its start-up (some
   * 40 ms and 10 MiB while it lives) pays for itself.
   */
  worker?: boolean;
  /** Ends the scan between groups (shutdown during a long scan); the promise rejects with the reason. */
  signal?: AbortSignal;
}

export interface GroupScanResult {
  /** Null when the group does not exist in sysfs. */
  group: IommuGroup | null;
  issues: DiscoveryIssue[];
}

/** Groups in flight through libuv's pool: keeps its threads busy without queueing thousands of requests. */
const DEFAULT_CONCURRENCY = 32;
/** Groups in flight through the worker: enough that each message to it carries hundreds of requests. */
const WORKER_CONCURRENCY = 128;
/** Full scans of this many groups or more read through a worker thread. */
export const WORKER_MIN_GROUPS = 128;

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
async function scanGroup(reader: SysfsReader, roots: DiscoveryRoots, dirs: ScanDirs, id: number, devNodeKnown?: boolean): Promise<GroupScanResult> {
  const groupDir = `${dirs.groups}/${id}`;
  const devNodePath = groupDevNodePath(roots, id);
  const issues: DiscoveryIssue[] = [];

  const [entriesR, nameR, devNodeR] = (await reader.gather([
    listRequest(groupDir, 'devices'),
    attrRequest(groupDir, 'name'),
    ...(devNodeKnown === undefined ? [statRequest(devNodePath)] : []),
  ])) as [ReadResult, ReadResult, ReadResult | undefined];
  const devNode = devNodeKnown ?? devNodeR?.ok === true;

  let entries: string[] = [];
  if (entriesR.ok) {
    entries = listedNames(entriesR.text);
  } else {
    const [groupDirR] = (await reader.gather([statRequest(groupDir)])) as [ReadResult];
    if (!groupDirR.ok) {
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
  const eehRead = firstAddress === undefined ? Promise.resolve(null) : readEeh(reader, dirs, id, firstAddress);
  const [scans, eehResult] = await Promise.all([Promise.all(addresses.map((a) => readFunction(reader, dirs, id, a))), eehRead]);
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
  return scanGroup(poolReader, roots, scanDirs(roots), id);
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
  const dirs = scanDirs(roots);
  const useWorker = options.worker ?? listing.ids.length >= WORKER_MIN_GROUPS;
  const reader = useWorker ? new WorkerReader() : null;
  const onAbort = (): void => reader?.close(options.signal?.reason);
  options.signal?.addEventListener('abort', onAbort, { once: true });
  let results: GroupScanResult[];
  try {
    results = await mapLimit(
      listing.ids,
      options.concurrency ?? (reader !== null ? WORKER_CONCURRENCY : DEFAULT_CONCURRENCY),
      (id) => scanGroup(reader ?? poolReader, roots, dirs, id, dev.groups.has(id)),
      options.signal,
    );
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    reader?.close();
  }
  const fellBack = reader?.stats().fellBack;
  if (fellBack !== undefined) log.warn({ reason: fellBack }, 'Discovery read through libuv\'s pool: the reader thread failed');
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
  log.debug({ groupCount: groups.size, issueCount: issues.length, durationMs, readerThread: useWorker }, 'Discovered topology');
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
export async function groupFingerprint(roots: DiscoveryRoots, id: number, devNode: boolean, reader: SysfsReader = poolReader): Promise<string | null> {
  const groupDir = join(iommuGroupsDir(roots), String(id));
  const [listing] = (await reader.gather([listRequest(groupDir, 'devices')])) as [ReadResult];
  if (!listing.ok) {
    if (listing.code === 'ENOENT') {
      try {
        await lstat(groupDir);
      } catch {
        return null;
      }
      return `nodevices|${devNode ? 1 : 0}`;
    }
    return `error:${listing.code}|${devNode ? 1 : 0}`;
  }
  const names = listedNames(listing.text).sort();
  // One round of requests for the whole group: per function its driver and AER
  // fatal counts (a rise is a health change the poll must see), and the PE's EEH state.
  const devicesDir = join(groupDir, 'devices');
  const requests = names.flatMap((n) => {
    const dir = join(devicesDir, n);
    return [linkRequest(dir, 'driver'), rareRequest('read', dir, 'aer_dev_fatal')];
  });
  const first = names[0];
  if (first !== undefined) requests.push(attrRequest(join(devicesDir, first), 'eeh_pe_state'));
  const answers = await reader.gather(requests);
  const parts = names.map((n, i) => {
    const r = answers[2 * i] as ReadResult;
    const aer = answers[2 * i + 1] as ReadResult;
    const aerTotal = aer.ok ? (parseAerFatalTotal(aer.text) ?? '?') : '';
    return `${n}=${r.ok ? linkBasename(r.text) : r.code === 'ENOENT' ? '' : `?${r.code}`}:${aerTotal}`;
  });
  let eeh = '';
  if (first !== undefined) {
    const r = answers[2 * names.length] as ReadResult;
    eeh = r.ok ? r.text.trim() : r.code;
  }
  return `${parts.join(',')}|${devNode ? 1 : 0}|${eeh}`;
}

/**
 * Fingerprints of many groups, in order: the safety poll's pass. On a large
 * node (`readerThreadMinGroups` groups or more, by default as for full scans)
 * the ten or so reads per group go through a reader thread, a system call each
 * there, instead of a trip through libuv's pool each; on an idle node most CPU
 * time is this pass. The thread lives for the pass; should it fail, the pool answers.
 */
export async function fingerprintGroups(
  roots: DiscoveryRoots,
  ids: readonly number[],
  devGroups: ReadonlySet<number>,
  options: { readerThreadMinGroups?: number; concurrency?: number; signal?: AbortSignal; logger?: Logger } = {},
): Promise<(string | null)[]> {
  const reader = ids.length >= (options.readerThreadMinGroups ?? WORKER_MIN_GROUPS) ? new WorkerReader() : null;
  const signal = options.signal;
  const onAbort = (): void => reader?.close(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await mapLimit(ids, reader !== null ? WORKER_CONCURRENCY : (options.concurrency ?? DEFAULT_CONCURRENCY), (id) => groupFingerprint(roots, id, devGroups.has(id), reader ?? poolReader), signal);
  } finally {
    signal?.removeEventListener('abort', onAbort);
    reader?.close();
    const fellBack = reader?.stats().fellBack;
    if (fellBack !== undefined) options.logger?.warn({ reason: fellBack }, "Fingerprints read through libuv's pool: the reader thread failed");
  }
}
