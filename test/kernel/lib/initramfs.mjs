// Builds the guest's initramfs as two concatenated gzip'd newc archives:
//  - a base layer, cached in the cache dir by a hash of its inputs: busybox,
//    /init, the VFIO modules (decompressed, with their dependencies and a load
//    order), glibc/libstdc++/libgcc_s and a stripped ppc64le node at /opt/node/bin/node;
//  - a payload layer built per run: the payload directory at /payload and the
//    command to run in /payload/.pvdp-command.
// The kernel unpacks concatenated archives in order, so the payload may add
// to or override anything in the base.
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync, renameSync, copyFileSync, chmodSync, statSync, rmSync } from 'node:fs';
import { join, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { gzipSync, constants as zc } from 'node:zlib';
import { NewcWriter } from './newc.mjs';
import { log, run, sha256, hashTree, fmtBytes, withLock } from './util.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const INIT_SH = join(HERE, '..', 'guest', 'init.sh');
const BASE_FORMAT = 2;

export const ROOT_MODULES = ['vfio', 'vfio_iommu_spapr_tce', 'vfio_pci_core', 'vfio_pci'];

const modName = (file) => file.replace(/\.ko(\.xz|\.zst|\.gz)?$/, '').replace(/-/g, '_');

function decompressModule(path) {
  if (path.endsWith('.ko')) return readFileSync(path);
  if (path.endsWith('.xz')) return execFileSync('xz', ['-dc', path], { maxBuffer: 64 * 1024 * 1024 });
  throw new Error(`unsupported module compression: ${path}`);
}

/** The `depends=` list in a module's .modinfo section. */
function moduleDepends(ko) {
  const idx = ko.indexOf(Buffer.from('\0depends='));
  if (idx < 0) return [];
  const start = idx + '\0depends='.length;
  const end = ko.indexOf(0, start);
  const list = ko.subarray(start, end).toString('latin1');
  return list ? list.split(',').map((s) => s.replace(/-/g, '_')) : [];
}

/**
 * Resolve modules (and their dependencies, from each module's modinfo) in load order.
 * Returns [{ name, file, data }]; built-in modules are left out.
 */
export function resolveModules(modulesDir, roots = ROOT_MODULES) {
  const index = new Map();
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.ko(\.xz)?$/.test(e.name)) index.set(modName(e.name), p);
    }
  };
  walk(join(modulesDir, 'kernel'));
  const builtin = new Set(
    existsSync(join(modulesDir, 'modules.builtin'))
      ? readFileSync(join(modulesDir, 'modules.builtin'), 'utf8').split('\n').filter(Boolean).map((l) => modName(l.split('/').pop()))
      : [],
  );
  const order = [];
  const seen = new Set();
  const visit = (name, chain) => {
    name = name.replace(/-/g, '_');
    if (seen.has(name) || builtin.has(name)) return;
    if (chain.includes(name)) throw new Error(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    const file = index.get(name);
    if (!file) throw new Error(`module ${name} not found under ${modulesDir} (nor built in)`);
    const data = decompressModule(file);
    for (const dep of moduleDepends(data)) visit(dep, [...chain, name]);
    seen.add(name);
    order.push({ name, file, data });
  };
  for (const r of roots) visit(r, []);
  return order;
}

function strippedNode(manifest) {
  const out = join(manifest.cache, 'node', `node-${manifest.node.version}-stripped`);
  if (!existsSync(out)) {
    const tmp = `${out}.tmp`;
    copyFileSync(manifest.node.bin, tmp);
    const r = run('powerpc64le-linux-gnu-strip', [tmp], { check: false });
    if (r.status !== 0) log(`strip failed, using the unstripped node: ${r.stderr.trim()}`);
    chmodSync(tmp, 0o755);
    renameSync(tmp, out);
  }
  return out;
}

function gz(buf, level) {
  const z = gzipSync(buf, { level, memLevel: 9, strategy: zc.Z_DEFAULT_STRATEGY });
  // Keep each member 4-byte aligned so the next archive starts on a boundary.
  return Buffer.concat([z, Buffer.alloc((4 - (z.length % 4)) % 4)]);
}

