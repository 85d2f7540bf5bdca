// What the README promises a newcomer matches the code: the build
// prerequisites of the native addon, and the handoff directory's length limit.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseCommandLine, resolveSettings } from '../../src/config/settings.js';
import { simulatedNodeConfig } from '../../src/simulate/node-config.js';

const root = join(import.meta.dirname, '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');

/** The longest --handoff-dir the code accepts (the built-in configuration has a handoff resource). */
async function codeLimit(): Promise<number> {
  let longest = 0;
  for (let n = 40; n < 120; n++) {
    const dir = `/${'h'.repeat(n - 1)}`;
    const ok = await resolveSettings(parseCommandLine(['--handoff-dir', dir], {}).values, simulatedNodeConfig).then(
      () => true,
      () => false,
    );
    if (ok) longest = n;
  }
  return longest;
}

describe('README', () => {
  it('lists the native build prerequisites', () => {
    for (const tool of ['python3', 'make', 'g++']) expect(readme).toContain(`\`${tool}\``);
  });

  it('states the handoff directory limit the code enforces, as do the guide and the chart', async () => {
    const limit = await codeLimit();
    expect(limit).toBe(66);
    const stated = /`--handoff-dir`[^\n]*at most (\d+) bytes/.exec(readme);
    expect(Number(stated?.[1])).toBe(limit);
    const guide = readFileSync(join(root, 'docs', 'operator-guide.md'), 'utf8');
    const values = readFileSync(join(root, 'charts', 'power-vfio-device-plugin', 'values.yaml'), 'utf8');
    for (const text of [guide, values]) {
      const all = [...text.matchAll(/at most (\d+) bytes|(\d+) bytes or less/gi)].map((m) => Number(m[1] ?? m[2]));
      expect(all.length).toBeGreaterThan(0);
      for (const n of all) expect(n).toBe(limit);
    }
  });
});
