// A PCI function as vfio-pci presents it: region sizes follow the device's
// sysfs `resource` file (one "start end flags" line per resource: BARs 0-5,
// the ROM, then bridge windows) and the config region its type (256 bytes for
// conventional PCI, 4096 for PCIe). Seen on 6.12: QEMU's edu has a 256-byte
// config region, e1000e 4096; a region the device lacks (VGA, index 8) is
// EINVAL rather than size 0.

export interface PciResource {
  start: bigint;
  end: bigint;
  flags: bigint;
}

/** IORESOURCE_* bits of the flags column. */
export const IORESOURCE_IO = 0x100n;
export const IORESOURCE_MEM = 0x200n;

/** VFIO_REGION_INFO_FLAG_* */
export const REGION_FLAG_READ = 1;
export const REGION_FLAG_WRITE = 2;
export const REGION_FLAG_MMAP = 4;
export const REGION_FLAG_CAPS = 8;

/** VFIO_PCI_*_REGION_INDEX of vfio-pci. */
export const PCI_REGION_BAR5 = 5;
export const PCI_REGION_ROM = 6;
export const PCI_REGION_CONFIG = 7;
export const PCI_REGION_VGA = 8;

export const CONFIG_SIZE_PCI = 256;
export const CONFIG_SIZE_PCIE = 4096;

/** Parses the text of /sys/bus/pci/devices/BDF/resource; RangeError on a malformed line. */
export function parsePciResource(text: string): PciResource[] {
  const out: PciResource[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const words = line.trim().split(/\s+/);
    if (words.length !== 3 || !words.every((w) => /^0x[0-9a-fA-F]{1,16}$/.test(w))) {
      throw new RangeError(`malformed PCI resource line ${JSON.stringify(line.slice(0, 80))}`);
    }
    out.push({ start: BigInt(words[0]!), end: BigInt(words[1]!), flags: BigInt(words[2]!) });
  }
  return out;
}

/** Bytes a resource spans; 0 for an unused one (all zero). */
export function resourceSize(r: PciResource | undefined): bigint {
  if (!r || (r.start === 0n && r.end === 0n) || r.end < r.start) return 0n;
  return r.end - r.start + 1n;
}

/** The inverse of parsePciResource, for simulated devices. */
export function formatPciResource(resources: readonly PciResource[]): string {
  const hex = (v: bigint) => `0x${v.toString(16).padStart(16, '0')}`;
  return resources.map((r) => `${hex(r.start)} ${hex(r.end)} ${hex(r.flags)}`).join('\n') + '\n';
}

/**
 * The region flags vfio-pci reports for BAR `index` with this resource: memory BARs are
 * read/write/mmap (and carry a capability chain on the MSI-X BAR), I/O BARs read/write, unused 0.
 */
export function barRegionFlags(r: PciResource | undefined, isMsixBar: boolean): number {
  if (resourceSize(r) === 0n) return 0;
  if (r!.flags & IORESOURCE_MEM) return REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP | (isMsixBar ? REGION_FLAG_CAPS : 0);
  if (r!.flags & IORESOURCE_IO) return REGION_FLAG_READ | REGION_FLAG_WRITE;
  return 0;
}
