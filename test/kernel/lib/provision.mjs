// Provisioning for the real-kernel harness, from Debian packages and the npm
// registry only, cached under PVDP_KERNEL_CACHE (default /var/cache/pvdp-kernel).
//
// - host: qemu-system-ppc, qemu-system-data, gcc/g++-powerpc64le-linux-gnu (apt-get install)
// - ppc64el: linux-image-powerpc64le from bookworm-backports (the versioned image package
//   it depends on), busybox-static, libc6, libstdc++6, libgcc-s1, fetched with a private apt
//   state (never touching the host's apt setup) and unpacked with dpkg -x
// - a ppc64le Node.js from the npm package node-linux-ppc64le@20 (npm pack)
//
// Once everything is cached, provision() does not touch the network at all.
// When the mirror or the registry cannot be reached it throws SkipError.
import { existsSync, mkdirSync, readFileSync, writeFileSync, readdirSync, rmSync, renameSync, statSync } from 'node:fs';
import { join, basename } from 'node:path';
import { accessSync, constants } from 'node:fs';
import { homedir } from 'node:os';
import { log, run, which, SkipError, withLock } from './util.mjs';

export const MANIFEST_FORMAT = 3;
export const DEFAULT_CACHE = '/var/cache/pvdp-kernel';
export function cacheDir() {
  if (process.env.PVDP_KERNEL_CACHE) return process.env.PVDP_KERNEL_CACHE;
  // Not root: a cache under the user's home instead of /var/cache.
  try {
    mkdirSync(DEFAULT_CACHE, { recursive: true });
    accessSync(DEFAULT_CACHE, constants.W_OK);
    return DEFAULT_CACHE;
  } catch {
    return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'pvdp-kernel');
  }
}

const HOST_PACKAGES = ['qemu-system-ppc', 'qemu-system-data', 'gcc-powerpc64le-linux-gnu', 'g++-powerpc64le-linux-gnu'];
// ppc64el packages unpacked into the guest (besides the kernel).
const GUEST_PACKAGES = ['busybox-static', 'libc6', 'libstdc++6', 'libgcc-s1'];
const NODE_SPEC = process.env.PVDP_KERNEL_NODE_SPEC || 'node-linux-ppc64le@20';
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

// ---------------------------------------------------------------- host tools

function hostPackageInstalled(pkg) {
  const r = run('dpkg-query', ['-W', '-f=${Status}', pkg], { check: false });
  return r.status === 0 && r.stdout.includes('install ok installed');
}

let hostAptUpdated = false;
function ensureHostPackages() {
  const missing = HOST_PACKAGES.filter((p) => !hostPackageInstalled(p));
  if (missing.length === 0) return;
  if (!which('apt-get')) throw new SkipError(`host packages missing (${missing.join(', ')}) and no apt-get to install them`);
  if (process.getuid && process.getuid() !== 0) {
    throw new SkipError(`host packages missing (${missing.join(', ')}); installing them needs root`);
  }
  const lock = ['-oDPkg::Lock::Timeout=600'];
  if (!hostAptUpdated) {
    log('apt-get update (host)');
    const u = run('apt-get', [...lock, 'update'], { check: false, timeoutMs: 15 * 60_000 });
    hostAptUpdated = true;
    if (u.status !== 0) log(`apt-get update reported problems (exit ${u.status}); trying the install anyway`);
  }
  log(`apt-get install ${missing.join(' ')} (host)`);
  const r = run('apt-get', [...lock, 'install', '-y', '--no-install-recommends', ...missing], {
    check: false,
    env: { DEBIAN_FRONTEND: 'noninteractive' },
    timeoutMs: 30 * 60_000,
  });
  if (r.status !== 0) {
    throw new SkipError(
      `cannot install host packages ${missing.join(', ')} from the Debian mirror (apt-get exit ${r.status})`,
      r.stderr.split('\n').slice(-8).join('\n'),
    );
  }
}

// ---------------------------------------------------------------- mirror