/** Path of the cached base layer (built when missing). */
export function baseLayer(manifest, { withNode = true, extraModules = [] } = {}) {
  const init = readFileSync(INIT_SH);
  const key = sha256(
    BASE_FORMAT,
    init,
    manifest.kernel.version,
    manifest.kernel.kver,
    manifest.packages,
    withNode ? manifest.node.version : 'no-node',
    extraModules,
  ).slice(0, 16);
  const dir = join(manifest.cache, 'images');
  mkdirSync(dir, { recursive: true });
  const out = join(dir, `base-${key}.cpio.gz`);
  if (existsSync(out)) return out;
  return withLock(join(dir, '.lock'), () => (existsSync(out) ? out : buildBase(manifest, { withNode, extraModules, init, dir, out })));
}

function buildBase(manifest, { withNode, extraModules, init, dir, out }) {
  // Only the newest base images are worth keeping.
  const old = readdirSync(dir).filter((f) => /^base-.*\.cpio\.gz$/.test(f)).map((f) => ({ f, t: statSync(join(dir, f)).mtimeMs })).sort((a, b) => b.t - a.t);
  for (const { f } of old.slice(2)) rmSync(join(dir, f), { force: true });

  const t0 = Date.now();
  const w = new NewcWriter();
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'proc', 'sys', 'dev', 'tmp', 'run', 'etc', 'payload', 'root', 'var']) w.dir(d);
  w.dir('tmp', 0o1777);
  w.charDev('dev/console', 5, 1, 0o600);
  w.charDev('dev/null', 1, 3, 0o666);
  w.file('init', init, 0o755);
  w.file('bin/busybox', readFileSync(manifest.busybox), 0o755);
  w.symlink('bin/sh', 'busybox');
  w.file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  w.file('etc/group', 'root:x:0:\n');
  w.file('etc/hosts', '127.0.0.1 localhost\n');

  const mods = resolveModules(manifest.kernel.modulesDir, [...ROOT_MODULES, ...extraModules]);
  for (const m of mods) w.file(`lib/modules/pvdp/${m.name}.ko`, m.data, 0o644);
  w.file('lib/modules/pvdp/order', `${mods.map((m) => `${m.name}.ko`).join('\n')}\n`);

  if (withNode) {
    // glibc, libstdc++ and libgcc_s for the dynamically linked node; no locales, gconv or docs.
    const keep = (rel, st) => !/^(usr\/share|usr\/lib\/[^/]+\/gconv|usr\/libexec|etc|\.extracted)/.test(rel) && !(st.isFile() && rel.endsWith('.a'));
    for (const root of manifest.libRoots) w.tree(root, '', keep);
    w.symlink('lib64/ld64.so.2', '/lib/powerpc64le-linux-gnu/ld64.so.2');
    w.file('opt/node/bin/node', readFileSync(strippedNode(manifest)), 0o755);
  }
  const cpio = w.toBuffer();
  const z = gz(cpio, 6);
  writeFileSync(`${out}.tmp`, z);
  renameSync(`${out}.tmp`, out);
  log(
    `built base initramfs ${relative(manifest.cache, out)}: ${fmtBytes(cpio.length)} -> ${fmtBytes(z.length)} in ${((Date.now() - t0) / 1000).toFixed(1)} s; modules: ${mods.map((m) => m.name).join(' ')}`,
  );
  return out;
}

/**
 * The payload layer: `payloadDir` (a directory, or a map { '/guest/path': Buffer|string|{ hostPath } })
 * at /payload, and `command` (a shell command line run in /payload) as /payload/.pvdp-command.
 */
export function payloadLayer({ payloadDir, files, command }) {
  const w = new NewcWriter();
  w.dir('payload');
  if (payloadDir) w.tree(payloadDir, 'payload');
  for (const [path, v] of Object.entries(files ?? {})) {
    const dest = path.startsWith('/') ? path.slice(1) : `payload/${path}`;
    if (v && typeof v === 'object' && !Buffer.isBuffer(v) && v.hostDir) w.tree(v.hostDir, dest, v.filter ?? (() => true));
    else if (v && typeof v === 'object' && !Buffer.isBuffer(v) && v.hostPath) w.file(dest, readFileSync(v.hostPath), v.mode ?? 0o755);
    else w.file(dest, v, 0o644);
  }
  w.file('payload/.pvdp-command', `${command}\n`, 0o755);
  return gz(w.toBuffer(), 6);
}

/** Write base + payload as one initrd file; returns its path. */
export function writeInitrd(basePath, payload, outPath) {
  writeFileSync(outPath, Buffer.concat([readFileSync(basePath), payload]));
  return outPath;
}

export { hashTree };
