// Pure parsers for the text sysfs hands us. Kept apart from the I/O so every
// odd spelling seen on real kernels can be tested on strings alone.
import type { EehInfo } from './types.js';

/** `DDDD:BB:DD.F`, domain 4+ hex digits (sysfs prints at least 4). */
const PCI_ADDRESS = /^([0-9a-f]{4,8}):([0-9a-f]{2}):([0-1][0-9a-f])\.([0-7])$/i;

/** True when the name is a PCI address as sysfs spells it. */
export function isPciAddress(text: string): boolean {
  return PCI_ADDRESS.test(text);
}

/** The PCI domain (PHB) of an address; hex in the address, so `0035:...` is 53. */
export function pciDomain(address: string): number | null {
  const m = PCI_ADDRESS.exec(address);
  return m?.[1] === undefined ? null : Number.parseInt(m[1], 16);
}

/** True for a decimal group number as `/sys/kernel/iommu_groups` names them. */
export function isGroupNumber(text: string): boolean {
  return /^(0|[1-9][0-9]{0,9})$/.test(text);
}

/**
 * Normalise a sysfs hex id (`0x1014`, `0x010802`, `1014`) to `digits`
 * lower-case hex digits without `0x`. Null when it is not hex or too wide.
 */
export function normaliseHexId(text: string, digits: number): string | null {
  const m = /^(?:0x)?([0-9a-f]+)$/i.exec(text.trim());
  if (m?.[1] === undefined) return null;
  // Strip leading zeros beyond the width before judging the width.
  const value = m[1].toLowerCase().replace(/^0+(?=.)/, '');
  if (value.length > digits) return null;
  return value.padStart(digits, '0');
}

/** What identifies a PCI function to a selector: ids as `PciFunction` spells them. */
export interface PciIdentity {
  vendor: string;
  device: string;
  classCode: string;
  subsystemVendor: string;
  subsystemDevice: string;
}

const UEVENT_ID_PAIR = /^([0-9a-f]{4}):([0-9a-f]{4})$/i;
const UEVENT_CLASS = /^[0-9a-f]{4,6}$/i;

/** The value of `key` in uevent text that starts with a newline; null when absent or given twice. */
function ueventValue(text: string, key: string): string | null {
  const needle = `\n${key}=`;
  const at = text.indexOf(needle);
  if (at < 0 || text.indexOf(needle, at + 1) >= 0) return null;
  const start = at + needle.length;
  const end = text.indexOf('\n', start);
  return text.slice(start, end < 0 ? text.length : end);
}

/**
 * The identity in a PCI function's `uevent` file, one read instead of five.
 * The kernel prints `KEY=value` lines: `PCI_CLASS=%04X` (the 24-bit class,
 * upper case, at least four digits), `PCI_ID=%04X:%04X` (vendor:device),
 * `PCI_SUBSYS_ID=%04X:%04X` and `PCI_SLOT_NAME` (the address), among keys
 * not used here (DRIVER, MODALIAS, OF_* on device-tree platforms). Null
 * unless all four are there once each, well formed, and the slot is
 * `address`: anything less and the caller reads the attribute files.
 */
export function parsePciUevent(text: string, address: string): PciIdentity | null {
  const t = `\n${text}`;
  const id = ueventValue(t, 'PCI_ID');
  const cls = ueventValue(t, 'PCI_CLASS');
  const subsys = ueventValue(t, 'PCI_SUBSYS_ID');
  const slot = ueventValue(t, 'PCI_SLOT_NAME');
  if (id === null || cls === null || subsys === null || slot === null) return null;
  if (slot.toLowerCase() !== address.toLowerCase()) return null;
  const ids = UEVENT_ID_PAIR.exec(id);
  const sub = UEVENT_ID_PAIR.exec(subsys);
  if (ids?.[1] === undefined || ids[2] === undefined || sub?.[1] === undefined || sub[2] === undefined || !UEVENT_CLASS.test(cls)) return null;
  return {
    vendor: ids[1].toLowerCase(),
    device: ids[2].toLowerCase(),
    classCode: cls.toLowerCase().padStart(6, '0'),
    subsystemVendor: sub[1].toLowerCase(),
    subsystemDevice: sub[2].toLowerCase(),
  };
}

/** A decimal integer such as `numa_node` (`-1`, `0`, `8`); null when not one. */
export function parseDecimal(text: string): number | null {
  const t = text.trim();
  if (!/^-?[0-9]{1,10}$/.test(t)) return null;
  return Number.parseInt(t, 10);
}

/** A hex number with or without `0x` (`eeh_pe_config_addr`, `eeh_mode`); null when not one. */
export function parseHexNumber(text: string): number | null {
  const m = /^(?:0x)?([0-9a-f]{1,13})$/i.exec(text.trim());
  return m?.[1] === undefined ? null : Number.parseInt(m[1], 16);
}

/** `driver_override` content: null when unset (`(null)`, empty). */
export function parseDriverOverride(text: string): string | null {
  const t = text.trim();
  return t === '' || t === '(null)' ? null : t;
}

export interface GroupName {
  /** PHB number, printed in decimal by the kernel (`domain%d`). */
  phb: number;
  /** PE number, printed in hex (`pe%lx`). */
  pe: number;
}