/** The Debian archive URI the host's apt uses (not the security archive). */
export function detectMirror() {
  if (process.env.PVDP_DEBIAN_MIRROR) return process.env.PVDP_DEBIAN_MIRROR.replace(/\/+$/, '');
  const found = [];
  const files = [];
  if (existsSync('/etc/apt/sources.list')) files.push('/etc/apt/sources.list');
  if (existsSync('/etc/apt/sources.list.d')) {
    for (const f of readdirSync('/etc/apt/sources.list.d').sort()) {
      if (f.endsWith('.list') || f.endsWith('.sources')) files.push(join('/etc/apt/sources.list.d', f));
    }
  }
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const uris = /^URIs:\s*(.+)$/m.exec(stanza)?.[1]?.trim().split(/\s+/) ?? [];
        const suites = /^Suites:\s*(.+)$/m.exec(stanza)?.[1]?.trim().split(/\s+/) ?? [];
        const enabled = !/^Enabled:\s*no/im.test(stanza);
        if (enabled && suites.some((s) => /^(bookworm|stable|oldstable)$/.test(s))) found.push(...uris);
      }
    } else {
      for (const line of text.split('\n')) {
        const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
        if (m && /^(bookworm|stable|oldstable)$/.test(m[2])) found.push(m[1]);
      }
    }
  }
  const uri = found.find((u) => /debian/.test(u) && !/security/.test(u)) ?? found[0] ?? 'http://deb.debian.org/debian';
  return uri.replace(/\/+$/, '');
}

// ---------------------------------------------------------------- private apt (ppc64el)

function aptDirs(cache) {
  const base = join(cache, 'apt');
  return {
    base,
    lists: join(base, 'lists'),
    cache: join(base, 'cache'),
    status: join(base, 'status'),
    sourceList: join(base, 'sources.list'),
    sourceParts: join(base, 'sources.list.d'),
    prefParts: join(base, 'preferences.d'),
  };
}

function aptOpts(d) {
  return [
    '-oAPT::Architecture=ppc64el',
    '-oAPT::Architectures::=ppc64el',
    `-oDir::State=${d.base}`,
    `-oDir::State::Lists=${d.lists}`,
    `-oDir::State::status=${d.status}`,
    `-oDir::Cache=${d.cache}`,
    `-oDir::Etc::SourceList=${d.sourceList}`,
    `-oDir::Etc::SourceParts=${d.sourceParts}`,
    `-oDir::Etc::Preferences=${join(d.base, 'preferences')}`,
    `-oDir::Etc::PreferencesParts=${d.prefParts}`,
    '-oAPT::Sandbox::User=root',
    '-oAcquire::Retries=2',
    '-oAcquire::http::Timeout=30',
    '-oAcquire::Languages=none',
    '-oDebug::NoLocking=1',
  ];
}

function setupPrivateApt(cache, mirror) {
  const d = aptDirs(cache);
  for (const p of [d.base, join(d.lists, 'partial'), join(d.cache, 'archives', 'partial'), d.sourceParts, d.prefParts]) {
    mkdirSync(p, { recursive: true });
  }
  if (!existsSync(d.status)) writeFileSync(d.status, '');
  const opt = `[arch=ppc64el signed-by=${KEYRING}]`;
  const sources = [
    `deb ${opt} ${mirror} bookworm main`,
    `deb ${opt} ${mirror} bookworm-updates main`,
    `deb ${opt} ${mirror} bookworm-backports main`,
  ].join('\n');
  writeFileSync(d.sourceList, `${sources}\n`);
  return d;
}

function privateAptUpdate(d, mirror) {
  log(`apt-get update (private ppc64el state, mirror ${mirror})`);
  const r = run('apt-get', [...aptOpts(d), 'update'], { check: false, timeoutMs: 10 * 60_000 });
  const text = `${r.stdout}\n${r.stderr}`;
  const haveBackports = readdirSync(d.lists).some((f) => /bookworm-backports_main_binary-ppc64el_Packages/.test(f));
  const haveMain = readdirSync(d.lists).some((f) => /_bookworm_main_binary-ppc64el_Packages/.test(f));
  if (!haveMain || !haveBackports) {
    throw new SkipError(
      `cannot reach the Debian mirror ${mirror} for ppc64el package lists (apt-get update exit ${r.status})`,
      text.split('\n').filter((l) => /^(E|W|Err):?/.test(l)).slice(0, 8).join('\n'),
    );
  }
  if (r.status !== 0) log(`apt-get update warnings:\n${text.split('\n').filter((l) => /^(E|W|Err)/.test(l)).join('\n')}`);
}

/** Candidate version of `pkg` in a given suite, from `apt-cache madison`. */
function versionInSuite(d, pkg, suite) {
  const r = run('apt-cache', [...aptOpts(d), 'madison', pkg], { check: false });
  for (const line of r.stdout.split('\n')) {
    const cols = line.split('|').map((s) => s.trim());
    if (cols.length >= 3 && cols[0] === pkg && new RegExp(`\\s${suite}/`).test(` ${cols[2]}`)) return cols[1];
  }
  return null;
}

