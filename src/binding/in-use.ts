// What the host relies on under a PCI function, found from sysfs and /proc:
// network interfaces that are up, block devices that are mounted, used as
// swap or held by another block device (dm, md, LVM), and block or character
// device nodes some process has open. Taking such a function from its driver
// would pull a file system, a route or a handle from under the host.
//
// What is checked and how:
// - interfaces: `<function>/net/<if>/flags` has IFF_UP (administratively up),
//   else `operstate` is `up`;
// - block devices (directories with `holders/` and `dev` under the function):
//   `holders/` not empty; major:minor in `<procRoot>/proc/1/mountinfo` or
//   `<procRoot>/proc/self/mountinfo`; `/dev/<name>` in `<procRoot>/proc/swaps`;
// - open nodes: every `<procRoot>/proc/<pid>/fd/<n>` is stat'ed, and a block or
//   character device whose number matches a `dev` file under the function is
//   in use. A process whose fds cannot be read (EACCES) cannot be checked,
//   which refuses too: doubt is not "not in use".
// Not seen: devices the driver creates outside the function's sysfs directory
// (an NVMe multipath head under nvme-subsystem, /dev/hwrng of virtio-rng),
// and users that hold no fd (a kernel consumer such as an NFS export).
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

const IFF_UP = 0x1;
/** sysfs trees under a PCI function are shallow; this bounds a walk through an odd tree. */
const MAX_DEPTH = 6;
const MAX_ENTRIES = 4096;
const PCI_ADDRESS = /^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i;

interface DeviceNumber {
  kind: 'block' | 'char';
  name: string;
  major: number;
  minor: number;
  /** Its sysfs directory. */
  path: string;
}

function code(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? 'EUNKNOWN';
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return null;
  }
}

async function interfacesUp(dir: string, address: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(join(dir, 'net'));
  } catch {
    return [];
  }
  const found: string[] = [];
  for (const name of names.sort()) {
    const flags = await readText(join(dir, 'net', name, 'flags'));
    const parsed = flags === null ? Number.NaN : Number.parseInt(flags.trim(), 16);
    let up: boolean;
    if (!Number.isNaN(parsed)) up = (parsed & IFF_UP) !== 0;
    else up = (await readText(join(dir, 'net', name, 'operstate')))?.trim() === 'up';
    if (up) found.push(`network interface ${name} of function ${address} is up`);
  }
  return found;
}

/** Every `dev` file under the function's directory: its block and character devices. */
async function deviceNumbers(dir: string): Promise<DeviceNumber[]> {
  const found: DeviceNumber[] = [];
  let seen = 0;
  const walk = async (path: string, depth: number): Promise<void> => {
    if (depth > MAX_DEPTH || seen > MAX_ENTRIES) return;
    let entries;
    try {
      entries = await readdir(path, { withFileTypes: true });
    } catch {
      return;
    }
    seen += entries.length;
    const names = new Set(entries.map((e) => e.name));
    if (depth > 0 && names.has('dev')) {
      const text = (await readText(join(path, 'dev')))?.trim() ?? '';
      const m = /^(\d+):(\d+)$/.exec(text);
      if (m) {
        const name = path.slice(path.lastIndexOf('/') + 1);
        found.push({ kind: names.has('holders') ? 'block' : 'char', name, major: Number(m[1]), minor: Number(m[2]), path });
      }
    }
    for (const e of entries) {
      // Symlinks lead out of the function (driver, subsystem, iommu_group); child functions are checked on their own.
      if (!e.isDirectory() || PCI_ADDRESS.test(e.name)) continue;
      await walk(join(path, e.name), depth + 1);
    }
  };
  await walk(dir, 0);
  return found;
}

/** major:minor pairs mounted in the mount namespaces we can see; null with the reason when none could be read. */
async function mountedNumbers(procRoot: string): Promise<{ numbers: Map<string, string>; problem: string | null }> {
  const numbers = new Map<string, string>();
  const paths = [join(procRoot, 'proc', '1', 'mountinfo'), join(procRoot, 'proc', 'self', 'mountinfo')];
  const failures: string[] = [];
  let read = 0;
  for (const path of paths) {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      failures.push(`${path}: ${code(err)}`);
      continue;
    }
    read += 1;
    for (const line of text.split('\n')) {
      // mountinfo: id parent major:minor root mountpoint ...
      const fields = line.split(' ');
      if (fields.length > 4 && /^\d+:\d+$/.test(fields[2] ?? '')) {
        if (!numbers.has(fields[2]!)) numbers.set(fields[2]!, fields[4]!);
      }
    }
  }
  return { numbers, problem: read === 0 ? `cannot read the mount table (${failures.join(', ')})` : null };
}

