// The messages between the benchmark and lib/cli-probe.ts inside the command line's process.
import type { ProcessSample } from './process-sample.js';

export type CliProbeRequest = { id: number; cmd: 'sample'; gc: boolean } | { id: number; cmd: 'heap'; path: string };

export type CliSample = ProcessSample;

export type CliProbeReply = { id: number; ok: true; sample?: CliSample; path?: string } | { id: number; ok: false; error: string };