function depends(d, pkg, version) {
  const r = run('apt-cache', [...aptOpts(d), 'show', `${pkg}=${version}`]);
  const m = /^Depends:\s*(.+)$/m.exec(r.stdout);
  return m ? m[1].split(',').map((s) => s.trim()) : [];
}

function candidateVersion(d, pkg) {
  const r = run('apt-cache', [...aptOpts(d), 'show', '--no-all-versions', pkg], { check: false });
  return /^Version:\s*(\S+)$/m.exec(r.stdout)?.[1] ?? null;
}

function download(d, spec, debsDir) {
  mkdirSync(debsDir, { recursive: true });
  if (!spec.includes('=')) {
    const v = candidateVersion(d, spec);
    if (v) spec = `${spec}=${v}`;
  }
  const pre = spec.split('=');
  const existing = `${pre[0]}_${(pre[1] ?? '').replace(/:/g, '%3a')}_ppc64el.deb`;
  if (pre[1] && existsSync(join(debsDir, existing))) return join(debsDir, existing);
  log(`apt-get download ${spec}`);
  const r = run('apt-get', [...aptOpts(d), 'download', spec], { cwd: debsDir, check: false, timeoutMs: 20 * 60_000 });
  if (r.status !== 0) {
    throw new SkipError(`cannot download ${spec} (ppc64el) from the Debian mirror (apt-get exit ${r.status})`, r.stderr.slice(-800));
  }
  const name = spec.split(/[=/]/)[0];
  const debs = readdirSync(debsDir).filter((f) => f.startsWith(`${name}_`) && f.endsWith('_ppc64el.deb'));
  const version = spec.includes('=') ? spec.split('=')[1].replace(/:/g, '%3a') : null;

  const pick = version ? debs.find((f) => f.startsWith(`${name}_${version}_`)) : debs.sort().at(-1);
  if (!pick) throw new Error(`downloaded ${spec} but no .deb for it in ${debsDir}`);
  return join(debsDir, pick);
}

function extractDeb(deb, dest) {
  if (existsSync(join(dest, '.extracted'))) return dest;
  rmSync(dest, { recursive: true, force: true });
  mkdirSync(dest, { recursive: true });
  log(`dpkg -x ${basename(deb)}`);
  run('dpkg', ['-x', deb, dest]);
  writeFileSync(join(dest, '.extracted'), basename(deb));
  return dest;
}

// ---------------------------------------------------------------- node (ppc64le)

function provisionNode(cache) {
  const dir = join(cache, 'node');
  mkdirSync(dir, { recursive: true });
  let tgz = readdirSync(dir).find((f) => f.startsWith('node-linux-ppc64le-') && f.endsWith('.tgz'));
  if (!tgz) {
    log(`npm pack ${NODE_SPEC}`);
    const r = run('npm', ['pack', NODE_SPEC, '--pack-destination', dir, '--silent'], { check: false, cwd: dir, timeoutMs: 15 * 60_000 });
    tgz = readdirSync(dir).find((f) => f.startsWith('node-linux-ppc64le-') && f.endsWith('.tgz'));
    if (r.status !== 0 || !tgz) {
      throw new SkipError(`cannot fetch ${NODE_SPEC} from the npm registry (npm pack exit ${r.status})`, r.stderr.slice(-800));
    }
  }
  const version = /node-linux-ppc64le-(.+)\.tgz$/.exec(tgz)[1];
  const out = join(dir, `extract-${version}`);
  if (!existsSync(join(out, 'package', 'bin', 'node'))) {
    rmSync(out, { recursive: true, force: true });
    mkdirSync(out, { recursive: true });
    // Only the binary: the package's headers and docs are not needed in the guest.
    run('tar', ['-xzf', join(dir, tgz), '-C', out, 'package/bin/node']);
  }
  const bin = join(out, 'package', 'bin', 'node');
  if (!existsSync(bin)) throw new Error(`${tgz} has no package/bin/node`);
  return { version, bin, root: join(out, 'package') };
}

// ---------------------------------------------------------------- kernel