/** Which processes hold an fd on one of `devices`: `kind major:minor` -> "pid (comm)". */
async function openNodes(procRoot: string, devices: readonly DeviceNumber[]): Promise<{ holders: Map<string, string[]>; problems: string[] }> {
  const wanted = new Set(devices.map((d) => `${d.kind} ${d.major}:${d.minor}`));
  const holders = new Map<string, string[]>();
  const problems: string[] = [];
  const procDir = join(procRoot, 'proc');
  let pids: string[];
  try {
    pids = (await readdir(procDir)).filter((n) => /^\d+$/.test(n));
  } catch (err) {
    return { holders, problems: [`cannot list processes in ${procDir} (${code(err)}), so open device nodes cannot be checked`] };
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(join(procDir, pid, 'fd'));
    } catch (err) {
      // A process that exited meanwhile holds nothing.
      if (code(err) === 'ENOENT' || code(err) === 'ESRCH') continue;
      problems.push(`cannot read the open files of process ${pid} (${code(err)})`);
      continue;
    }
    for (const fd of fds) {
      let st;
      try {
        st = await stat(join(procDir, pid, 'fd', fd));
      } catch {
        continue;
      }
      const kind = st.isBlockDevice() ? 'block' : st.isCharacterDevice() ? 'char' : null;
      if (kind === null) continue;
      // Linux dev_t: major in bits 8-19 (and 32+), minor in bits 0-7 and 20-31.
      const rdev = st.rdev;
      const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
      const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
      const key = `${kind} ${major}:${minor}`;
      if (!wanted.has(key)) continue;
      const comm = (await readText(join(procDir, pid, 'comm')))?.trim();
      const list = holders.get(key) ?? [];
      list.push(comm ? `${pid} (${comm})` : pid);
      holders.set(key, list);
    }
  }
  return { holders, problems };
}

/**
 * What the host uses under the functions whose sysfs directories are given,
 * one sentence each naming the function and the device; empty when nothing.
 */
export async function hostUse(functions: readonly { address: string; dir: string }[], procRoot: string): Promise<string[]> {
  const found: string[] = [];
  const devices: (DeviceNumber & { address: string })[] = [];
  for (const fn of functions) {
    found.push(...(await interfacesUp(fn.dir, fn.address)));
    for (const d of await deviceNumbers(fn.dir)) devices.push({ ...d, address: fn.address });
  }
  if (devices.length === 0) return found;
  const blocks = devices.filter((d) => d.kind === 'block');
  if (blocks.length > 0) {
    const mounts = await mountedNumbers(procRoot);
    const swaps = (await readText(join(procRoot, 'proc', 'swaps'))) ?? '';
    for (const d of blocks) {
      const where = `block device ${d.name} of function ${d.address}`;
      const holders = await readdir(join(d.path, 'holders')).catch(() => [] as string[]);
      if (holders.length > 0) found.push(`${where} is held by ${holders.sort().join(', ')}`);
      const mountpoint = mounts.numbers.get(`${d.major}:${d.minor}`);
      if (mountpoint !== undefined) found.push(`${where} is mounted at ${mountpoint}`);
      else if (mounts.problem) found.push(`${where} may be mounted: ${mounts.problem}`);
      if (swaps.split('\n').some((l) => l.split(/\s+/)[0] === `/dev/${d.name}`)) found.push(`${where} is used as swap`);
    }
  }
  const open = await openNodes(procRoot, devices);
  for (const d of devices) {
    const by = open.holders.get(`${d.kind} ${d.major}:${d.minor}`);
    if (by) found.push(`${d.kind === 'block' ? 'block' : 'character'} device ${d.name} (${d.major}:${d.minor}) of function ${d.address} is open by process ${by.join(', ')}`);
  }
  if (open.problems.length > 0) {
    const names = devices.map((d) => d.name).join(', ');
    found.push(`cannot tell whether ${names} is open: ${open.problems.slice(0, 3).join('; ')}${open.problems.length > 3 ? ` and ${open.problems.length - 3} more` : ''}`);
  }
  return found;
}
