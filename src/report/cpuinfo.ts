// The POWER generation and platform, from /proc/cpuinfo, for node labels.
// On ppc64le the kernel prints `cpu : POWER9 (architected), altivec supported`
// per CPU and `platform : PowerNV` (bare metal) or `pSeries` (an LPAR).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NodeCapabilities } from './snapshot.js';

export function parseCpuinfo(text: string): Pick<NodeCapabilities, 'powerGeneration' | 'platform'> {
  const out: Pick<NodeCapabilities, 'powerGeneration' | 'platform'> = {};
  const cpu = /^cpu\s*:\s*POWER(\d+)/im.exec(text);
  if (cpu) out.powerGeneration = `power${cpu[1]}`;
  const platform = /^platform\s*:\s*(\S+)/im.exec(text);
  if (platform) {
    const name = platform[1]!.toLowerCase();
    if (name === 'powernv' || name === 'pseries') out.platform = name;
  }
  return out;
}

/** Nothing is known (and nothing labelled) off POWER or when the file cannot be read. */
export async function readCpuCapabilities(procRoot = '/'): Promise<Pick<NodeCapabilities, 'powerGeneration' | 'platform'>> {
  try {
    return parseCpuinfo(await readFile(join(procRoot, 'proc', 'cpuinfo'), 'utf8'));
  } catch {
    return {};
  }
}
