// The project's test command: runs vitest, then prints one closing line
// `N passed, N failed, N skipped` from vitest's JSON report and exits non-zero
// on any failure or when no test ran. Extra arguments go to vitest.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = mkdtempSync(join(tmpdir(), 'pvdp-report-'));
const report = join(dir, 'vitest.json');
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
const run = spawnSync(
  process.execPath,
  [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...process.argv.slice(2)],
  { stdio: 'inherit', cwd: root },
);

let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const json = JSON.parse(readFileSync(report, 'utf8'));
  passed = json.numPassedTests ?? 0;
  // Failed tests, plus files that failed before any of their tests ran.
  const brokenFiles = (json.testResults ?? []).filter(
    (file) => file.status === 'failed' && (file.assertionResults ?? []).length === 0,
  ).length;
  failed = (json.numFailedTests ?? 0) + brokenFiles;
  skipped = (json.numPendingTests ?? 0) + (json.numTodoTests ?? 0);
  // Named again at the end, where a log's tail (CI keeps only that) still shows them.
  for (const file of json.testResults ?? []) {
    const name = file.name.startsWith(root) ? file.name.slice(root.length + 1) : file.name;
    const failures = (file.assertionResults ?? []).filter((a) => a.status === 'failed');
    for (const a of failures) {
      const why = (a.failureMessages?.[0] ?? '').split('\n')[0]?.slice(0, 300) ?? '';
      console.log(`FAILED ${name} > ${a.fullName}: ${why}`);
    }
    if (file.status === 'failed' && failures.length === 0) console.log(`FAILED ${name}: ${(file.message ?? 'the file failed outside its tests').split('\n')[0]?.slice(0, 300)}`);
  }
} catch (err) {
  console.error(`No vitest report could be read (${err.message})`);
  failed += 1;
}
rmSync(dir, { recursive: true, force: true });
if (run.status !== 0 && failed === 0) {
  console.log(`FAILED vitest exited with status ${run.status} although no test failed (an error outside the tests; see above)`);
  failed = 1;
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
