// The operator's guide's resource examples are valid: each YAML block that
// sets config.resources is accepted by the plugin's parser and by the chart.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { NAMESPACE, RELEASE, chartDir, helmSetup, repoRoot, runHelm } from './chart-helpers.js';

const guide = readFileSync(join(repoRoot, 'docs', 'operator-guide.md'), 'utf8');
const blocks = [...guide.matchAll(/```yaml\n([\s\S]*?)```/g)]
  .map((m) => m[1]!)
  .filter((text) => /^config:\n  resources:/m.test(text));
const setup = helmSetup();
const scratch = mkdtempSync('/tmp/pvdp-docs-');
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('docs/operator-guide.md resource examples', () => {
  it('has examples for GPUs, NVMe, ConnectX VFs and FPGAs', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(5);
    for (const id of ['"10de"', '"010802"', '"15b3"', '"10ee"']) expect(blocks.some((b) => b.includes(id)), id).toBe(true);
  });

  it.each(blocks.map((b, i) => [i, b]))("example %i is accepted by the plugin's parser", (_i, block) => {
    const values = parse(block) as { config: { resources: unknown[] } };
    expect(() => parseConfig({ resources: values.config.resources }, 'guide example')).not.toThrow();
  });

  it.skipIf(!setup.helm).each(blocks.map((b, i) => [i, b]))('example %i renders with the chart', (i, block) => {
    const file = join(scratch, `example-${i}.yaml`);
    writeFileSync(file, block);
    const run = runHelm(['template', RELEASE, chartDir, '--namespace', NAMESPACE, '-f', file]);
    expect(run.status, run.stderr).toBe(0);
  });
});
