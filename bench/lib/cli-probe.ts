// Loaded into the real command line's process with --import by lib/cli-child.ts:
// answers the benchmark's requests for memory samples and heap snapshots over
// the IPC channel, and stops the daemon (SIGTERM) when the benchmark goes away.
// Small on purpose: what it loads is counted in the figures it sends.
import { writeHeapSnapshot } from 'node:v8';
import type { CliProbeReply, CliProbeRequest } from './cli-probe-protocol.js';
import { collectGarbage, processSample } from './process-sample.js';

function answer(req: CliProbeRequest): CliProbeReply {
  if (req.cmd === 'heap') return { id: req.id, ok: true, path: writeHeapSnapshot(req.path) };
  if (req.gc) collectGarbage();
  return { id: req.id, ok: true, sample: processSample() };
}

if (process.send) {
  process.on('message', (req: CliProbeRequest) => {
    let reply: CliProbeReply;
    try {
      reply = answer(req);
    } catch (err) {
      reply = { id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) };
    }
    process.send?.(reply);
  });
  // The IPC channel must not keep a stopped daemon alive, nor outlive the benchmark.
  process.channel?.unref();
  process.on('disconnect', () => process.kill(process.pid, 'SIGTERM'));
}
