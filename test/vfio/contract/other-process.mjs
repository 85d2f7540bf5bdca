// Child of the guest runner: performs one binding call in a different process
// on fds inherited at 3, 4, ... (the mm rule: a container whose mm is the
// parent's answers EPERM here). Input: one JSON argument
// {"op","fdIndex","args","dist"}; bigints are {"$bigint":"<decimal>"}.
// Output: one JSON line {"ok":true,"value":...} or {"ok":false,"code":"EPERM"}.
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
const { NativeBinding } = await import(pathToFileURL(join(request.dist, 'vfio', 'native-binding.js')).href);
const binding = new NativeBinding();
const show = (v) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? { $bigint: x.toString() } : x));
try {
  const value = await binding[request.op](3 + request.fdIndex, ...revive(request.args ?? []));
  process.stdout.write(`${show({ ok: true, value: value ?? null })}\n`);
} catch (err) {
  process.stdout.write(`${show({ ok: false, code: err?.code ?? String(err) })}\n`);
}
