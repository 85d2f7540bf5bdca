// Runs INSIDE a guest of the kernel test harness (see bench/kernel/run.mjs). For each size and
// repeat, on the guest's first test group:
//   prepare   prepareContainer (the handoff sequence: one MAP_DMA per contiguous range), timed, with
//             every VFIO ioctl counted through a counting proxy of the native binding
//   then, in the SAME container, window and memory (unmapped in between with one UNMAP_DMA):
//   map-1     the whole memory again with one MAP_DMA
//   map-pN    the same memory N IOMMU pages per MAP_DMA (N = 1, 8, 32: how a POWER guest maps through
//             H_PUT_TCE / H_PUT_TCE_INDIRECT hypercalls)
// Prints one `BENCH {json}` line per (size, repeat) and `BENCH-DONE`.
//
//   node prep-bench.mjs [--dist DIR] [--addon FILE] [--sizes 256M,1G] [--repeats 3] [--chunks 1,8,32] [--iommu auto]
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const parseSize = (s) => {
  const m = /^(\d+)([KMG]?)$/i.exec(s.trim());
  if (!m) throw new Error(`bad size ${s}`);
  return BigInt(m[1]) << BigInt({ '': 0, K: 10, M: 20, G: 30 }[m[2].toUpperCase()]);
};
const dist = resolve(opt('dist', '/payload/dist'));
const addonPath = resolve(opt('addon', '/payload/vfio_native.node'));
const sizes = opt('sizes', '256M,1G').split(',').map(parseSize);
const repeats = Number(opt('repeats', '3'));
const chunks = opt('chunks', '1,8,32').split(',').map(Number);
const iommu = opt('iommu', 'auto');
const group = Number((process.env.PVDP_GROUPS ?? process.env.PVDP_GROUP ?? '').split(',')[0]);

const { NativeBinding, loadNativeAddon } = await import(pathToFileURL(`${dist}/vfio/native-binding.js`).href);
const { prepareContainer } = await import(pathToFileURL(`${dist}/vfio/container-sequence.js`).href);
const b = new NativeBinding(loadNativeAddon(addonPath));
const k = b.constants;
const hex = (v) => `0x${BigInt(v).toString(16)}`;
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// Every binding method that is one VFIO ioctl.
const IOCTLS = new Set([
  'getApiVersion', 'checkExtension', 'setIommu', 'spaprTceGetInfo', 'enable', 'disable', 'registerMemory', 'unregisterMemory',
  'tceCreate', 'tceRemove', 'mapDma', 'unmapDma', 'eehPeOp', 'groupGetStatus', 'groupSetContainer', 'groupUnsetContainer', 'groupGetDeviceFd',
]);
function counting(target) {
  const counts = {};
  const ms = {};
  const proxy = new Proxy(target, {
    get(t, prop, receiver) {
      const v = Reflect.get(t, prop, receiver);
      if (typeof v !== 'function' || !IOCTLS.has(prop)) return typeof v === 'function' ? v.bind(t) : v;
      return async (...a) => {
        counts[prop] = (counts[prop] ?? 0) + 1;
        const t0 = nowMs();
        try {
          return await v.apply(t, a);
        } finally {
          ms[prop] = (ms[prop] ?? 0) + nowMs() - t0;
        }
      };
    },
  });
  return { proxy, counts, ms };
}

async function timed(fn) {
  const t0 = nowMs();
  await fn();
  return nowMs() - t0;
}

console.log(`# kernel preparation benchmark on ${process.arch}, platform ${process.env.PVDP_PLATFORM}, group ${group}, page ${b.pageSize}, sizes ${sizes.map(hex).join(',')}, repeats ${repeats}, chunks ${chunks.join(',')}`);
const flags = k.dmaMapFlagRead | k.dmaMapFlagWrite;
let failures = 0;
for (const size of sizes) {
  for (let rep = 1; rep <= repeats; rep++) {
    const c = counting(b);
    const l0 = await b.lockedMemoryBytes();
    let prepared;
    const t0 = nowMs();
    try {
      prepared = await prepareContainer(c.proxy, { devRoot: '/', groups: [group], memorySize: size, iommu });
    } catch (err) {
      failures++;
      console.log(`BENCH-ERROR size ${hex(size)} rep ${rep}: ${err.code ?? ''} ${err.message}`);
      continue;
    }
    const prepareMs = nowMs() - t0;
    const ioctls = Object.values(c.counts).reduce((a, n) => a + n, 0);
    const row = {
      platform: process.env.PVDP_PLATFORM,
      size: Number(size),
      rep,
      iommu: prepared.iommu,
      window: { start: hex(prepared.window.start), size: hex(prepared.window.size), pageShift: prepared.window.pageShift, levels: prepared.window.levels },
      lockedBytes: Number(prepared.lockedBytes),
      prepare: { ms: prepareMs, ioctls, mapDmaCalls: c.counts.mapDma ?? 0, mapDmaMs: c.ms.mapDma ?? 0, registerMs: c.ms.registerMemory ?? 0, enableMs: c.ms.enable ?? 0, counts: { ...c.counts } },
      map: {},
    };
    try {
      const m = prepared.mappings[0];
      const fd = prepared.containerFd;
      const page = 1n << BigInt(prepared.window.pageShift);
      const pages = m.size / page;
      row.pages = Number(pages);
      const unmapAll = () => b.unmapDma(fd, { iova: m.iova, size: m.size });
      row.unmapWholeMs = await timed(unmapAll);
      const variants = ['whole', ...chunks];
      for (const v of variants) {
        const per = v === 'whole' ? pages : BigInt(v);
        const step = per * page;
        let calls = 0;
        const ms = await timed(async () => {
          for (let off = 0n; off < m.size; off += step) {
            const len = m.size - off < step ? m.size - off : step;
            await b.mapDma(fd, { vaddr: m.vaddr + off, iova: m.iova + off, size: len, flags });
            calls++;
          }
        });
        const unmapMs = await timed(unmapAll);
        row.map[v === 'whole' ? 'whole' : `p${v}`] = { pagesPerCall: Number(per), calls, ms, usPerCall: (ms * 1000) / calls, unmapMs };
      }
      // Leave it mapped as prepareContainer did, so release() runs its own teardown unchanged.
      await b.mapDma(fd, { vaddr: m.vaddr, iova: m.iova, size: m.size, flags });
    } catch (err) {
      failures++;
      console.log(`BENCH-ERROR size ${hex(size)} rep ${rep} map variants: ${err.code ?? ''} ${err.message}`);
    }
    row.releaseMs = await timed(() => prepared.release());
    row.lockedAfterRelease = Number((await b.lockedMemoryBytes()) - l0);
    console.log(`BENCH ${JSON.stringify(row)}`);
  }
}
console.log(`BENCH-DONE failures=${failures}`);
process.exit(failures ? 1 : 0);
