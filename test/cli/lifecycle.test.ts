// The lifecycle's promises, in process: a step abandoned by a signal is undone
// when it finishes late, cleanups run newest first, a signal that came while
// the program loaded still stops it, and a listen error becomes one line.
import { describe, it, expect } from 'vitest';
import { EventEmitter } from 'node:events';
import { Lifecycle, StopRequested, describeStartupFailure, probeListenProblem } from '../../src/cli/lifecycle.js';

function fakeProcess(): NodeJS.Process {
  return new EventEmitter() as unknown as NodeJS.Process;
}

describe('Lifecycle', () => {
  it('a signal abandons the step in flight, and what it made once it finishes is undone', async () => {
    const proc = fakeProcess();
    const life = new Lifecycle(proc);
    let finish!: (value: string) => void;
    const work = new Promise<string>((resolve) => (finish = resolve));
    const undone: string[] = [];
    const step = life.step(work, (made) => {
      undone.push(made);
    });
    proc.emit('SIGTERM');
    await expect(step).rejects.toBeInstanceOf(StopRequested);
    expect(life.stopSignal).toBe('SIGTERM');
    finish('temp dir');
    await work;
    // The undo runs in the step's continuation, queued behind the work's settling.
    await new Promise((r) => setImmediate(r));
    expect(undone).toEqual(['temp dir']);
    await expect(life.step(Promise.resolve(1))).rejects.toBeInstanceOf(StopRequested);
    life.dispose();
  });

  it('runs cleanups newest first, goes on past a failing one and reports it', async () => {
    const life = new Lifecycle(fakeProcess());
    const order: string[] = [];
    life.defer('first', () => {
      order.push('first');
    });
    life.defer('second', () => {
      throw new Error('busy');
    });
    life.defer('third', async () => {
      order.push('third');
    });
    expect(await life.cleanup()).toEqual(['second: busy']);
    expect(order).toEqual(['third', 'first']);
    expect(await life.cleanup()).toEqual([]);
    life.dispose();
  });

  it('a SIGTERM that came before it existed stops at once; a second signal changes nothing; SIGHUP reloads', async () => {
    const proc = fakeProcess();
    let handedOver = -1;
    const life = new Lifecycle(proc, () => {
      // Ours are in place before the earlier ones go.
      handedOver = proc.listenerCount('SIGTERM');
      return ['SIGHUP', 'SIGTERM'];
    });
    expect(handedOver).toBe(1);
    expect(life.signal.aborted).toBe(true);
    expect(await life.stopped()).toBe('SIGTERM');
    proc.emit('SIGINT');
    expect(life.stopSignal).toBe('SIGTERM');
    let reloads = 0;
    life.onReload(() => reloads++);
    proc.emit('SIGHUP');
    expect(reloads).toBe(1);
    life.dispose();
    expect(proc.listenerCount('SIGTERM') + proc.listenerCount('SIGHUP')).toBe(0);
  });
});

describe('start-up failure lines', () => {
  const labels = { port: '--metrics-port', bind: '--metrics-bind' };
  const errno = (code: string, extra: Partial<NodeJS.ErrnoException> = {}) => Object.assign(new Error(`${code} happened`), { code, ...extra });

  it('names the port, the flag and the remedy for each listen error', () => {
    expect(probeListenProblem(errno('EADDRINUSE'), '0.0.0.0', 9101, labels).message).toBe(
      'Cannot serve /metrics, /healthz and /readyz on 0.0.0.0:9101: the port is already in use: stop the other process or choose another port with --metrics-port ("off" turns the server off)',
    );
    expect(probeListenProblem(errno('EACCES'), '0.0.0.0', 80, labels).message).toBe(
      'Cannot serve /metrics, /healthz and /readyz on 0.0.0.0:80: the port needs privileges the plugin does not have: choose a port above 1023 with --metrics-port',
    );
    expect(probeListenProblem(errno('EADDRNOTAVAIL'), '10.9.9.9', 9101, { port: 'PVDP_METRICS_PORT', bind: 'PVDP_METRICS_BIND' }).message).toBe(
      "Cannot serve /metrics, /healthz and /readyz on 10.9.9.9:9101: the address is not an address of this machine: choose one of this machine's addresses with PVDP_METRICS_BIND, or 0.0.0.0",
    );
    expect(probeListenProblem(errno('EADDRINUSE'), '::1', 9101, labels).message).toMatch(/on \[::1\]:9101/);
  });

  it('names the setting behind a path that failed', () => {
    const paths = [
      { path: '/var/run/pvdp', label: 'PVDP_HANDOFF_DIR' },
      { path: '/var/run/cdi', label: '--cdi-spec-dir' },
    ];
    expect(describeStartupFailure(errno('EROFS', { syscall: 'mkdir', path: '/var/run/pvdp/x' }), paths)).toBe(
      'Start-up failed: cannot mkdir /var/run/pvdp/x (PVDP_HANDOFF_DIR) (EROFS): the file system is read-only: choose another with PVDP_HANDOFF_DIR',
    );
    expect(describeStartupFailure(errno('EACCES', { syscall: 'open', path: '/etc/other' }), paths)).toBe(
      'Start-up failed: cannot open /etc/other (EACCES): run the plugin as root, or check the path',
    );
    expect(describeStartupFailure(new Error('boom'), paths)).toBe('Start-up failed: boom');
  });
});
