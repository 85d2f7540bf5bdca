// Runs in the guest on the ppc64le node: prints one JSON line describing the
// runtime and the IOMMU group the harness bound to vfio-pci.
import { readdirSync, readFileSync, existsSync, readlinkSync } from 'node:fs';
import { endianness } from 'node:os';

const group = process.env.PVDP_GROUP;
const read = (p) => {
  try {
    return readFileSync(p, 'utf8').trim();
  } catch {
    return null;
  }
};
const gdir = `/sys/kernel/iommu_groups/${group}`;
const members = existsSync(`${gdir}/devices`) ? readdirSync(`${gdir}/devices`) : [];
const info = {
  arch: process.arch,
  platform: process.platform,
  version: process.version,
  endianness: endianness(),
  group: group === undefined ? null : Number(group),
  groupName: read(`${gdir}/name`),
  members: members.map((bdf) => ({
    bdf,
    driver: (() => {
      try {
        return readlinkSync(`/sys/bus/pci/devices/${bdf}/driver`).split('/').pop();
      } catch {
        return null;
      }
    })(),
    vendor: read(`/sys/bus/pci/devices/${bdf}/vendor`),
    device: read(`/sys/bus/pci/devices/${bdf}/device`),
    eehPeState: read(`/sys/bus/pci/devices/${bdf}/eeh_pe_state`),
  })),
  devNode: existsSync(`/dev/vfio/${group}`),
  memlock: read('/proc/self/limits')?.split('\n').find((l) => l.startsWith('Max locked memory'))?.replace(/\s+/g, ' ') ?? null,
};
console.log(`NODE ${JSON.stringify(info)}`);
