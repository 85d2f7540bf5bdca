// Boots a ppc64le guest under qemu-system-ppc64 (TCG) and captures its serial
// console. The guest's /init prints PVDP-KERNEL-* marker lines (see guest/init.sh).
import { spawn } from 'node:child_process';

export const MACHINES = {
  // A device on its own PHB gets its own IOMMU group (and its own DMA window).
  pseries: {
    deviceId: '1234:11e8', // QEMU edu
    nodefaults: true,
    args: ['-M', 'pseries,x-vof=on', '-cpu', 'power9', '-m', '2G'],
    // Device i (1-based) on its own PHB: BDF 000i:00:01.0.
    device: (i) => ['-device', `spapr-pci-host-bridge,index=${i},id=phb${i}`, '-device', `edu,bus=phb${i}.0,addr=0x1`],
    // One more PHB (one IOMMU group on pseries) holding a pci-testdev, which the guest binds to
    // vfio-pci, and a virtio-rng device, which the built-in virtio-pci driver takes: not viable.
    nonViable: (i) => [
      '-device', `spapr-pci-host-bridge,index=${i},id=phb${i}`,
      '-device', `pci-testdev,bus=phb${i}.0,addr=0x1`,
      '-device', `virtio-rng-pci,bus=phb${i}.0,addr=0x2`,
    ],
    nonViableDeviceId: '1b36:0005',
    append: 'console=hvc0',
  },
  // skiboot (OPAL) firmware from qemu-system-data; the kernel's console is OPAL's hvc0.
  powernv9: {
    deviceId: '8086:10d3', // e1000e
    // QEMU 7.2 creates the PHB root ports (and so bus pcie.0) only with defaults on: no -nodefaults here.
    args: ['-M', 'powernv9', '-m', '2G'],
    // Device i (1-based) behind PHB i-1's root port: BDF 000(i-1):01:00.0 (up to 6).
    device: (i) => ['-device', `e1000e,bus=pcie.${i - 1},addr=0x0,romfile=`],
    // The next root port holds a two-function adapter (one PE, one group): a pci-testdev that the
    // guest binds to vfio-pci, and a virtio-rng device that the built-in virtio-pci driver takes.
    nonViable: (i) => [
      '-device', `pci-testdev,bus=pcie.${i - 1},addr=0x0.0,multifunction=on`,
      '-device', `virtio-rng-pci,bus=pcie.${i - 1},addr=0x0.1`,
    ],
    nonViableDeviceId: '1b36:0005',
    nodefaults: false,
    append: 'console=hvc0',
  },
};

const MARK = {
  booted: /^PVDP-KERNEL-BOOTED (.*)$/m,
  info: /^PVDP-KERNEL-INFO (.*)$/m,
  exit: /^PVDP-KERNEL-EXIT rc=(\d+)\s*$/m,
  error: /^PVDP-KERNEL-ERROR (.*)$/m,
};

function kv(line) {
  const o = {};
  for (const m of line.matchAll(/(\w+)=(\S*)/g)) o[m[1]] = m[2];
  return o;
}

/**
 * Boot `machine` with `vmlinux` and `initrd`. Resolves with
 * { exitCode, output, payloadOutput, info, groupNumber, deviceAddress, platform, bootMs, totalMs, error }.
 * exitCode is the payload's exit code from the guest's marker line, or null when the guest
 * never printed it (error then says why: timeout, no-device, qemu exited, ...).
 */