/** Parse a group `name` such as `domain53-pe1fd`; null for any other spelling. */
export function parseGroupName(name: string): GroupName | null {
  const m = /^domain([0-9]{1,10})-pe([0-9a-f]{1,13})$/i.exec(name.trim());
  if (m?.[1] === undefined || m[2] === undefined) return null;
  return { phb: Number.parseInt(m[1], 10), pe: Number.parseInt(m[2], 16) };
}

/** EEH hardware state bits (first word of `eeh_pe_state`). */
export const EEH_HW_MMIO_ACTIVE = 0x08;
export const EEH_HW_DMA_ACTIVE = 0x10;
/** EEH software state bits (second word). */
export const EEH_SW_ISOLATED = 0x01;

export interface EehPeState {
  hardwareState: number | null;
  softwareState: number | null;
}

/**
 * Parse `eeh_pe_state`: "0x%08x 0x%08x" on current kernels, the same words
 * without `0x` on older ones. A lone word is taken as the hardware state.
 * Null when the text is not one or two hex words.
 */
export function parseEehPeState(text: string): EehPeState | null {
  const words = text.trim().split(/\s+/);
  if (words.length < 1 || words.length > 2 || words[0] === '') return null;
  const hardwareState = parseHexNumber(words[0] ?? '');
  if (hardwareState === null) return null;
  if (words[1] === undefined) return { hardwareState, softwareState: null };
  const softwareState = parseHexNumber(words[1]);
  if (softwareState === null) return null;
  return { hardwareState, softwareState };
}

/**
 * Frozen when the PE is ISOLATED, or the hardware does not report both MMIO and
 * DMA active. Unknown words do not count as frozen: absence of evidence is
 * left to the health checks, which can re-read the state.
 */
export function isEehFrozen(state: EehPeState): boolean {
  const { hardwareState, softwareState } = state;
  if (softwareState !== null && (softwareState & EEH_SW_ISOLATED) !== 0) return true;
  const active = EEH_HW_MMIO_ACTIVE | EEH_HW_DMA_ACTIVE;
  if (hardwareState !== null && (hardwareState & active) !== active) return true;
  return false;
}

/** Build `EehInfo` from whatever parts could be read; `stateUnknown` says why the PE state is not known. */
export function makeEehInfo(
  state: EehPeState | null,
  configAddr: number | null,
  mode: number | null,
  source: string,
  stateUnknown?: string,
): EehInfo {
  const s = state ?? { hardwareState: null, softwareState: null };
  return {
    hardwareState: s.hardwareState,
    softwareState: s.softwareState,
    configAddr,
    mode,
    frozen: isEehFrozen(s),
    source,
    ...(stateUnknown !== undefined ? { stateUnknown } : {}),
  };
}

/** Errors of an EEH attribute that mean the kernel exposes no EEH for the device. */
const EEH_ABSENT_CODES: ReadonlySet<string> = new Set(['ENOENT', 'ENODEV']);

/** What one read of `eeh_pe_state` tells: no EEH here, a state, or a state present but unknown. */
export type EehStateReading =
  | { kind: 'absent' }
  | { kind: 'known'; state: EehPeState }
  | { kind: 'unknown'; reason: string };

/**
 * Judges one read of `eeh_pe_state` at `path`. A missing file or ENODEV is
 * EEH switched off for the device (pseries under TCG, no PE): nothing to
 * judge. Any other error, or text that is not one or two hex words, is a PE
 * whose state exists but cannot be known: that is doubt, not health.
 */
export function decodeEehStateRead(path: string, read: { ok: true; text: string } | { ok: false; code: string }): EehStateReading {
  if (!read.ok) {
    if (EEH_ABSENT_CODES.has(read.code)) return { kind: 'absent' };
    return { kind: 'unknown', reason: `${path} cannot be read (${read.code})` };
  }
  const state = parseEehPeState(read.text);
  if (state === null) {
    return { kind: 'unknown', reason: `${path} reads ${JSON.stringify(read.text.trim().slice(0, 40))}, not one or two hex words` };
  }
  return { kind: 'known', state };
}

/** True when an attribute read failed only because EEH is absent. */
export function isEehAbsentCode(code: string): boolean {
  return EEH_ABSENT_CODES.has(code);
}

/** Last path component of a symlink target (`../../../bus/pci/drivers/nvme` -> `nvme`). */
export function linkBasename(target: string): string {
  const trimmed = target.replace(/\/+$/, '');
  const i = trimmed.lastIndexOf('/');
  return i < 0 ? trimmed : trimmed.slice(i + 1);
}

/** Vendor-neutral rule from the kernel: drivers named vfio* are VFIO drivers (vfio-pci and its variants). */
export function isVfioDriver(driver: string): boolean {
  return driver.includes('vfio');
}

/**
 * `aer_dev_fatal` holds one "NAME count" line per error type and a closing
 * `TOTAL_ERR_FATAL n`. Returns that total, or null when it is not there.
 */
export function parseAerFatalTotal(text: string): number | null {
  const match = /^TOTAL_ERR_FATAL\s+(\d+)\s*$/m.exec(text);
  if (!match) return null;
  const n = Number(match[1]);
  return Number.isSafeInteger(n) ? n : null;
}

/**
 * The root complex of a device from its sysfs link target
 * (`../../../devices/pci0030:00/0030:00:00.0/0030:01:00.0` -> `pci0030:00`):
 * the first path part of the form `pciDDDD:BB`. Null when there is none.
 */
export function parsePcieRoot(target: string): string | null {
  for (const part of target.split('/')) {
    if (/^pci[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}$/.test(part)) return part.toLowerCase();
  }
  return null;
}
