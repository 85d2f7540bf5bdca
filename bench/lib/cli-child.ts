// The real command line (src/cli/entry.ts, `run`) in a child process, as an
// operator starts it on a node, with lib/cli-probe.ts loaded beside it to
// answer memory samples and heap snapshots. What the CLI loads lazily (the
// Kubernetes client, the DRA front end, the simulated node) is counted only in
// the runs that load it, which an in-process daemon would not show.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { CliProbeReply, CliProbeRequest, CliSample } from './cli-probe-protocol.js';

/** No cluster around: node reporting and DRA use the kubeconfig and node name the benchmark passes. */
function withoutCluster(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const copy = { ...env };
  for (const name of Object.keys(copy)) if (name.startsWith('KUBERNETES_') || name === 'NODE_NAME' || name.startsWith('PVDP_')) delete copy[name];
  return copy;
}

type Body = { cmd: 'sample'; gc: boolean } | { cmd: 'heap'; path: string };

export class CliChild {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: CliProbeReply) => void; reject: (e: Error) => void }>();
  private exited: Error | null = null;
  private readonly gone: Promise<void>;
  private stderr = '';

  private constructor(readonly proc: ChildProcess) {
    proc.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    proc.on('message', (msg: CliProbeReply) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      p.resolve(msg);
    });
    this.gone = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        this.exited = new Error(`the command line exited (code ${code}, signal ${signal}): ${this.stderrTail}`);
        for (const p of this.pending.values()) p.reject(this.exited);
        this.pending.clear();
        resolve();
      });
    });
  }

  /** `node --expose-gc --import cli-probe.js <src/cli/entry.js> run ...args`. */
  static spawn(args: readonly string[], env: NodeJS.ProcessEnv = {}): CliChild {
    const entry = fileURLToPath(new URL('../../src/cli/entry.js', import.meta.url));
    const probe = new URL('./cli-probe.js', import.meta.url).href;
    const proc = fork(entry, ['run', ...args], {
      execArgv: ['--expose-gc', '--import', probe],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      env: { ...withoutCluster(process.env), ...env },
    });
    return new CliChild(proc);
  }

  /** The end of what the command line wrote to stderr. */
  get stderrTail(): string {
    return this.stderr.trim().split('\n').slice(-3).join(' | ');
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  private async request(body: Body): Promise<CliProbeReply> {
    if (this.exited) throw this.exited;
    const id = this.nextId++;
    const reply = await new Promise<CliProbeReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.proc.send({ id, ...body } as CliProbeRequest);
    });
    if (!reply.ok) throw new Error(`command line probe: ${reply.error}`);
    return reply;
  }

  async sample(gc: boolean): Promise<CliSample> {
    const r = await this.request({ cmd: 'sample', gc });
    if (!r.ok || !r.sample) throw new Error('the probe sent no sample');
    return r.sample;
  }

  /** Writes a heap snapshot of the daemon to `path`. */
  async heapSnapshot(path: string): Promise<string> {
    const r = await this.request({ cmd: 'heap', path });
    if (!r.ok || !r.path) throw new Error('the probe wrote no snapshot');
    return r.path;
  }

  /** SIGTERM, as the kubelet's pod deletion; SIGKILL after 10 s. */
  async stop(): Promise<void> {
    if (this.exited) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
    await this.gone;
    clearTimeout(timer);
  }
}
