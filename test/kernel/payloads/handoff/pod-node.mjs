// The "pod" of the handoff suite, in Node: a separate process that claims with the project's
// Node client (dist/handoff/client.js claim() over unixClaimTransport and the native binding),
// gets the device fd from the received group fd and makes the edu DMA RAM -> device -> RAM through
// the pre-mapped iova; MAP_DMA and UNMAP_DMA from here must be EPERM. Same lines as pod.c:
// `HANDOFF PASS|FAIL TAG: name: detail`, `HANDOFF SUMMARY`, then `HANDOFF HOLDING TAG`, waits for a
// line on stdin (the plugin measures meanwhile) and exits without closing anything.
//
//   node pod-node.mjs --socket PATH --bdf BDF --tag TAG [--dist DIR] [--addon FILE]
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { readdirSync, readlinkSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const dist = resolve(opt('dist', '/payload/dist'));
const addonPath = resolve(opt('addon', '/payload/vfio_native.node'));
const socketPath = opt('socket');
const bdf = opt('bdf');
const tag = opt('tag', 'node');

let passed = 0;
let failed = 0;
function report(ok, name, detail) {
  if (ok) passed++;
  else failed++;
  console.log(`HANDOFF ${ok ? 'PASS' : 'FAIL'} ${tag}: ${name}${detail ? `: ${String(detail).replace(/\n/g, ' | ')}` : ''}`);
}
const hex = (v) => `0x${BigInt(v).toString(16)}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function vfioFds() {
  const out = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target.startsWith('/dev/vfio') || target.startsWith('/memfd:') || target.startsWith('anon_inode:[vfio')) out.push(`${fd}=${target}`);
  }
  return out;
}
const vmLckKb = () => Number(/^VmLck:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? -1);

const { NativeBinding, loadNativeAddon } = await import(pathToFileURL(`${dist}/vfio/native-binding.js`).href);
const { claim } = await import(pathToFileURL(`${dist}/handoff/client.js`).href);
const { unixClaimTransport } = await import(pathToFileURL(`${dist}/handoff/transport.js`).href);
const b = new NativeBinding(loadNativeAddon(addonPath));
const k = b.constants;

const EDU_BUFFER = 0x40000n;
const LEN = 2048;
class Edu {
  constructor(fd, bar0, cfg) {
    Object.assign(this, { fd, bar0, cfg, bigEndian: true });
  }
  async cfgRead16(off) {
    return (await b.pread(this.fd, 2, this.cfg.offset + BigInt(off))).readUInt16LE(0);
  }
  async cfgWrite16(off, v) {
    const buf = Buffer.alloc(2);
    buf.writeUInt16LE(v);
    await b.pwrite(this.fd, buf, this.cfg.offset + BigInt(off));
  }
  async read32(off) {
    const buf = await b.pread(this.fd, 4, this.bar0.offset + BigInt(off));
    return this.bigEndian ? buf.readUInt32BE(0) : buf.readUInt32LE(0);
  }
  async write32(off, v) {
    const buf = Buffer.alloc(4);
    if (this.bigEndian) buf.writeUInt32BE(Number(v));
    else buf.writeUInt32LE(Number(v));
    await b.pwrite(this.fd, buf, this.bar0.offset + BigInt(off));
  }
  async probeOrder() {
    const raw = await b.pread(this.fd, 4, this.bar0.offset);
    if (raw.readUInt32BE(0) === 0x010000ed) this.bigEndian = true;
    else if (raw.readUInt32LE(0) === 0x010000ed) this.bigEndian = false;
    else throw new Error(`edu ident reads ${raw.toString('hex')}`);
  }
  async dma(src, dst, count, toRam) {
    await this.write32(0x80, src);
    await this.write32(0x88, dst);
    await this.write32(0x90, count);
    await this.write32(0x98, 1 | (toRam ? 2 : 0));
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (((await this.read32(0x98)) & 1) === 0) return;
      if (Date.now() > deadline) throw new Error('edu DMA did not finish');
      await sleep(20);
    }
  }
}

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

  const deviceFd = await b.groupGetDeviceFd(fds.groups[0], bdf);
  const cfg = await b.deviceGetRegionInfo(deviceFd, k.pciRegion.config);
  const bar0 = await b.deviceGetRegionInfo(deviceFd, k.pciRegion.bar0);
  const edu = new Edu(deviceFd, bar0, cfg);
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
console.log(`HANDOFF SUMMARY ${tag} passed=${passed} failed=${failed}`);
console.log(`HANDOFF HOLDING ${tag}`);
// Wait for the plugin's go, then exit without closing anything: the kernel releases it all.
process.stdin.once('data', () => process.exit(failed ? 1 : 0));
process.stdin.once('end', () => process.exit(failed ? 1 : 0));
