// Small helpers shared by the real-kernel harness: logging, running host
// commands, and the SkipError that marks "this machine cannot provide what the
// harness needs" (as opposed to a failure of the code under test).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, existsSync, statSync, readdirSync, openSync, writeSync, closeSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/** Provisioning is impossible here (no mirror, no registry, no qemu): skip with this reason. */
export class SkipError extends Error {
  constructor(reason, detail) {
    super(reason);
    this.name = 'SkipError';
    this.reason = reason;
    this.detail = detail;
  }
}

export const SKIP_EXIT_CODE = 77;

let quiet = process.env.PVDP_KERNEL_QUIET === '1';
export function setQuiet(q) {
  quiet = q;
}
export function log(msg) {
  if (!quiet) process.stderr.write(`[kernel] ${msg}\n`);
}

/**
 * Run a command synchronously; returns { status, stdout, stderr }.
 * Throws (with the tail of its output) when it fails and `check` is true.
 */
export function run(cmd, args, { cwd, env, check = true, input, timeoutMs, maxBuffer = 256 * 1024 * 1024 } = {}) {
  const r = spawnSync(cmd, args, {
    cwd,
    env: env ? { ...process.env, ...env } : process.env,
    input,
    encoding: 'utf8',
    timeout: timeoutMs,
    maxBuffer,
  });
  const out = { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', error: r.error };
  if (check && (r.error || r.status !== 0)) {
    const tail = `${out.stdout}\n${out.stderr}`.trim().split('\n').slice(-15).join('\n');
    const e = new Error(`${cmd} ${args.join(' ')} failed (${r.error ? r.error.message : `exit ${r.status}`}):\n${tail}`);
    e.result = out;
    throw e;
  }
  return out;
}

export function which(name) {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

export function sha256(...parts) {
  const h = createHash('sha256');
  for (const p of parts) h.update(typeof p === 'string' || Buffer.isBuffer(p) ? p : JSON.stringify(p));
  return h.digest('hex');
}

/** Hash of a file tree (paths, modes, contents): used to key cached builds. */
export function hashTree(dir) {
  const h = createHash('sha256');
  const walk = (d, rel) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      const r = rel ? `${rel}/${name}` : name;
      h.update(`${r}\0${st.mode}\0`);
      if (st.isDirectory()) walk(p, r);
      else h.update(readFileSync(p));
    }
  };
  if (existsSync(dir)) walk(dir, '');
  return h.digest('hex');
}

export function fmtBytes(n) {
  if (n > 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  if (n > 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

function sleepSync(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * Run fn while holding an exclusive lock file (another process provisioning or building
 * into the same cache waits; a lock left by a dead process is taken over).
 */
export function withLock(lockPath, fn, { timeoutMs = 30 * 60_000 } = {}) {
  const t0 = Date.now();
  let announced = false;
  for (;;) {
    try {
      const fd = openSync(lockPath, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      break;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
      let holder = NaN;
      try {
        holder = Number(readFileSync(lockPath, 'utf8'));
      } catch {
        continue;
      }
      let alive = false;
      try {
        process.kill(holder, 0);
        alive = holder !== process.pid;
      } catch {
        alive = false;
      }
      if (!alive) {
        rmSync(lockPath, { force: true });
        continue;
      }
      if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${lockPath} (held by pid ${holder})`);
      if (!announced) {
        log(`waiting for ${lockPath} (pid ${holder})`);
        announced = true;
      }
      sleepSync(500);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lockPath, { force: true });
  }
}
