// What the payload programs in the guest share: their arguments, the compiled project and the
// native binding, the `PREFIX PASS|FAIL name: detail` lines, what a process holds (VFIO fds,
// memfd mappings, VmLck), the edu device's registers, and the pod process a plugin hands a
// container to. In the guest this module is /payload/common.mjs and the programs sit one
// directory below it (/payload/dma/, /payload/handoff/, /payload/dra/), as in the repository.
import { pathToFileURL } from 'node:url';
import { join, resolve } from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { existsSync, readdirSync, readlinkSync, readFileSync } from 'node:fs';

const argv = process.argv.slice(2);

/** The value after `--name` on the command line, or `fallback`. */
export function option(name, fallback) {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
}

/** The compiled project (`--dist`) and the ppc64le addon (`--addon`) every program is given. */
export const dist = resolve(option('dist', '/payload/dist'));
export const addonPath = resolve(option('addon', '/payload/vfio_native.node'));

/** A module of the compiled project, by its path under dist/ (`vfio/native-binding.js`). */
export const load = (rel) => import(pathToFileURL(join(dist, rel)).href);

/** The native binding over the addon. */
export async function nativeBinding() {
  const { NativeBinding, loadNativeAddon } = await load('vfio/native-binding.js');
  return new NativeBinding(loadNativeAddon(addonPath));
}

/** Every test device the guest bound: its IOMMU groups and addresses, first device first. */
export function testDevices() {
  const list = (many, one) => (process.env[many] ?? process.env[one] ?? '').split(',').filter(Boolean);
  return { groups: list('PVDP_GROUPS', 'PVDP_GROUP').map(Number), bdfs: list('PVDP_BDFS', 'PVDP_BDF') };
}

export const hex = (v) => `0x${BigInt(v).toString(16)}`;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * One line per check, `PREFIX PASS|FAIL name: detail`, counted for the summary line.
 * `tagged(ok, tag, name, detail)` names the check `tag: name`.
 */
export function checkLines(prefix) {
  const counts = { passed: 0, failed: 0 };
  const check = (ok, name, detail) => {
    if (ok) counts.passed++;
    else counts.failed++;
    console.log(`${prefix} ${ok ? 'PASS' : 'FAIL'} ${name}${detail ? `: ${String(detail).replace(/\n/g, ' | ')}` : ''}`);
  };
  return {
    counts,
    check,
    tagged: (ok, tag, name, detail) => check(ok, `${tag}: ${name}`, detail),
    /** `PREFIX SUMMARY [label ]passed=N failed=N`. */
    summary: (label) => console.log(`${prefix} SUMMARY ${label ? `${label} ` : ''}passed=${counts.passed} failed=${counts.failed}`),
    /** 0 when something passed and nothing failed. */
    exitCode: () => (counts.failed === 0 && counts.passed > 0 ? 0 : 1),
  };
}

/** fds of `pid` that are VFIO nodes, memfds or VFIO anon inodes. */
export function vfioFds(pid = 'self') {
  const out = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (target.startsWith('/dev/vfio') || target.startsWith('/memfd:') || target.startsWith('anon_inode:[vfio')) out.push(`${fd}=${target}`);
  }
  return out;
}

/** This process's mappings of a memfd. */
export const memfdMappings = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:'));

/** VmLck of this process in kB, from /proc/self/status (-1 when the line is missing). */
export const vmLckKb = () => Number(/^VmLck:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? -1);

/** VmLck of this process, polled until it equals `want` (the kernel releases asynchronously to our reads). */
export async function lockedSettled(binding, want, tries = 50) {
  let l = await binding.lockedMemoryBytes();
  for (let i = 0; i < tries && l !== want; i++) {
    await sleep(100);
    l = await binding.lockedMemoryBytes();
  }
  return l;
}

/** Opens /dev/vfio/`group` and closes it: 'opened and closed', or the error. */
export async function groupOpens(binding, group) {
  try {
    const fd = await binding.openGroup('/', group);
    await binding.close(fd);
    return 'opened and closed';
  } catch (err) {
    return `${err.code ?? ''} ${err.message}`;
  }
}

/** A busybox applet where the guest has busybox, else the command of that name. */
export function busybox(applet, args) {
  return existsSync('/bin/busybox') ? execFileSync('/bin/busybox', [applet, ...args]) : execFileSync(applet, args);
}

/** A read-only bind mount of `source` at `target` (what the kubelet makes of a read_only mount). */
export function bindReadOnly(source, target) {
  busybox('mount', ['-o', 'bind', source, target]);
  busybox('mount', ['-o', 'remount,bind,ro', target]);
}

/**
 * Runs a pod process (`{ file, args, env }`) that claims a container and prints `HANDOFF HOLDING`
 * once it holds everything. Each line it prints goes to `onLine`; at the holding line
 * `whileHolding(pod)` runs, then the pod is told to exit (a line on its stdin). A pod that is
 * still running after `timeoutMs` is killed. Resolves with its exit and whether it held.
 */
