import { describe, it, expect } from 'vitest';
import { parseCpuinfo } from '../../src/report/cpuinfo.js';

describe('cpuinfo', () => {
  it('reads the POWER generation and platform', () => {
    const powernv = 'processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nclock\t\t: 2300.000000MHz\n\ntimebase\t: 512000000\nplatform\t: PowerNV\nmodel\t\t: 9006-22P\n';
    expect(parseCpuinfo(powernv)).toEqual({ powerGeneration: 'power9', platform: 'powernv' });
    expect(parseCpuinfo('cpu\t\t: POWER10 (raw), altivec supported\nplatform\t: pSeries\n')).toEqual({ powerGeneration: 'power10', platform: 'pseries' });
  });

  it('labels nothing off POWER', () => {
    expect(parseCpuinfo('processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n')).toEqual({});
    expect(parseCpuinfo('platform\t: Unknown\n')).toEqual({});
  });
});
