// Real-kernel test harness: boots Debian's bookworm-backports ppc64le kernel under
// qemu-system-ppc64 (pseries with QEMU's edu device on its own PHB, or powernv9 with
// an e1000e), binds the device to vfio-pci and runs a payload inside the guest.
//
//   import { provision, runInGuest } from './harness.mjs';
//   const m = provision();                       // cached; throws SkipError when impossible
//   const r = await runInGuest({ machine: 'pseries', payloadDir, command: 'node run.mjs', timeoutMs: 60_000 });
//   r.exitCode, r.output, r.groupNumber, r.deviceAddress (first device), r.groups, r.deviceAddresses
//
// In the guest: the payload directory is at /payload (the command runs there with sh),
// a ppc64le node is on PATH (/opt/node/bin/node), and the environment has PVDP_PLATFORM
// (pseries|powernv), PVDP_GROUP (IOMMU group number of the first test device, /dev/vfio/$PVDP_GROUP),
// PVDP_BDF, PVDP_GROUP_MEMBERS (comma-separated BDFs), PVDP_DEVICE_ID (vendor:device), and
// PVDP_GROUPS / PVDP_BDFS (all test devices' groups and addresses, comma-separated).
import { mkdtempSync, rmSync, readFileSync, mkdirSync, existsSync, renameSync } from 'node:fs';
import { join, dirname, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { provision as provisionImpl, cacheDir } from './lib/provision.mjs';
import { baseLayer, payloadLayer, writeInitrd } from './lib/initramfs.mjs';
import { boot, MACHINES } from './lib/qemu.mjs';
import { SkipError, run, sha256, log } from './lib/util.mjs';

export { SkipError, MACHINES, cacheDir };
export const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = join(HERE, '..', '..');

let cachedManifest = null;

/** Provision (cached, idempotent). Throws SkipError when this machine cannot. */
export function provision(opts = {}) {
  if (!cachedManifest || opts.refresh) cachedManifest = provisionImpl(opts);
  return cachedManifest;
}

/**
 * Boot `machine` and run `command` (a shell command line) in /payload.
 * @param {object} o
 * @param {'pseries'|'powernv9'} o.machine
 * @param {string} [o.payloadDir]  host directory copied to /payload
 * @param {object} [o.files]       extra files: { 'rel/in/payload' | '/abs/in/guest': Buffer | string | { hostPath, mode } | { hostDir } }
 * @param {string} o.command       run as `sh -c`-style script in /payload
 * @param {number} [o.timeoutMs]   limit for the payload inside the guest (default 120 s)
 * @param {number} [o.bootTimeoutMs] extra allowance for boot and shutdown (default 240 s)
 * @param {boolean} [o.withNode]   put the ppc64le node and its libraries in the guest (default true)
 * @param {number} [o.devices]     test devices, each in its own IOMMU group (default 2: the contract
 *                                 suite needs a second group for the multi-group cases)
 * @param {string} [o.memory]     guest RAM instead of the machine's default (2G), e.g. '4G'
 * @param {boolean} [o.nonViable] also a non-viable group where the machine can arrange one (pseries:
 *                                a PHB with a pci-testdev on vfio-pci beside a virtio device on virtio-pci)
 * @param {(s: string) => void} [o.onOutput] live serial output
 * @returns {Promise<{exitCode: number|null, output: string, payloadOutput: string, groupNumber: number|null,
 *   deviceAddress: string|null, platform: string|null, info: object, bootMs: number|null, totalMs: number, error: string|null}>}
 */
export async function runInGuest({
  machine,
  payloadDir,
  files,
  command,
  timeoutMs = 120_000,
  bootTimeoutMs = 240_000,
  withNode = true,
  devices = 2,
  extraAppend,
  memory,
  nonViable = false,
  onOutput,
}) {
  if (!MACHINES[machine]) throw new Error(`unknown machine ${machine}`);
  if (!command) throw new Error('runInGuest: command is required');
  const manifest = provision();
  const base = baseLayer(manifest, { withNode });
  const payload = payloadLayer({ payloadDir, files, command });
  const tmp = mkdtempSync('/tmp/pvdp-k-');
  try {
    const initrd = writeInitrd(base, payload, join(tmp, 'initrd.gz'));
    return await boot({
      machine,
      vmlinux: manifest.kernel.vmlinux,
      initrd,
      timeoutMs: timeoutMs + bootTimeoutMs,
      guestTimeoutS: Math.ceil(timeoutMs / 1000),
      devices,
      extraAppend,
      memory,
      nonViable,
      onOutput,
    });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * Cross-compile a C program for ppc64le (static), cached by source and flags.
 * Returns the path of the binary in the cache.
 */
export function crossCompileC(sources, { name, cflags = ['-O2', '-Wall', '-Wextra'], cc = 'powerpc64le-linux-gnu-gcc' } = {}) {
  const srcs = Array.isArray(sources) ? sources : [sources];
  const key = sha256(cc, cflags, ...srcs.map((s) => readFileSync(s))).slice(0, 16);
  const dir = join(cacheDir(), 'build', 'c');
  mkdirSync(dir, { recursive: true });
  const out = join(dir, `${name ?? basename(srcs[0], '.c')}-${key}`);
  if (!existsSync(out)) {
    run(cc, [...cflags, '-static', '-o', `${out}.${process.pid}.tmp`, ...srcs]);
    renameSync(`${out}.${process.pid}.tmp`, out);
    log(`cross-compiled ${basename(out)}`);
  }
  return out;
}

/**
 * Hook for the contract suite: run a prepared payload (a directory, or a files map as in runInGuest)
 * on one machine, with `command` starting the guest runner. Same result as runInGuest.
 */
export function runPayload(machine, { payloadDir, files, command, timeoutMs }) {
  return runInGuest({ machine, payloadDir, files, command, timeoutMs });
}

/**
 * Payload entries for the Node programs under payloads/ (`'dra/dra-driver.mjs'`): each at the same
 * path under /payload as under payloads/, with the helpers they import (payloads/common.mjs, at
 * /payload/common.mjs), so their relative imports resolve in the guest as in the repository.
 */
export function payloadScripts(...paths) {
  const files = {};
  for (const rel of ['common.mjs', ...paths]) files[rel] = { hostPath: join(HERE, 'payloads', rel), mode: 0o644 };
  return files;
}
