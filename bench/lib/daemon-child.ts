// A daemon in a process of its own, driven over the IPC channel by the
// benchmark process (which runs the kubelet stand-in), so that the daemon's
// memory and CPU are measured alone and the two ends do not share one event
// loop. Started by lib/child.ts; run with --expose-gc for GC'd samples.
//
//   argv[2]: JSON { sysfsRoot, devRoot, dir, pollIntervalMs }
import type { Daemon } from '../../src/daemon.js';
import { createDaemon, benchSettings } from './bench-daemon.js';
import type { ChildArgs, ChildReply, ChildRequest, ChildSample } from './child-protocol.js';
import { collectGarbage, processSample } from './process-sample.js';
import { FakeUeventSource } from '../../src/topology/uevents.js';
import { loadCHeapAddon } from '../../src/c-heap.js';

const args = JSON.parse(process.argv[2] ?? '{}') as ChildArgs;
let daemon: Daemon | null = null;
const uevents = args.fakeUevents ? new FakeUeventSource() : null;
const cHeap = loadCHeapAddon();

function sample(): ChildSample {
  return {
    ...processSample(),
    registrations: daemon?.manager?.registrations('ibm.com/cx5') ?? 0,
  };
}

async function handle(req: ChildRequest): Promise<ChildReply> {
  switch (req.cmd) {
    case 'start': {
      const settings = await benchSettings({ sysfsRoot: args.sysfsRoot, devRoot: args.devRoot }, args.dir, args.pollIntervalMs);
      daemon = await createDaemon(settings, uevents, args.ueventPollIntervalMs);
      await daemon.start();
      return { id: req.id, ok: true };
    }
    case 'sample':
      if (req.gc) {
        collectGarbage();
        // What glibc keeps of freed C memory is not held by anything: give it back too, so
        // that "after GC" compares what the daemon holds (the daemon itself trims after work).
        await cHeap?.trim();
      }
      return { id: req.id, ok: true, sample: sample() };
    case 'uevent':
      // "\0"-separated, as the kernel's datagram.
      if (!uevents?.emitRaw(Buffer.from(req.message.replaceAll('|', '\0')))) throw new Error('uevent not delivered');
      return { id: req.id, ok: true };
    case 'stop':
      await daemon?.stop();
      daemon = null;
      return { id: req.id, ok: true };
  }
}

process.on('message', (msg: ChildRequest) => {
  handle(msg).then(
    (reply) => process.send?.(reply),
    (err: unknown) => process.send?.({ id: msg.id, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
  );
});
// The parent going away ends us.
process.on('disconnect', () => process.exit(0));
process.send?.({ id: 0, ok: true });
