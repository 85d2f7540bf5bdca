// One PCI function of a group as sysfs shows it (identity, driver, NUMA node, SR-IOV parent,
// AER counters), and the EEH state of the PE behind it.
import { join } from 'node:path';
import {
  isPciAddress,
  linkBasename,
  makeEehInfo,
  normaliseHexId,
  parseDecimal,
  parseDriverOverride,
  parseHexNumber,
  parsePciUevent,
  pciDomain,
  type EehPeState,
  parseAerFatalTotal,
  parsePcieRoot,
  decodeEehStateRead,
  isEehAbsentCode,
} from './parse.js';
import { attrRequest, linkRequest, rareRequest, statRequest, type ReadResult, type SysfsReader, type SysfsRequest } from './sysfs-read.js';
import type { DiscoveryIssue, DiscoveryRoots, EehInfo, PciFunction } from './types.js';
import { iommuGroupsDir, pciDevicesDir } from './sysfs-paths.js';

/** The two directories a scan reads functions through, joined once per scan. */
export interface ScanDirs {
  /** `<sysfsRoot>/sys/kernel/iommu_groups` */
  groups: string;
  /** `<sysfsRoot>/sys/bus/pci/devices` */
  bus: string;
}

export function scanDirs(roots: DiscoveryRoots): ScanDirs {
  return { groups: iommuGroupsDir(roots), bus: pciDevicesDir(roots) };
}

// ---- one function ----------------------------------------------------------

export interface FunctionScan {
  fn: PciFunction | null;
  /** Why the function could not be read; set when `fn` is null. */
  failure?: string;
  issues: DiscoveryIssue[];
}

/**
 * What a function's directory is asked for first. The identity comes from
 * `uevent` when it parses completely (on a real kernel it matches the
 * attribute files, being printed from the same fields); the driver always
 * from its link, which a rebinding changes, never from uevent's DRIVER line.
 */
function functionRequests(base: string): SysfsRequest[] {
  return [
    attrRequest(base, 'uevent'),
    linkRequest(base, 'driver'),
    attrRequest(base, 'driver_override'),
    attrRequest(base, 'numa_node'),
    rareRequest('link', base, 'physfn'),
    rareRequest('read', base, 'aer_dev_fatal'),
    // The bus (or group) entry links into /sys/devices/pciDDDD:BB/...: the root complex.
    linkRequest(base),
  ];
}
const FUNCTION_REQUESTS = 7;

/** Without a complete uevent: the identity attribute files, one each. */
function identityRequests(base: string): SysfsRequest[] {
  return ['vendor', 'device', 'class', 'subsystem_vendor', 'subsystem_device'].map((a) => attrRequest(base, a));
}

/** Judge what `functionRequests(base)` answered; reads the identity files when uevent does not do. */
async function functionFrom(reader: SysfsReader, base: string, address: string, group: number, answers: readonly ReadResult[]): Promise<FunctionScan> {
  const [ueventR, driverR, overrideR, numaR, physfnR, aerR, selfR] = answers as [ReadResult, ReadResult, ReadResult, ReadResult, ReadResult, ReadResult, ReadResult];
  const issues: DiscoveryIssue[] = [];
  const issue = (attr: string, message: string): void => {
    issues.push({ path: join(base, attr), message, group });
  };

  const fromUevent = ueventR.ok ? parsePciUevent(ueventR.text, address) : null;
  let vendor: string | null;
  let device: string | null;
  let classCode: string | null;
  let subVendorR: ReadResult | null = null;
  let subDeviceR: ReadResult | null = null;
  if (fromUevent !== null) {
    ({ vendor, device, classCode } = fromUevent);
  } else {
    const [vendorR, deviceR, classR, sv, sd] = (await reader.gather(identityRequests(base))) as [ReadResult, ReadResult, ReadResult, ReadResult, ReadResult];
    subVendorR = sv;
    subDeviceR = sd;
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
    vendor = required(vendorR, 'vendor', 4);
    device = required(deviceR, 'device', 4);
    classCode = required(classR, 'class', 6);
  }

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
      subsystemVendor: fromUevent !== null ? fromUevent.subsystemVendor : optionalHex(subVendorR!, 'subsystem_vendor'),
      subsystemDevice: fromUevent !== null ? fromUevent.subsystemDevice : optionalHex(subDeviceR!, 'subsystem_device'),
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

async function readFunctionAt(reader: SysfsReader, base: string, address: string, group: number): Promise<FunctionScan> {
  return functionFrom(reader, base, address, group, await reader.gather(functionRequests(base)));
}

/**
 * Read one function through `/sys/bus/pci/devices/BDF`; when that link is
 * missing or broken, through the group's own link to the same device. The
 * group's link is what makes the function a member: when it cannot be
 * resolved, whatever the bus link shows is not known to be this member.
 */
export async function readFunction(reader: SysfsReader, dirs: ScanDirs, group: number, address: string): Promise<FunctionScan> {
  const busPath = `${dirs.bus}/${address}`;
  const groupPath = `${dirs.groups}/${group}/devices/${address}`;
  // One trip for the function and its group link.
  const answers = await reader.gather([...functionRequests(busPath), statRequest(groupPath)]);
  const groupLinkR = answers[FUNCTION_REQUESTS] as ReadResult;
  if (!groupLinkR.ok) {
    return {
      fn: null,
      failure: `its link ${groupPath} cannot be resolved (${groupLinkR.code})`,
      issues: [{ path: groupPath, message: `The group link of function ${address} cannot be resolved: ${groupLinkR.code}`, group }],
    };
  }
  const first = await functionFrom(reader, busPath, address, group, answers.slice(0, FUNCTION_REQUESTS));
  if (first.fn !== null) return first;
  const [busLinkR] = (await reader.gather([statRequest(busPath)])) as [ReadResult];
  if (busLinkR.ok) return first;
  const second = await readFunctionAt(reader, groupPath, address, group);
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
export async function readEeh(
  reader: SysfsReader,
  dirs: ScanDirs,
  group: number,
  address: string,
): Promise<{ eeh: EehInfo | null; issues: DiscoveryIssue[] }> {
  const base = `${dirs.groups}/${group}/devices/${address}`;
  const statePath = join(base, 'eeh_pe_state');
  const [stateR, addrR, modeR] = (await reader.gather([
    attrRequest(base, 'eeh_pe_state'),
    attrRequest(base, 'eeh_pe_config_addr'),
    attrRequest(base, 'eeh_mode'),
  ])) as [ReadResult, ReadResult, ReadResult];
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

