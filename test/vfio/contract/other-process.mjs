// Child of the guest runner. Two kinds of request, one JSON argument each:
// - {"op","fdIndex","args","dist"}: one binding call in a different process on fds inherited at
//   3, 4, ... (the mm rule: a container whose mm is the parent's answers EPERM here);
// - {"script","args","dist","unprivileged"}: a script of contract-child.ts in a process of its own
//   (its kernel leaks of locked memory go with it), first dropping to uid/gid 65534 (no
//   CAP_IPC_LOCK) when asked. The runner sets RLIMIT_MEMLOCK before exec.
// Bigints are {"$bigint":"<decimal>"}. Output: one JSON line {"ok":true,"value":...} or
// {"ok":false,"code":"EPERM","message":"..."}.
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const request = JSON.parse(process.argv[2] ?? '{}');
const revive = (v) =>
  v && typeof v === 'object' && !Array.isArray(v)
    ? '$bigint' in v
      ? BigInt(v.$bigint)
      : Object.fromEntries(Object.entries(v).map(([k, x]) => [k, revive(x)]))
    : Array.isArray(v)
      ? v.map(revive)
      : v;
if (request.unprivileged) {
  process.setgroups?.([]);
  process.setgid(65534);
  process.setuid(65534);
}
const { NativeBinding } = await import(pathToFileURL(join(request.dist, 'vfio', 'native-binding.js')).href);
const binding = new NativeBinding();
const show = (v) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? { $bigint: x.toString() } : x));
try {
  let value;
  if (request.script) {
    const { childScripts } = await import(pathToFileURL(join(request.dist, 'vfio', 'contract-child.js')).href);
    value = await childScripts[request.script](binding, revive(request.args ?? {}));
  } else {
    value = await binding[request.op](3 + request.fdIndex, ...revive(request.args ?? []));
  }
  process.stdout.write(`${show({ ok: true, value: value ?? null })}\n`);
} catch (err) {
  process.stdout.write(`${show({ ok: false, code: err?.code ?? String(err), message: err?.message })}\n`);
}
