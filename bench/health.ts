// Health propagation: a fault written into sysfs to the ListAndWatch update
// the kubelet stand-in sees. Faults real sysfs does not announce (an EEH
// freeze, one function rebound to a host driver) wait for the safety poll; a
// group losing its last vfio-bound function also loses /dev/vfio/N, which the
// watcher hears through inotify.
import { bindDriver, setEehState } from '../src/simulate/sysfs-tree.js';
import type { Device__Output } from '../src/generated/v1beta1/Device.js';
import { EEH_HEALTHY } from '../test/helpers/fixtures.js';
import { largeNodeAddress, type Benchmark } from './lib/context.js';
import { allHealthy, nextDevices, startChildPlugin } from './lib/plugin.js';
import { sleep } from './lib/stats.js';

const FROZEN = '0x00000000 0x00000801';
const HOST_DRIVER = 'mlx5_core';

interface FaultKind {
  id: string;
  label: string;
  /** Applies the fault; returns the hrtime from which the latency counts. */
  fault(id: number): Promise<bigint>;
  restore(id: number): Promise<void>;
  viaPoll: boolean;
  /** The uevents the kernel sends with this fault, when the trial models them. */
  uevents?: (id: number) => string[];
}

let seqnum = 1000;
/** A kernel uevent datagram for a PCI function; "|" stands for the NUL separators. */
function pciUevent(action: string, address: string, extra: string[]): string {
  const devpath = `/devices/pci${address.slice(0, 7)}/${address}`;
  return [`${action}@${devpath}`, `ACTION=${action}`, `DEVPATH=${devpath}`, 'SUBSYSTEM=pci', ...extra, `PCI_SLOT_NAME=${address}`, `SEQNUM=${seqnum++}`].join('|');
}

export const health: Benchmark = {
  name: 'health',
  title: 'Health propagation: fault in sysfs to ListAndWatch',
  async run(ctx, rec) {
    const q = ctx.quick;
    const groups = q ? 64 : 1024;
    const pollMs = q ? 200 : 1000;
    const trials = q ? 2 : 10;
    const tree = await ctx.tree(groups);
    const { roots } = tree;
    const fns = tree.functionsPerGroup;
    const kinds: FaultKind[] = [
      {
        id: 'eeh-freeze-uevent',
        label: 'EEH freeze, announced by the recovery uevent',
        viaPoll: false,
        async fault(id) {
          await setEehState(roots, largeNodeAddress(id), FROZEN);
          return process.hrtime.bigint();
        },
        restore: (id) => setEehState(roots, largeNodeAddress(id), EEH_HEALTHY),
        uevents: (id) => [pciUevent('change', largeNodeAddress(id), ['DRIVER=vfio-pci', 'ERROR_EVENT=BEGIN_RECOVERY', 'DEVICE_ONLINE=0'])],
      },
      {
        id: 'host-driver-one-uevent',
        label: `one of ${fns} functions rebound to a host driver, announced by unbind/bind uevents`,
        viaPoll: false,
        async fault(id) {
          await bindDriver(roots, largeNodeAddress(id, 1), HOST_DRIVER);
          return process.hrtime.bigint();
        },
        restore: (id) => bindDriver(roots, largeNodeAddress(id, 1), 'vfio-pci'),
        uevents: (id) => [
          pciUevent('unbind', largeNodeAddress(id, 1), []),
          pciUevent('bind', largeNodeAddress(id, 1), [`DRIVER=${HOST_DRIVER}`]),
        ],
      },
      {
        id: 'eeh-freeze',
        label: 'EEH freeze (eeh_pe_state frozen)',
        viaPoll: true,
        async fault(id) {
          await setEehState(roots, largeNodeAddress(id), FROZEN);
          return process.hrtime.bigint();
        },
        restore: (id) => setEehState(roots, largeNodeAddress(id), EEH_HEALTHY),
      },
      {
        id: 'host-driver-one',
        label: `one of ${fns} functions bound to a host driver`,
        viaPoll: true,
        async fault(id) {
          await bindDriver(roots, largeNodeAddress(id, 1), HOST_DRIVER);
          return process.hrtime.bigint();
        },
        restore: (id) => bindDriver(roots, largeNodeAddress(id, 1), 'vfio-pci'),
      },
      {
        id: 'host-driver-all',
        label: `all ${fns} functions bound to a host driver (/dev/vfio/N goes)`,
        viaPoll: false,
        async fault(id) {
          // The group turns unusable at the first rebinding: count from there.
          const t = process.hrtime.bigint();
          for (let f = 0; f < fns; f++) await bindDriver(roots, largeNodeAddress(id, f), HOST_DRIVER);
          return t;
        },
        async restore(id) {
          for (let f = 0; f < fns; f++) await bindDriver(roots, largeNodeAddress(id, f), 'vfio-pci');
        },
      },
    ];

    // The poll rows measure the fallback: keep the safety poll at pollMs although uevents are on.
    const p = await startChildPlugin(roots, await ctx.subdir('h'), groups, pollMs, true, pollMs);
    const rows: (string | number)[][] = [];
    try {
      let seq = 0;
      for (const kind of kinds) {
        const lat: number[] = [];
        for (let i = 0; i < trials; i++) {
          const id = (seq++ * 7919 + 3) % groups;
          const key = String(id);
          // A random phase against the poll, so the trials sample it evenly.
          await sleep(Math.random() * pollMs);
          const seen = nextDevices(p.kubelet, (d: Device__Output[]) => !d.some((x) => x.ID === key && x.health === 'Healthy'), 60_000);
          const t0 = await kind.fault(id);
          for (const message of kind.uevents?.(id) ?? []) await p.child.uevent(message);
          const at = await seen;
          lat.push(Math.max(0, Number(at - t0) / 1e6));
          const back = nextDevices(p.kubelet, allHealthy(groups), 60_000);
          await kind.restore(id);
          await back;
        }
        const f = rec.samples(
          `fault-to-listandwatch-${kind.id}`,
          `${kind.label} to ListAndWatch (${kind.viaPoll ? `safety poll every ${pollMs} ms` : kind.uevents ? 'kernel uevent' : 'inotify on /dev/vfio'})`,
          'ms',
          lat,
          { text: 'fault to ListAndWatch under 100 ms (judged on the median)', stat: 'median', limit: 100 },
        );
        rows.push([
          kind.label,
          kind.viaPoll ? `poll (${pollMs} ms)` : kind.uevents ? 'uevent' : 'inotify + 50 ms debounce',
          f.summary!.median,
          f.summary!.max,
        ]);
      }
      rec.table('Side by side, same daemon and node', ['fault', 'detected by', 'median (ms)', 'worst (ms)'], rows);
      rec.note(
        `The daemon ran with --poll-interval ${pollMs / 1000} s on a node of ${groups} groups. Detection of faults that sysfs does not announce waits for the next safety poll, so their latency is spread evenly over one poll period plus the poll's own cost (the quiet-poll rows of the discovery benchmark). At the default --poll-interval of 10 s expect a median near 5 s and a worst case near 10 s for those faults; on a real node the kernel announces driver bind/unbind and EEH recovery with uevents, which the plugin hears through its netlink listener: the uevent rows measure that path, with the uevent delivered to the daemon (as the kernel would) right after the fault is written. A PE frozen with no recovery under way sends no uevent and still waits for the poll.`,
      );
      rec.note('Restoring a fault is not timed; each trial waits until every group is advertised healthy again before the next one.');
    } finally {
      await p.stop();
    }
  },
};
