// End-to-end DMA through OUR container sequence, inside the pseries guest, with QEMU's
// `edu` device (1234:11e8). For v1 and for v2:
//   prepareContainer (dist/vfio/container-sequence.js) over the native binding maps DMA
//   memory; GROUP_GET_DEVICE_FD; memory space + bus master on through the config region;
//   through BAR0 the edu DMA engine copies RAM -> its buffer (0x40000) -> another RAM
//   offset, which must hold the pattern; then part of the memory is unmapped with
//   UNMAP_DMA and a device -> RAM DMA into that iova must leave the memory untouched.
// Then, with every test group in one allocation (pseries gives each group a container of its
// own), each edu does the same round trip through the shared memory at the same iova.
// One line per check: `DMA PASS|FAIL <name>[: detail]`, then `DMA SUMMARY passed=N failed=N`.
//
//   node dma/dma-check.mjs [--dist DIR] [--addon FILE] [--group N] [--bdf BDF]
//
// The edu's registers and their byte order: Edu in ../common.mjs.
import { randomBytes } from 'node:crypto';
import { Edu, EDU_BUFFER, EDU_DMA_LENGTH as LEN, EDU_DMA_LIMIT, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY, checkLines, hex, load, nativeBinding, option, testDevices } from '../common.mjs';

const { groups: allGroups, bdfs: allBdfs } = testDevices();
const group = Number(option('group', allGroups[0]));
const bdf = option('bdf', allBdfs[0]);

const { prepareContainer } = await load('vfio/container-sequence.js');

const b = await nativeBinding();
const { check: report, summary, exitCode } = checkLines('DMA');

