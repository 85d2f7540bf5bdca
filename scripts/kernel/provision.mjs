#!/usr/bin/env node
// Provision (and cache) everything the real-kernel tests need, without booting.
// Exit 0 when provisioned, 77 (printed SKIP reason) when this machine cannot
// reach the Debian mirror or the npm registry, 1 on any other error.
import { provision, cacheDir, cacheSize } from '../../test/kernel/lib/provision.mjs';
import { SkipError, SKIP_EXIT_CODE, fmtBytes } from '../../test/kernel/lib/util.mjs';

const refresh = process.argv.includes('--refresh');
try {
  const t0 = Date.now();
  const m = provision({ refresh });
  console.log(`provisioned in ${((Date.now() - t0) / 1000).toFixed(1)} s: kernel ${m.kernel.kver} (${m.kernel.package} ${m.kernel.version}), node ${m.node.version}`);
  console.log(`cache ${cacheDir()}: ${fmtBytes(cacheSize())}`);
} catch (err) {
  if (err instanceof SkipError) {
    console.log(`SKIP: ${err.reason}`);
    if (err.detail) console.log(err.detail);
    process.exit(SKIP_EXIT_CODE);
  }
  console.error(err.stack || String(err));
  process.exit(1);
}
