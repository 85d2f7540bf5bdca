// The V8 young generation cap the entry point sets before the daemon loads:
// on unless PVDP_V8_YOUNG_GENERATION_CAP=off, and documented in the README.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { capYoungGeneration, YOUNG_GENERATION_ENV } from '../../src/cli/young-generation.js';

describe('capYoungGeneration', () => {
  it('sets a growth factor of 1 unless the variable says off', () => {
    const set: string[] = [];
    const setFlags = (flags: string): void => void set.push(flags);
    expect(capYoungGeneration({ [YOUNG_GENERATION_ENV]: 'off' }, setFlags)).toBe(false);
    expect(capYoungGeneration({ [YOUNG_GENERATION_ENV]: ' OFF ' }, setFlags)).toBe(false);
    expect(set).toEqual([]);
    expect(capYoungGeneration({}, setFlags)).toBe(true);
    expect(set).toEqual(['--semi-space-growth-factor=1']);
  });

  it('is documented with the flags', () => {
    const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');
    expect(readme).toContain(`\`${YOUNG_GENERATION_ENV}\``);
  });
});
