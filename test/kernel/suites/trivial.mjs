// The trivial suite: proves the whole path (kernel, modules, vfio-pci binding,
// ppc64le node with Debian's glibc, a cross-compiled static C program using
// <linux/vfio.h>) before any project code runs in the guest.
import { join } from 'node:path';
import { HERE, crossCompileC } from '../harness.mjs';

const DIR = join(HERE, 'payloads', 'trivial');

// Facts this suite pins down per machine (spapr-vfio-facts.md, sections 3 and 5).
const EXPECT = {
  pseries: { platform: 'pseries', eehExtension: 0, eehAttrs: false },
  powernv9: { platform: 'powernv', eehExtension: 1, eehAttrs: true },
};

export const name = 'trivial';

export function available() {
  return { ok: true };
}

export function prepare() {
  const probe = crossCompileC(join(DIR, 'vfio_probe.c'));
  return {
    payloadDir: DIR,
    files: { vfio_probe: { hostPath: probe, mode: 0o755 } },
    command: 'sh ./run.sh',
    timeoutMs: 90_000,
  };
}

function kv(line) {
  const o = {};
  for (const m of line.matchAll(/(\w+)=(\S+)/g)) o[m[1]] = m[2];
  return o;
}

/** Turn one guest run into test results: [{ name, ok, detail }]. */
export function evaluate(machine, r) {
  const exp = EXPECT[machine];
  const results = [];
  const t = (n, ok, detail) => results.push({ name: n, ok: Boolean(ok), detail });

  t('boots and runs the payload', r.exitCode !== null, r.error ?? `boot ${r.bootMs} ms, total ${r.totalMs} ms`);
  t(
    'binds the test device to vfio-pci',
    r.groupNumber !== null && r.deviceAddress && r.info.driver === 'vfio-pci' && r.platform === exp.platform,
    `platform=${r.platform} bdf=${r.deviceAddress} group=${r.groupNumber} name=${r.info.group_name}`,
  );

  const nodeLine = /^NODE (\{.*\})$/m.exec(r.payloadOutput);
  let node = null;
  try {
    node = nodeLine ? JSON.parse(nodeLine[1]) : null;
  } catch {
    node = null;
  }
  t(
    'ppc64le node runs and sees the group',
    node &&
      node.arch === 'ppc64' &&
      node.endianness === 'LE' &&
      node.group === r.groupNumber &&
      node.devNode === true &&
      node.members.length > 0 &&
      node.members.every((m) => m.driver === 'vfio-pci'),
    node ? `arch=${node.arch} ${node.endianness} ${node.version} group=${node.group} members=${node.members.map((m) => `${m.bdf}:${m.driver}`).join(',')}` : 'no NODE line',
  );
  t(
    `EEH attributes ${exp.eehAttrs ? 'present' : 'absent'} in sysfs`,
    node && node.members.every((m) => (m.eehPeState !== null) === exp.eehAttrs),
    node ? `eeh_pe_state=${node.members.map((m) => m.eehPeState).join(',')}` : 'no NODE line',
  );

  const probes = [...r.payloadOutput.matchAll(/^PROBE (.*)$/gm)].map((m) => kv(m[1]));
  const probeLine = probes.length > 0;
  const p = probes.find((x) => Number(x.group) === r.groupNumber) ?? probes[0] ?? {};
  t(
    'VFIO_GET_API_VERSION through a cross-compiled probe',
    p.api === '0' && p.api_ioctl === '0x20003b64',
    probeLine ? `api=${p.api} ioctl=${p.api_ioctl}` : 'no PROBE line',
  );
  t(
    'VFIO_GROUP_GET_STATUS reports the group viable',
    p.viable === '1' && p.group_flags === '0x1' && Number(p.group) === r.groupNumber,
    probeLine ? `group=${p.group} flags=${p.group_flags}` : 'no PROBE line',
  );
  t(
    'sPAPR TCE v1/v2 extensions and the EEH extension',
    p.ext_spapr_tce === '1' && p.ext_spapr_tce_v2 === '1' && Number(p.ext_eeh) === exp.eehExtension,
    probeLine ? `v1=${p.ext_spapr_tce} v2=${p.ext_spapr_tce_v2} eeh=${p.ext_eeh} (expected eeh=${exp.eehExtension})` : 'no PROBE line',
  );
  t(
    'a second test device in its own group, bound and viable',
    r.groups.length === 2 &&
      r.deviceAddresses.length === 2 &&
      new Set(r.groups).size === 2 &&
      r.groups.every((g) => probes.some((x) => Number(x.group) === g && x.viable === '1')),
    `groups=${r.groups.join(',')} bdfs=${r.deviceAddresses.join(',')} viable=${probes.map((x) => `${x.group}:${x.viable}`).join(',')}`,
  );
  t('payload exits 0', r.exitCode === 0, `exit ${r.exitCode}`);
  return results;
}
