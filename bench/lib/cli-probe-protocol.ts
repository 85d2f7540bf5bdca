// The messages between the benchmark and lib/cli-probe.ts inside the command line's process.

export type CliProbeRequest = { id: number; cmd: 'sample'; gc: boolean } | { id: number; cmd: 'heap'; path: string };

export interface CliSample {
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

export type CliProbeReply = { id: number; ok: true; sample?: CliSample; path?: string } | { id: number; ok: false; error: string };
