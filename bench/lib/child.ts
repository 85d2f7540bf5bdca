// The benchmark side of lib/daemon-child.ts: spawn, request, stop.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ChildArgs, ChildReply, ChildSample } from './child-protocol.js';

export class DaemonChild {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: ChildReply) => void; reject: (e: Error) => void }>();
  private exited: Error | null = null;

  private constructor(readonly proc: ChildProcess) {
    proc.on('message', (msg: ChildReply) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      p.resolve(msg);
    });
    proc.on('exit', (code, signal) => {
      this.exited = new Error(`the daemon child exited (code ${code}, signal ${signal})`);
      for (const p of this.pending.values()) p.reject(this.exited);
      this.pending.clear();
    });
  }

  /** Forks the compiled child next to this file; resolves when it is listening. */
  static async spawn(args: ChildArgs): Promise<DaemonChild> {
    const script = fileURLToPath(new URL('./daemon-child.js', import.meta.url));
    const proc = fork(script, [JSON.stringify(args)], { execArgv: ['--expose-gc'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    const child = new DaemonChild(proc);
    await new Promise<void>((resolve, reject) => {
      child.pending.set(0, { resolve: () => resolve(), reject });
    });
    return child;
  }

  private async request(
    body: { cmd: 'start' } | { cmd: 'sample'; gc: boolean } | { cmd: 'stop' } | { cmd: 'uevent'; message: string },
  ): Promise<ChildReply> {
    if (this.exited) throw this.exited;
    const id = this.nextId++;
    const reply = await new Promise<ChildReply>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.proc.send({ id, ...body });
    });
    if (!reply.ok) throw new Error(`daemon child: ${reply.error}`);
    return reply;
  }

  /** Delivers a uevent to the daemon's watcher ("|" stands for the kernel's NUL separators). */
  async uevent(message: string): Promise<void> {
    await this.request({ cmd: 'uevent', message });
  }

  async start(): Promise<void> {
    await this.request({ cmd: 'start' });
  }

  async sample(gc: boolean): Promise<ChildSample> {
    const r = await this.request({ cmd: 'sample', gc });
    if (!r.ok || !r.sample) throw new Error('daemon child sent no sample');
    return r.sample;
  }

  /** Stops the daemon, then the process. */
  async stop(): Promise<void> {
    if (!this.exited) {
      await this.request({ cmd: 'stop' }).catch(() => undefined);
      const gone = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
      this.proc.disconnect();
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(timer);
    }
  }
}
