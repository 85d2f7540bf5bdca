// The daemon's life from the first line of main to exit: signal handlers go
// in before anything is created, every start-up step is cancellable, and
// whatever a step created is undone in reverse order, whether start-up
// failed, a signal came in the middle of it, or the daemon ran and stopped.
import { PluginError } from '../errors.js';

/** A start-up step that failed for a reason outside the configuration (a port in use, a directory that is a file). */
export class StartupError extends PluginError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PVDP_ERR_STARTUP', message, options);
  }
}

type Cleanup = () => Promise<void> | void;

export class Lifecycle {
  readonly #controller = new AbortController();
  readonly #cleanups: { what: string; run: Cleanup }[] = [];
  readonly #handlers: { signal: NodeJS.Signals; handler: () => void }[] = [];
  #signal: NodeJS.Signals | null = null;
  /** Steps with an undo, settled or not: an abandoned one undoes itself when it finishes. */
  readonly #late: Promise<void>[] = [];
  #onReload: (() => void) | null = null;

  /** Installs the handlers at once: a signal from now on cancels start-up or stops the daemon. */
  constructor(
    private readonly proc: NodeJS.Process = process,
    /**
     * Hands over from earlier handlers (see early-signals.ts): called once ours
     * are installed, returns the signals seen so far. Ours must be in place
     * before theirs go: Node stops watching a signal when its last listener is
     * removed, and a signal caught but not yet dispatched would be lost.
     */
    takeEarlier: () => readonly NodeJS.Signals[] = () => [],
  ) {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) this.#listen(signal, () => this.#stop(signal));
    // SIGHUP's default action ends the process; before the daemon can rescan it is a no-op.
    this.#listen('SIGHUP', () => this.#onReload?.());
    const stop = takeEarlier().find((s) => s === 'SIGTERM' || s === 'SIGINT');
    if (stop) this.#stop(stop);
  }

  #listen(signal: NodeJS.Signals, handler: () => void): void {
    this.proc.on(signal, handler);
    this.#handlers.push({ signal, handler });
  }

  #stop(signal: NodeJS.Signals): void {
    // A second signal while stopping changes nothing: cleanup is already running.
    if (this.#signal !== null) return;
    this.#signal = signal;
    this.#controller.abort(new StopRequested(signal));
  }

  /** Aborted when SIGTERM or SIGINT arrives. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** The signal that asked us to stop, or null. */
  get stopSignal(): NodeJS.Signals | null {
    return this.#signal;
  }

  /** What SIGHUP does once the daemon runs. */
  onReload(handler: () => void): void {
    this.#onReload = handler;
  }

  /** Registers how to undo something just created; undone last-in, first-out. */
  defer(what: string, run: Cleanup): void {
    this.#cleanups.push({ what, run });
  }

  /**
   * Waits for a start-up step unless a signal comes first. A step that
   * finishes after the signal is still undone through `undo`.
   */
  async step<T>(work: Promise<T>, undo?: (value: T) => Promise<void> | void): Promise<T> {
    let abandoned = false;
    const late = work.then(
      async (value) => {
        if (abandoned && undo) await undo(value);
        return value;
      },
      (err: unknown) => {
        if (abandoned) return undefined as T;
        throw err;
      },
    );
    // cleanup() waits for these: an abandoned step's undo must not race the exit.
    if (undo) this.#late.push(late.then(() => undefined, () => undefined));
    // The work already started (it is an argument): a signal before this point still gets it undone.
    if (this.signal.aborted) {
      abandoned = true;
      throw this.signal.reason;
    }
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(this.signal.reason);
      this.signal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      return await Promise.race([late, aborted]);
    } catch (err) {
      if (this.signal.aborted) abandoned = true;
      throw err;
    } finally {
      if (onAbort) this.signal.removeEventListener('abort', onAbort);
    }
  }

  /** Resolves with the signal once one arrives. */
  stopped(): Promise<NodeJS.Signals> {
    if (this.#signal !== null) return Promise.resolve(this.#signal);
    return new Promise((resolve) => this.signal.addEventListener('abort', () => resolve(this.#signal!), { once: true }));
  }

  /** Undoes everything deferred, newest first; returns the failures, one line each. */
  async cleanup(): Promise<string[]> {
    await Promise.all(this.#late.splice(0));
    const failures: string[] = [];
    while (this.#cleanups.length > 0) {
      const { what, run } = this.#cleanups.pop()!;
      try {
        await run();
      } catch (err) {
        failures.push(`${what}: ${(err as Error).message}`);
      }
    }
    return failures;
  }

  /** Removes the handlers (tests that run several lifecycles in one process). */
  dispose(): void {
    for (const { signal, handler } of this.#handlers.splice(0)) this.proc.off(signal, handler);
  }
}

/** The reason of the lifecycle's abort signal. */
export class StopRequested extends Error {
  constructor(readonly stopSignal: NodeJS.Signals) {
    super(`Stopped by ${stopSignal}`);
    this.name = 'StopRequested';
  }
}

const ERRNO_WORDS: Record<string, string> = {
  EADDRINUSE: 'is already in use',
  EACCES: 'needs privileges the plugin does not have',
  EADDRNOTAVAIL: 'is not an address of this machine',
  ENOTFOUND: 'is not an address of this machine',
};

/** One line for a probe server that cannot listen: what, which flag, the remedy. */
export function probeListenProblem(err: unknown, host: string, port: number, labels: { port: string; bind: string }): StartupError {
  const code = (err as NodeJS.ErrnoException).code ?? '';
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const words = ERRNO_WORDS[code];
  let remedy: string;
  if (code === 'EADDRINUSE') remedy = `stop the other process or choose another port with ${labels.port} ("off" turns the server off)`;
  else if (code === 'EACCES') remedy = `choose a port above 1023 with ${labels.port}`;
  else if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') remedy = `choose one of this machine's addresses with ${labels.bind}, or 0.0.0.0`;
  else remedy = `check ${labels.port} and ${labels.bind}`;
  return new StartupError(
    `Cannot serve /metrics, /healthz and /readyz on ${where}: the ${code === 'EADDRINUSE' || code === 'EACCES' ? 'port' : 'address'} ${words ?? `cannot be used (${code || (err as Error).message})`}: ${remedy}`,
    { cause: err },
  );
}

/** A path the operator chose, and how they chose it (flag or variable). */
export interface NamedPath {
  path: string;
  label: string;
}

/**
 * One line for a start-up step that failed outside our own checks (a
 * directory that cannot be created, say): what, which setting, the remedy.
 */
export function describeStartupFailure(err: unknown, paths: readonly NamedPath[]): string {
  if (err instanceof PluginError) return err.message;
  const e = err as NodeJS.ErrnoException;
  const code = e.code ?? '';
  const path = e.path;
  if (!path) return `Start-up failed: ${e.message ?? String(err)}`;
  const named = paths.filter((p) => path === p.path || path.startsWith(`${p.path}/`)).sort((a, b) => b.path.length - a.path.length)[0];
  const setting = named ? ` (${named.label})` : '';
  const other = named ? `choose another with ${named.label}` : 'check the path';
  const remedy =
    code === 'EACCES' || code === 'EPERM'
      ? `run the plugin as root, or ${other}`
      : code === 'EROFS'
        ? `the file system is read-only: ${other}`
        : code === 'ENOSPC'
          ? `the file system is full: free space or ${other}`
          : code === 'ENOTDIR' || code === 'EEXIST'
            ? `a file stands where a directory must be: remove it or ${other}`
            : other;
  return `Start-up failed: cannot ${e.syscall ?? 'use'} ${path}${setting} (${code || e.message}): ${remedy}`;
}
