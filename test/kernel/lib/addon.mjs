// Cross-compiles the project's native addon for ppc64le with node-gyp, in a
// staging directory under the cache so the host build (build/) is never touched.
// N-API addons are ABI-stable, so the host's node headers (npm's nodedir) serve
// for the guest's node too.
import { existsSync, mkdirSync, cpSync, symlinkSync, readdirSync, rmSync, writeFileSync, readFileSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { createRequire } from 'node:module';
import { cacheDir } from './provision.mjs';
import { run, log, sha256, hashTree, withLock } from './util.mjs';

function findNodeGyp(repoRoot) {
  const candidates = [
    join(repoRoot, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/local/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
  ];
  try {
    const req = createRequire(join(repoRoot, 'package.json'));
    candidates.unshift(req.resolve('node-gyp/bin/node-gyp.js'));
  } catch {
    /* not a dependency */
  }
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error('node-gyp not found (neither in node_modules nor bundled with npm)');
  return found;
}

/**
 * Build the addon for ppc64le. `sources` lists repo-relative files/dirs the build needs
 * (default: binding.gyp and native/). Returns { dir, nodeFiles: [absolute paths of *.node] }.
 * Cached by the content of the sources.
 */
export function buildAddonPpc64le({ repoRoot, sources = ['binding.gyp', 'native'], nodeDir, extraGypArgs = [] } = {}) {
  for (const s of sources) if (!existsSync(join(repoRoot, s))) throw new Error(`addon source ${s} missing in ${repoRoot}`);
  const key = sha256(
    'addon-v1',
    ...sources.map((s) => (statSync(join(repoRoot, s)).isDirectory() ? hashTree(join(repoRoot, s)) : readFileSync(join(repoRoot, s)))),
    nodeDir ?? '',
    extraGypArgs,
  ).slice(0, 16);
  const stage = join(cacheDir(), 'build', `addon-ppc64le-${key}`);
  const release = join(stage, 'build', 'Release');
  const listNodes = () => (existsSync(release) ? readdirSync(release).filter((f) => f.endsWith('.node')).map((f) => join(release, f)) : []);
  if (existsSync(join(stage, '.done')) && listNodes().length) return { dir: stage, nodeFiles: listNodes() };
  mkdirSync(join(cacheDir(), 'build'), { recursive: true });
  return withLock(join(cacheDir(), 'build', '.addon.lock'), () => {
    if (existsSync(join(stage, '.done')) && listNodes().length) return { dir: stage, nodeFiles: listNodes() };
    pruneAddonBuilds();
    return crossBuild({ repoRoot, sources, nodeDir, extraGypArgs, stage, listNodes });
  });
}

function pruneAddonBuilds(keep = 3) {
  const dir = join(cacheDir(), 'build');
  const old = readdirSync(dir)
    .filter((f) => f.startsWith('addon-ppc64le-'))
    .map((f) => ({ f, t: statSync(join(dir, f)).mtimeMs }))
    .sort((a, b) => b.t - a.t);
  for (const { f } of old.slice(keep)) rmSync(join(dir, f), { recursive: true, force: true });
}

function crossBuild({ repoRoot, sources, nodeDir, extraGypArgs, stage, listNodes }) {
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true });
  for (const s of sources) cpSync(join(repoRoot, s), join(stage, s), { recursive: true });
  if (existsSync(join(repoRoot, 'package.json'))) cpSync(join(repoRoot, 'package.json'), join(stage, 'package.json'));
  // binding.gyp typically asks node for node-addon-api's include dir, resolved from the cwd.
  if (existsSync(join(repoRoot, 'node_modules'))) symlinkSync(join(repoRoot, 'node_modules'), join(stage, 'node_modules'));

  const gyp = findNodeGyp(repoRoot);
  const env = {
    CC: 'powerpc64le-linux-gnu-gcc',
    CXX: 'powerpc64le-linux-gnu-g++',
    LINK: 'powerpc64le-linux-gnu-g++',
    AR: 'powerpc64le-linux-gnu-ar',
    CC_target: 'powerpc64le-linux-gnu-gcc',
    CXX_target: 'powerpc64le-linux-gnu-g++',
    LINK_target: 'powerpc64le-linux-gnu-g++',
    AR_target: 'powerpc64le-linux-gnu-ar',
    CC_host: 'gcc',
    CXX_host: 'g++',
  };
  const args = [gyp, 'rebuild', '--arch=ppc64', `--directory=${stage}`, '--jobs=2', ...extraGypArgs];
  const execRoot = join(dirname(process.execPath), '..');
  const nd =
    nodeDir ?? process.env.npm_config_nodedir ?? readNpmNodedir() ?? (existsSync(join(execRoot, 'include', 'node', 'node_api.h')) ? execRoot : null);
  if (nd) args.push(`--nodedir=${nd}`);
  log(`node-gyp ${args.slice(1).join(' ')} (cross, ppc64le)`);
  run(process.execPath, args, { cwd: stage, env, timeoutMs: 15 * 60_000 });
  const nodes = listNodes();
  if (!nodes.length) throw new Error(`node-gyp produced no .node in ${join(stage, "build", "Release")}`);
  const file = run('file', [nodes[0]], { check: false }).stdout;
  if (file && !/PowerPC|64-bit PowerPC|OpenPOWER/i.test(file)) throw new Error(`cross build is not ppc64le: ${file}`);
  writeFileSync(join(stage, '.done'), new Date().toISOString());
  return { dir: stage, nodeFiles: nodes };
}

function readNpmNodedir() {
  const r = run('npm', ['config', 'get', 'nodedir'], { check: false });
  const v = r.stdout.trim();
  return v && v !== 'undefined' && v !== 'null' ? v : null;
}
