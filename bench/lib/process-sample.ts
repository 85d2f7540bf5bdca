// One sample of a measured process's memory and CPU, taken inside it: what the
// daemon child and the command line's probe both send to the benchmark.

export interface ProcessSample {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  /** process.resourceUsage(), microseconds. */
  userCpuUs: number;
  systemCpuUs: number;
  maxRssKiB: number;
}

/** Both full collections V8 needs to settle; the process must run with --expose-gc. */
export function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run the child with --expose-gc');
  gc();
  gc();
}

export function processSample(): ProcessSample {
  const m = process.memoryUsage();
  const r = process.resourceUsage();
  return {
    rss: m.rss,
    heapUsed: m.heapUsed,
    heapTotal: m.heapTotal,
    external: m.external,
    arrayBuffers: m.arrayBuffers,
    userCpuUs: r.userCPUTime,
    systemCpuUs: r.systemCPUTime,
    maxRssKiB: r.maxRSS,
  };
}