export async function runPod({ file, args, env }, { timeoutMs, onLine, whileHolding }) {
  const pod = spawn(file, args, { stdio: ['pipe', 'pipe', 'inherit'], env });
  const exited = new Promise((r) => pod.once('exit', (code, signal) => r({ code, signal })));
  let holding = false;
  let held = Promise.resolve();
  createInterface({ input: pod.stdout }).on('line', (line) => {
    onLine(line);
    if (holding || !line.startsWith('HANDOFF HOLDING')) return;
    holding = true;
    held = (async () => {
      try {
        await whileHolding(pod);
      } finally {
        pod.stdin.end('go\n');
      }
    })();
    // Awaited below, once the pod has exited.
    held.catch(() => undefined);
  });
  const timer = setTimeout(() => pod.kill('SIGKILL'), timeoutMs);
  const result = await exited;
  clearTimeout(timer);
  if (holding) await held;
  return { ...result, holding };
}

// QEMU's edu device (hw/misc/edu.c, 7.2): registers 0x00 ident (0x010000ed), 0x80 DMA source,
// 0x88 destination, 0x90 count, 0x98 command (bit 0 run, bit 1 device -> RAM); the buffer is at
// 0x40000, 4 KiB (QEMU 7.2 refuses a 4096-byte transfer: off by one, so <= 2048 here); the DMA
// mask is 28 bits (iova below 256 MiB, else QEMU clamps it); the DMA runs from a 100 ms
// virtual-clock timer. Its MMIO is DEVICE_NATIVE_ENDIAN: big-endian on ppc64, so the byte order of
// BAR0 accesses is found from the ident register and used for every access.
const EDU_IDENT = 0x00;
const EDU_DMA_SRC = 0x80;
const EDU_DMA_DST = 0x88;
const EDU_DMA_CNT = 0x90;
const EDU_DMA_CMD = 0x98;
const CMD_RUN = 1;
const CMD_TO_RAM = 2;
export const EDU_BUFFER = 0x40000n;
export const EDU_DMA_LIMIT = 1n << 28n;
/** Bytes per edu DMA in the checks. */
export const EDU_DMA_LENGTH = 2048;
export const PCI_COMMAND = 4;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;

/** The edu behind a VFIO device fd: its config region and BAR0. */
export class Edu {
  /** The device fd of `bdf` from a group fd, with its config region and BAR0. */
  static async open(binding, groupFd, bdf) {
    const fd = await binding.groupGetDeviceFd(groupFd, bdf);
    const { pciRegion } = binding.constants;
    return new Edu(binding, fd, await binding.deviceGetRegionInfo(fd, pciRegion.bar0), await binding.deviceGetRegionInfo(fd, pciRegion.config));
  }

  constructor(binding, fd, bar0, cfg) {
    this.b = binding;
    this.fd = fd;
    this.bar0 = bar0;
    this.cfg = cfg;
    this.bigEndian = true;
  }
  async cfgRead16(off) {
    return (await this.b.pread(this.fd, 2, this.cfg.offset + BigInt(off))).readUInt16LE(0); // config space is little-endian
  }
  async cfgWrite16(off, v) {
    const buf = Buffer.alloc(2);
    buf.writeUInt16LE(v);
    await this.b.pwrite(this.fd, buf, this.cfg.offset + BigInt(off));
  }
  async read32(off) {
    const buf = await this.b.pread(this.fd, 4, this.bar0.offset + BigInt(off));
    if (buf.length !== 4) throw new Error(`short BAR0 read at ${hex(off)}: ${buf.length}`);
    return this.bigEndian ? buf.readUInt32BE(0) : buf.readUInt32LE(0);
  }
  async write32(off, v) {
    const buf = Buffer.alloc(4);
    if (this.bigEndian) buf.writeUInt32BE(Number(v));
    else buf.writeUInt32LE(Number(v));
    const n = await this.b.pwrite(this.fd, buf, this.bar0.offset + BigInt(off));
    if (n !== 4) throw new Error(`short BAR0 write at ${hex(off)}: ${n}`);
  }
  /** Finds the byte order from the ident register (0x010000ed on edu). */
  async probeOrder() {
    const raw = await this.b.pread(this.fd, 4, this.bar0.offset + BigInt(EDU_IDENT));
    if (raw.readUInt32BE(0) === 0x010000ed) this.bigEndian = true;
    else if (raw.readUInt32LE(0) === 0x010000ed) this.bigEndian = false;
    else throw new Error(`edu ident reads ${raw.toString('hex')}, neither order gives 0x010000ed`);
    return this.bigEndian;
  }
  /** One DMA: 32-bit register writes (every address here is below 4 GiB), then poll the run bit. */
  async dma(src, dst, count, toRam) {
    for (const v of [src, dst]) if (BigInt(v) >= 1n << 32n) throw new Error(`address ${hex(v)} needs 64-bit registers`);
    await this.write32(EDU_DMA_SRC, src);
    await this.write32(EDU_DMA_DST, dst);
    await this.write32(EDU_DMA_CNT, count);
    await this.write32(EDU_DMA_CMD, CMD_RUN | (toRam ? CMD_TO_RAM : 0));
    const deadline = Date.now() + 10_000;
    for (;;) {
      const cmd = await this.read32(EDU_DMA_CMD);
      if ((cmd & CMD_RUN) === 0) return;
      if (Date.now() > deadline) throw new Error(`edu DMA did not finish (cmd ${hex(cmd)})`);
      await sleep(20);
    }
  }
}
