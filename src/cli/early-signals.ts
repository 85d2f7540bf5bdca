// Imported first by the command-line entry point, so a SIGTERM that arrives
// while the rest of the program is still loading is remembered instead of
// killing the process (exit 143). The Lifecycle takes over from here.
const received: NodeJS.Signals[] = [];
const handlers = new Map<NodeJS.Signals, () => void>();
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
  const handler = () => received.push(signal);
  handlers.set(signal, handler);
  process.on(signal, handler);
}

/** Signals seen so far; removes the early handlers (call after installing the real ones, never before). */
export function takeEarlySignals(): NodeJS.Signals[] {
  for (const [signal, handler] of handlers) process.off(signal, handler);
  handlers.clear();
  return received.splice(0);
}