function findKernelFiles(root) {
  const boot = join(root, 'boot');
  const vm = existsSync(boot) ? readdirSync(boot).find((f) => /^vmlinux-/.test(f)) : null;
  if (!vm) throw new Error(`no /boot/vmlinux-* in ${root}`);
  const kver = vm.slice('vmlinux-'.length);
  const modulesDir = [join(root, 'lib', 'modules', kver), join(root, 'usr', 'lib', 'modules', kver)].find((p) => existsSync(p));
  if (!modulesDir) throw new Error(`no modules directory for ${kver} in ${root}`);
  return { kver, vmlinux: join(boot, vm), modulesDir };
}

// ---------------------------------------------------------------- entry point

function manifestValid(m) {
  if (!m || m.format !== MANIFEST_FORMAT) return false;
  const paths = [m.kernel.vmlinux, m.kernel.modulesDir, m.busybox, m.node.bin, ...m.libRoots];
  return paths.every((p) => existsSync(p));
}

/**
 * Provision everything the guests need; idempotent and cached.
 * Returns the manifest (paths into the cache). Throws SkipError when impossible.
 */
export function provision({ cache = cacheDir(), refresh = false } = {}) {
  mkdirSync(cache, { recursive: true });
  ensureHostPackages();
  for (const tool of ['qemu-system-ppc64', 'powerpc64le-linux-gnu-gcc', 'dpkg', 'apt-get', 'npm']) {
    if (!which(tool)) throw new SkipError(`required host tool ${tool} is missing`);
  }

  return withLock(join(cache, '.lock'), () => provisionLocked(cache, refresh));
}

function provisionLocked(cache, refresh) {
  const manifestPath = join(cache, 'manifest.json');
  if (!refresh && existsSync(manifestPath)) {
    try {
      const m = JSON.parse(readFileSync(manifestPath, 'utf8'));
      if (manifestValid(m)) return m;
    } catch {
      /* rebuild */
    }
  }

  const mirror = detectMirror();
  const d = setupPrivateApt(cache, mirror);
  privateAptUpdate(d, mirror);
  const debs = join(cache, 'debs');

  // Kernel: the meta package from backports names the versioned image package.
  const kernelMeta = process.env.PVDP_KERNEL_META || 'linux-image-powerpc64le';
  const metaVer = versionInSuite(d, kernelMeta, 'bookworm-backports');
  if (!metaVer) throw new SkipError(`${kernelMeta} is not in bookworm-backports on ${mirror}`);
  const imageDep = depends(d, kernelMeta, metaVer).map((s) => /^(linux-image-[^\s(]+)\s*(?:\(=\s*([^)]+)\))?/.exec(s)).find(Boolean);
  if (!imageDep) throw new Error(`cannot find the image package ${kernelMeta}=${metaVer} depends on`);
  const imagePkg = imageDep[1];
  const imageVer = imageDep[2] || versionInSuite(d, imagePkg, 'bookworm-backports');
  log(`kernel: ${kernelMeta} ${metaVer} -> ${imagePkg} ${imageVer}`);
  const kernelDeb = download(d, `${imagePkg}=${imageVer}`, debs);
  const kernelRoot = extractDeb(kernelDeb, join(cache, 'root', imagePkg));
  const kernel = { package: imagePkg, version: imageVer, ...findKernelFiles(kernelRoot) };

  const pkgs = {};
  for (const p of GUEST_PACKAGES) {
    const deb = download(d, p, debs);
    pkgs[p] = { deb: basename(deb), root: extractDeb(deb, join(cache, 'root', basename(deb, '.deb'))) };
  }
  const busybox = join(pkgs['busybox-static'].root, 'bin', 'busybox');
  if (!existsSync(busybox)) throw new Error('busybox-static has no /bin/busybox');

  const node = provisionNode(cache);

  const manifest = {
    format: MANIFEST_FORMAT,
    cache,
    mirror,
    created: new Date().toISOString(),
    kernel,
    busybox,
    packages: Object.fromEntries(Object.entries(pkgs).map(([k, v]) => [k, v.deb])),
    libRoots: ['libc6', 'libstdc++6', 'libgcc-s1'].map((p) => pkgs[p].root),
    node,
  };
  const tmp = `${manifestPath}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(manifest, null, 2)}\n`);
  renameSync(tmp, manifestPath);
  log(`provisioned: kernel ${kernel.kver}, node ${node.version}, cache ${cache}`);
  return manifest;
}

export function cacheSize(cache = cacheDir()) {
  const r = run('du', ['-sb', cache], { check: false });
  return Number(r.stdout.split(/\s/)[0] || 0) || statSync(cache).size;
}