async function roundTrip(iommu) {
  const tag = `${iommu}`;
  const memorySize = 64n * 1024n;
  const baseline = await b.lockedMemoryBytes();
  let prepared;
  try {
    prepared = await prepareContainer(b, { devRoot: '/', groups: [group], memorySize, iommu });
  } catch (err) {
    report(false, `${tag}: prepareContainer maps DMA memory`, `${err.code ?? ''} ${err.message}`);
    return;
  }
  let deviceFd;
  let edu;
  try {
    const m = prepared.mappings[0];
    const w = prepared.window;
    report(
      prepared.iommu === iommu && prepared.mappings.length === 1 && m.size === memorySize && m.iova + m.size <= EDU_DMA_LIMIT,
      `${tag}: prepareContainer maps ${memorySize / 1024n} KiB at an iova the edu can reach (below 256 MiB)`,
      `window ${hex(w.start)}+${hex(w.size)} pageShift ${w.pageShift} levels ${w.levels}, mapped iova ${hex(m.iova)}+${hex(m.size)}, VmLck +${hex(prepared.lockedBytes)}`,
    );
    if (m.iova + m.size > EDU_DMA_LIMIT) return;

    edu = await Edu.open(b, prepared.groups[0].fd, bdf);
    deviceFd = edu.fd;
    const vendor = await edu.cfgRead16(0);
    const device = await edu.cfgRead16(2);
    const before = await edu.cfgRead16(PCI_COMMAND);
    await edu.cfgWrite16(PCI_COMMAND, before | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const after = await edu.cfgRead16(PCI_COMMAND);
    const big = await edu.probeOrder();
    report(
      vendor === 0x1234 && device === 0x11e8 && (after & PCI_COMMAND_MASTER) !== 0 && (after & PCI_COMMAND_MEMORY) !== 0,
      `${tag}: device fd, bus mastering on through the config region, edu ident through BAR0`,
      `${vendor.toString(16)}:${device.toString(16)}, command ${hex(before)} -> ${hex(after)}, BAR0 ${hex(edu.bar0.size)} bytes, MMIO ${big ? 'big' : 'little'}-endian`,
    );

    // RAM -> device -> RAM through the mapped iova.
    const mem = prepared.memory.address;
    const pattern = randomBytes(LEN);
    const srcOff = 0x1000n;
    const dstOff = 0x6000n;
    b.writeMemory(mem + srcOff, pattern);
    b.writeMemory(mem + dstOff, Buffer.alloc(LEN, 0xee));
    await edu.dma(m.iova + srcOff, EDU_BUFFER, LEN, false);
    await edu.dma(EDU_BUFFER, m.iova + dstOff, LEN, true);
    const back = b.readMemory(mem + dstOff, LEN);
    report(
      back.equals(pattern),
      `${tag}: edu DMA round trip RAM -> device -> RAM through iova ${hex(m.iova + srcOff)} and ${hex(m.iova + dstOff)}`,
      back.equals(pattern) ? `${LEN} bytes` : `first bytes ${back.subarray(0, 8).toString('hex')} != ${pattern.subarray(0, 8).toString('hex')}`,
    );

    // Unmap the second half and DMA into it: the memory must not change.
    const half = memorySize / 2n;
    const holeIova = m.iova + half;
    await b.unmapDma(prepared.containerFd, { iova: holeIova, size: half });
    const holeOff = half + 0x1000n;
    const sentinel = Buffer.alloc(LEN, 0x5a);
    b.writeMemory(mem + holeOff, sentinel);
    const pattern2 = randomBytes(LEN);
    b.writeMemory(mem + srcOff, pattern2);
    await edu.dma(m.iova + srcOff, EDU_BUFFER, LEN, false); // still mapped: loads pattern2 into the device
    let dmaError = null;
    try {
      await edu.dma(EDU_BUFFER, holeIova + 0x1000n, LEN, true);
    } catch (err) {
      dmaError = err.message; // a stuck engine / frozen PE is an acceptable way to be blocked
    }
    const hole = b.readMemory(mem + holeOff, LEN);
    report(
      hole.equals(sentinel),
      `${tag}: DMA into an unmapped iova (${hex(holeIova + 0x1000n)}, unmapped by UNMAP_DMA) is blocked, memory untouched`,
      hole.equals(sentinel) ? (dmaError ? `device reported: ${dmaError}` : 'the device ran, the IOMMU dropped the write') : `memory changed: ${hole.subarray(0, 8).toString('hex')}`,
    );
    // The still-mapped half keeps working after the blocked DMA (skipped when the device stopped).
    if (!dmaError) {
      const dst2 = 0x3000n;
      await edu.dma(EDU_BUFFER, m.iova + dst2, LEN, true);
      const again = b.readMemory(mem + dst2, LEN);
      report(again.equals(pattern2), `${tag}: the mapped half still takes DMA after the blocked one`, again.equals(pattern2) ? '' : 'data differs');
    }
  } catch (err) {
    report(false, `${tag}: DMA checks ran`, `${err.code ?? ''} ${err.stack ?? err.message}`);
  } finally {
    if (edu) {
      try {
        const cmd = await edu.cfgRead16(PCI_COMMAND);
        await edu.cfgWrite16(PCI_COMMAND, cmd & ~PCI_COMMAND_MASTER);
      } catch {}
    }
    if (deviceFd !== undefined) await b.close(deviceFd).catch(() => undefined);
    const lockedBefore = await b.lockedMemoryBytes();
    try {
      await prepared.release();
      const lockedAfter = await b.lockedMemoryBytes();
      report(lockedAfter === baseline, `${tag}: release returns the locked memory`, `VmLck ${hex(lockedBefore)} -> ${hex(lockedAfter)} (before prepare ${hex(baseline)})`);
    } catch (err) {
      report(false, `${tag}: release returns the locked memory`, `${err.code ?? ''} ${err.message}`);
    }
  }
}

/** Every test group in one preparation: each edu copies RAM -> device -> RAM through the shared iova. */
async function allGroupsRoundTrip(iommu) {
  const tag = `${iommu} groups ${allGroups.join('+')}`;
  const baseline = await b.lockedMemoryBytes();
  let prepared;
  try {
    prepared = await prepareContainer(b, { devRoot: '/', groups: allGroups, memorySize: 64n * 1024n, iommu });
  } catch (err) {
    report(false, `${tag}: prepareContainer maps DMA memory for every group`, `${err.code ?? ''} ${err.message}`);
    return;
  }
  const opened = [];
  try {
    const m = prepared.mappings[0];
    report(
      prepared.containers.length >= 1 && prepared.containers.every((c) => c.window.start === prepared.window.start && c.mappings[0].iova === m.iova),
      `${tag}: one allocation, the same window and iova in every container`,
      `${prepared.containers.length} container(s): ${prepared.containers.map((c) => `[${c.groups.map((g) => g.group).join(',')}] ${hex(c.window.start)}+${hex(c.window.size)}`).join(' ')}, VmLck +${hex(prepared.lockedBytes)}`,
    );
    for (const [i, g] of prepared.groups.entries()) {
      const edu = await Edu.open(b, g.fd, allBdfs[i]);
      opened.push(edu.fd);
      const cmd = await edu.cfgRead16(PCI_COMMAND);
      await edu.cfgWrite16(PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
      await edu.probeOrder();
      const mem = prepared.memory.address;
      const srcOff = 0x1000n + BigInt(i) * 0x4000n;
      const dstOff = 0x8000n + BigInt(i) * 0x4000n;
      const pattern = randomBytes(LEN);
      b.writeMemory(mem + srcOff, pattern);
      b.writeMemory(mem + dstOff, Buffer.alloc(LEN, 0xee));
      await edu.dma(m.iova + srcOff, EDU_BUFFER, LEN, false);
      await edu.dma(EDU_BUFFER, m.iova + dstOff, LEN, true);
      const back = b.readMemory(mem + dstOff, LEN);
      report(back.equals(pattern), `${tag}: group ${g.group} (${allBdfs[i]}) DMA round trip through iova ${hex(m.iova + srcOff)}`, back.equals(pattern) ? `${LEN} bytes` : 'data differs');
      await edu.cfgWrite16(PCI_COMMAND, cmd & ~PCI_COMMAND_MASTER);
    }
  } catch (err) {
    report(false, `${tag}: DMA checks ran`, `${err.code ?? ''} ${err.stack ?? err.message}`);
  } finally {
    for (const fd of opened) await b.close(fd).catch(() => undefined);
    try {
      await prepared.release();
      const after = await b.lockedMemoryBytes();
      report(after === baseline, `${tag}: release returns the locked memory`, `VmLck ${hex(after)} (before prepare ${hex(baseline)})`);
    } catch (err) {
      report(false, `${tag}: release returns the locked memory`, `${err.code ?? ''} ${err.message}`);
    }
  }
}

if (!Number.isInteger(group) || !bdf) {
  console.log('DMA FAIL arguments: no group/bdf (PVDP_GROUPS/PVDP_BDFS or --group/--bdf)');
  process.exit(2);
}
console.log(`# dma on ${process.arch}, group ${group}, device ${bdf}, page ${b.pageSize}`);
for (const iommu of ['v1', 'v2']) await roundTrip(iommu);
if (allGroups.length > 1 && allGroups.length === allBdfs.length) for (const iommu of ['v2', 'v1']) await allGroupsRoundTrip(iommu);
summary();
process.exit(exitCode());
