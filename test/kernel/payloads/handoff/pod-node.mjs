// The "pod" of the handoff suite, in Node: a separate process that claims with the project's
// Node client (dist/handoff/client.js claim() over unixClaimTransport and the native binding),
// gets the device fd from the received group fd and makes the edu DMA RAM -> device -> RAM through
// the pre-mapped iova; MAP_DMA and UNMAP_DMA from here must be EPERM. Same lines as pod.c:
// `HANDOFF PASS|FAIL TAG: name: detail`, `HANDOFF SUMMARY`, then `HANDOFF HOLDING TAG`, waits for a
// line on stdin (the plugin measures meanwhile) and exits without closing anything.
//
//   node handoff/pod-node.mjs --socket PATH --bdf BDF --tag TAG [--dist DIR] [--addon FILE]
import { randomBytes } from 'node:crypto';
import { Edu, EDU_BUFFER, EDU_DMA_LENGTH as LEN, checkLines, hex, load, nativeBinding, option, vfioFds, vmLckKb } from '../common.mjs';

const socketPath = option('socket');
const bdf = option('bdf');
const tag = option('tag', 'node');

const lines = checkLines('HANDOFF');
const report = (ok, name, detail) => lines.tagged(ok, tag, name, detail);

const { claim } = await load('handoff/client.js');
const { unixClaimTransport } = await load('handoff/transport.js');
const b = await nativeBinding();
const k = b.constants;

async function main() {
  const before = vfioFds();
  report(before.length === 0, 'the pod is a separate process (no VFIO or memfd fd before the claim)', `${before.length} such fds${before.length ? ` ${before.join(',')}` : ''}, pid ${process.pid}`);
  let claimed;
  try {
    claimed = await claim(socketPath, { timeoutMs: 10_000, transport: unixClaimTransport(b) });
  } catch (err) {
    report(false, 'claim() (Node client) receives the fds and the description', `${err.code ?? ''} ${err.message}`);
    return;
  }
  const { fds, description: d } = claimed;
  const range = d.ranges[0];
  const iova = BigInt(range.iova);
  const size = BigInt(range.size);
  report(
    d.protocol === 1 && d.groups.length >= 1 && d.ranges.length === 1 && d.groups[0].functions.includes(bdf) && fds.groups.length === d.groups.length,
    'claim() (Node client) receives the fds and the description',
    `${d.iommu.type}, window ${d.window.start}+${d.window.size} pageShift ${d.window.pageShift}, range iova ${range.iova} size ${range.size} offset ${range.offset}, fds container ${fds.container} memory ${fds.memory} group ${d.groups[0].group}:${fds.groups[0]}`,
  );
  const ws = BigInt(d.window.start);
  report(
    iova + size <= 1n << 28n && iova >= ws && iova + size <= ws + BigInt(d.window.size),
    "the pre-mapped range is inside the window and below the edu's 28-bit DMA mask",
    `iova ${hex(iova)}+${hex(size)}, window ${d.window.start}+${d.window.size}`,
  );
  const mem = await b.mmap(fds.memory, BigInt(d.memory.size));
  report(true, 'mmap of the memory fd (MAP_SHARED)', `${BigInt(d.memory.size)} bytes`);

  const edu = await Edu.open(b, fds.groups[0], bdf);
  const deviceFd = edu.fd;
  const vendor = await edu.cfgRead16(0);
  const device = await edu.cfgRead16(2);
  const cmdBefore = await edu.cfgRead16(4);
  await edu.cfgWrite16(4, cmdBefore | 0x6);
  const cmdAfter = await edu.cfgRead16(4);
  await edu.probeOrder();
  report(
    vendor === 0x1234 && device === 0x11e8 && (cmdAfter & 6) === 6,
    'VFIO_GROUP_GET_DEVICE_FD on the received group fd, bus mastering on, edu ident through BAR0',
    `device fd ${deviceFd}, ${vendor.toString(16)}:${device.toString(16)}, command ${hex(cmdBefore)} -> ${hex(cmdAfter)}, MMIO ${edu.bigEndian ? 'big' : 'little'}-endian`,
  );

  const off = BigInt(range.offset);
  const srcOff = 0x1000n;
  const dstOff = size > 0x10000n ? 0x80000n % size : 0x6000n;
  const pattern = randomBytes(LEN);
  b.writeMemory(mem + off + srcOff, pattern);
  b.writeMemory(mem + off + dstOff, Buffer.alloc(LEN, 0xee));
  await edu.dma(iova + srcOff, EDU_BUFFER, LEN, false);
  await edu.dma(EDU_BUFFER, iova + dstOff, LEN, true);
  const back = b.readMemory(mem + off + dstOff, LEN);
  report(back.equals(pattern), 'edu DMA RAM -> device -> RAM through the pre-mapped iova', `${LEN} bytes from iova ${hex(iova + srcOff)} back to iova ${hex(iova + dstOff)}${back.equals(pattern) ? ', data checked' : ', DATA DIFFERS'}`);

  const codeOf = async (fn) => {
    try {
      await fn();
      return 'succeeded';
    } catch (err) {
      return err.code ?? err.message;
    }
  };
  const m = await codeOf(() => b.mapDma(fds.container, { vaddr: mem, iova, size: size < 0x10000n ? size : 0x10000n, flags: k.dmaMapFlagRead | k.dmaMapFlagWrite }));
  const u = await codeOf(() => b.unmapDma(fds.container, { iova, size }));
  report(m === 'EPERM' && u === 'EPERM', "MAP_DMA and UNMAP_DMA from the pod are refused with EPERM (the container's mm is the plugin's)", `MAP_DMA ${m}, UNMAP_DMA ${u}`);

  b.writeMemory(mem + off + dstOff, Buffer.alloc(LEN, 0x11));
  await edu.dma(EDU_BUFFER, iova + dstOff, LEN, true);
  report(b.readMemory(mem + off + dstOff, LEN).equals(pattern), 'the mapping is intact after the refused UNMAP_DMA (device -> RAM again)');
  const kb = vmLckKb();
  report(kb === 0, "the pod's own VmLck is 0 (the pinned pages are charged to the plugin)", `VmLck ${kb} kB`);
}

try {
  await main();
} catch (err) {
  report(false, 'pod steps ran', `${err.code ?? ''} ${err.stack ?? err.message}`);
}
lines.summary(tag);
console.log(`HANDOFF HOLDING ${tag}`);
// Wait for the plugin's go, then exit without closing anything: the kernel releases it all.
process.stdin.once('data', () => process.exit(lines.counts.failed ? 1 : 0));
process.stdin.once('end', () => process.exit(lines.counts.failed ? 1 : 0));
