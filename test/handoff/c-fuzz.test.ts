// The C client's message parsing under libFuzzer (clients/c/fuzz): coverage
// guided, with AddressSanitizer and UBSan, for a bounded time
// (PVDP_FUZZ_SECONDS, 10 s by default, 60 s in CI). A crash, a sanitizer
// report or a broken invariant fails the test with the input that caused it.
// Without clang and libFuzzer the test skips with the reason, except where
// PVDP_REQUIRE_FUZZ=1 (CI, which installs clang from Debian first).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { removeDir, tempDir } from './support.js';

const FUZZ_DIR = join(import.meta.dirname, '..', '..', 'clients', 'c', 'fuzz');
const seconds = Number(process.env['PVDP_FUZZ_SECONDS'] ?? '10');
const required = process.env['PVDP_REQUIRE_FUZZ'] === '1';

function run(command: string, args: string[], cwd: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd, env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1', UBSAN_OPTIONS: 'print_stacktrace=1' } });
    let output = '';
    child.stdout.on('data', (d) => (output += d.toString()));
    child.stderr.on('data', (d) => (output += d.toString()));
    child.on('error', (err) => resolve({ code: null, output: `${output}${err.message}` }));
    child.on('close', (code) => resolve({ code, output }));
  });
}

/** Seeds: the answers the plugin really sends, so the fuzzer starts from deep inside the parser. */
function seeds(): Record<string, Buffer> {
  const description = {
    protocol: 1,
    resource: 'ibm.com/edu',
    iommu: { type: 'spapr-tce-v2', value: 7 },
    window: { start: '0x800000000000000', size: '0x40000000', pageShift: 16, pageSize: '0x10000', created: true },
    memory: { fdIndex: 1, size: '0x100000', pageSize: '0x1000', hugetlb: false },
    container: { fdIndex: 0 },
    groups: [
      { group: 4, fdIndex: 2, functions: ['0001:00:01.0', '0001:00:01.1'] },
      { group: 5, fdIndex: 3, functions: ['0002:00:01.0'] },
    ],
    ranges: [
      { iova: '0x800000000000000', size: '0x80000', offset: '0x0' },
      { iova: '0x800000000100000', size: '0x80000', offset: '0x80000' },
    ],
    fds: ['container', 'memory', 'group:4', 'group:5'],
  };
  const line = (fds: number, value: unknown) => Buffer.concat([Buffer.from([fds]), Buffer.from(`${JSON.stringify(value)}\n`)]);
  return {
    claimed: line(4, { protocol: 1, result: 'claimed', description }),
    busy: line(0, { protocol: 1, result: 'error', error: { code: 'PVDP_HANDOFF_BUSY', message: 'Too many connections to this handoff socket; retry in a moment' } }),
    unsupported: line(0, { protocol: 1, result: 'error', error: { code: 'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL', message: 'Protocol version 2', supportedProtocols: [1] } }),
    escapes: line(3, { protocol: 1, result: 'claimed', description: { ...description, resource: 'a\\"b\u00e9\n', groups: [description.groups[0]] } }),
  };
}

describe('libFuzzer on the C client\'s response parsing', () => {
  let dir = '';
  let binary: string | null = null;
  let why = '';

  beforeAll(async () => {
    dir = await tempDir();
    binary = join(dir, 'fuzz_response');
    const built = await run(
      'clang',
      ['-g', '-O1', '-fsanitize=fuzzer,address,undefined', '-fno-sanitize-recover=all', '-Wall', '-Werror', join(FUZZ_DIR, 'fuzz_response.c'), '-o', binary],
      dir,
    );
    if (built.code !== 0) {
      why = `clang with libFuzzer is not available (${built.output.trim().split('\n')[0] ?? 'no output'}); install clang and libclang-rt-dev from Debian, or run .ci/run`;
      binary = null;
    }
  }, 120_000);

  afterAll(async () => {
    if (dir) await removeDir(dir);
  });

  it(`runs for ${seconds} s without a crash, a sanitizer report or a broken invariant`, async (ctx) => {
    if (binary === null) {
      if (required) throw new Error(`PVDP_REQUIRE_FUZZ=1 but ${why}`);
      console.log(`Fuzz test skipped: ${why}`);
      ctx.skip();
      return;
    }
    const corpus = join(dir, 'corpus');
    const artifacts = join(dir, 'artifacts');
    await mkdir(corpus);
    await mkdir(artifacts);
    for (const [name, bytes] of Object.entries(seeds())) await writeFile(join(corpus, name), bytes);
    const result = await run(
      binary,
      [`-max_total_time=${seconds}`, '-max_len=8192', '-timeout=10', '-rss_limit_mb=2048', `-artifact_prefix=${artifacts}/`, '-print_final_stats=1', corpus],
      dir,
    );
    const done = /Done (\d+) runs in (\d+) second/.exec(result.output);
    const found = await readdir(artifacts);
    if (result.code !== 0 || found.length > 0) {
      const inputs = await Promise.all(found.map(async (f) => `${f}: ${(await readFile(join(artifacts, f))).toString('hex').slice(0, 400)}`));
      throw new Error(`The fuzzer found a failure (exit ${result.code}):\n${result.output.split('\n').slice(-40).join('\n')}\n${inputs.join('\n')}`);
    }
    expect(done, result.output.slice(-2000)).not.toBeNull();
    const runs = Number(done![1]);
    const coverage = /cov: (\d+)/g;
    let edges = 0;
    for (const m of result.output.matchAll(coverage)) edges = Math.max(edges, Number(m[1]));
    console.log(`Fuzzer: ${runs} inputs in ${done![2]} s, ${edges} coverage points, ${(await readdir(corpus)).length} corpus entries, no failure`);
    // A run that barely started proves nothing.
    expect(runs).toBeGreaterThan(1000);
    expect(edges).toBeGreaterThan(100);
  }, (seconds + 120) * 1000);
});