export function boot({ machine, vmlinux, initrd, timeoutMs, guestTimeoutS, devices = 1, extraAppend = '', memory, nonViable = false, qemu = 'qemu-system-ppc64', onOutput }) {
  const m = MACHINES[machine];
  if (!m) throw new Error(`unknown machine ${machine} (use ${Object.keys(MACHINES).join(' or ')})`);
  const withNonViable = nonViable && Boolean(m.nonViable);
  const append = [m.append, 'quiet', 'panic=-1', `pvdp.dev=${m.deviceId}`, `pvdp.timeout=${guestTimeoutS}`, withNonViable ? `pvdp.nonviable=${m.nonViableDeviceId}` : '', extraAppend]
    .filter(Boolean)
    .join(' ');
  const console = m.nodefaults ? ['-nodefaults', '-nographic', '-serial', 'stdio'] : ['-display', 'none', '-monitor', 'none', '-serial', 'stdio', '-net', 'none'];
  const devArgs = [];
  for (let i = 1; i <= devices; i++) devArgs.push(...m.device(i));
  if (withNonViable) devArgs.push(...m.nonViable(devices + 1));
  // `memory` (e.g. '4G') replaces the machine's -m (the kernel preparation benchmark maps 1 GiB).
  const machineArgs = memory ? m.args.map((a, i) => (m.args[i - 1] === '-m' ? String(memory) : a)) : m.args;
  const args = [...machineArgs, ...devArgs, ...console, '-no-reboot', '-kernel', vmlinux, '-initrd', initrd, '-append', append];
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let raw = '';
    let stderr = '';
    let bootMs = null;
    let exitSeenAt = null;
    let timedOut = false;
    let killTimer = null;
    const onData = (chunk) => {
      const s = chunk.toString('utf8');
      raw += s;
      if (onOutput) onOutput(s);
      if (bootMs === null && MARK.booted.test(raw.replace(/\r/g, ''))) bootMs = Date.now() - t0;
      if (exitSeenAt === null && MARK.exit.test(raw.replace(/\r/g, ''))) {
        exitSeenAt = Date.now();
        // poweroff -f normally ends QEMU at once; don't wait long if it does not.
        killTimer = setTimeout(() => child.kill('SIGKILL'), 5000);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (c) => {
      stderr += c.toString('utf8');
    });
    const deadline = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const done = (code, signal, spawnError) => {
      clearTimeout(deadline);
      if (killTimer) clearTimeout(killTimer);
      const output = raw.replace(/\r\n?/g, '\n');
      const exit = MARK.exit.exec(output);
      const infoLine = MARK.info.exec(output);
      const info = infoLine ? kv(infoLine[1]) : {};
      const start = output.indexOf('PVDP-KERNEL-PAYLOAD-START\n');
      const end = output.indexOf('PVDP-KERNEL-PAYLOAD-END');
      const payloadOutput = start >= 0 ? output.slice(start + 'PVDP-KERNEL-PAYLOAD-START\n'.length, end >= 0 ? end : undefined) : '';
      let error = null;
      if (!exit) {
        const guestErr = MARK.error.exec(output);
        if (spawnError) error = `cannot start ${qemu}: ${spawnError.message}`;
        else if (timedOut) error = `timed out after ${timeoutMs} ms${bootMs === null ? ' (guest never reached /init)' : ''}`;
        else if (guestErr) error = `guest: ${guestErr[1]}`;
        else if (/Kernel panic - not syncing|Oops: |BUG: /.test(output)) {
          const line = /(Kernel panic - not syncing.*|Oops: .*|BUG: .*)/.exec(output)[1];
          error = `guest kernel crashed: ${line.trim()}`;
        }
        else error = `qemu exited (${signal ?? code}) before the guest's exit marker${stderr ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`;
      }
      resolve({
        machine,
        exitCode: exit ? Number(exit[1]) : null,
        output,
        payloadOutput,
        qemuStderr: stderr,
        info,
        groupNumber: info.group !== undefined ? Number(info.group) : null,
        groups: info.groups ? info.groups.split(',').map(Number) : [],
        deviceAddresses: info.bdfs ? info.bdfs.split(',') : [],
        deviceAddress: info.bdf ?? null,
        platform: info.platform ?? null,
        bootMs,
        totalMs: Date.now() - t0,
        error,
        command: [qemu, ...args],
      });
    };
    child.on('error', (e) => done(null, null, e));
    child.on('close', (code, signal) => done(code, signal));
  });
}
