#!/usr/bin/env node
// Boot one real-kernel guest and run a command in it, streaming the serial console.
// For poking at the kernel by hand:
//
//   node scripts/kernel/guest-run.mjs [--machine pseries|powernv9] [--payload DIR] [--timeout SECONDS] [--quiet] -- COMMAND...
//
// DIR is copied to /payload (the command's working directory); the ppc64le node is on PATH;
// PVDP_GROUP, PVDP_BDF, PVDP_PLATFORM, PVDP_GROUP_MEMBERS describe the device bound to vfio-pci.
// Exits with the command's exit code in the guest (125 when the guest gave none, 77 on SKIP).
import { runInGuest, provision, SkipError } from '../../test/kernel/harness.mjs';
import { SKIP_EXIT_CODE } from '../../test/kernel/lib/util.mjs';

const argv = process.argv.slice(2);
let machine = 'pseries';
let payloadDir;
let timeout = 120;
let quiet = false;
const sep = argv.indexOf('--');
const opts = sep >= 0 ? argv.slice(0, sep) : argv;
const cmd = sep >= 0 ? argv.slice(sep + 1) : [];
for (let i = 0; i < opts.length; i++) {
  if (opts[i] === '--machine') machine = opts[++i];
  else if (opts[i] === '--payload') payloadDir = opts[++i];
  else if (opts[i] === '--timeout') timeout = Number(opts[++i]);
  else if (opts[i] === '--quiet') quiet = true;
  else {
    console.error(`unknown option ${opts[i]}`);
    process.exit(2);
  }
}
const command = cmd.length ? cmd.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ') : 'uname -a; ls -l /dev/vfio';

try {
  provision();
} catch (err) {
  if (err instanceof SkipError) {
    console.log(`SKIP: ${err.reason}`);
    process.exit(SKIP_EXIT_CODE);
  }
  throw err;
}
const r = await runInGuest({
  machine,
  payloadDir,
  command,
  timeoutMs: timeout * 1000,
  onOutput: quiet ? undefined : (s) => process.stdout.write(s.replace(/\r/g, '')),
});
if (quiet) process.stdout.write(r.payloadOutput);
console.error(
  `\n[guest-run] ${machine}: exit=${r.exitCode} group=${r.groupNumber} bdf=${r.deviceAddress} boot=${r.bootMs} ms total=${r.totalMs} ms${r.error ? ` error: ${r.error}` : ''}`,
);
process.exit(r.exitCode ?? 125);
