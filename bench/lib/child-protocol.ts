// The messages between the benchmark process and the daemon in its own process
// (lib/child.ts on one side, lib/daemon-child.ts on the other).

import type { ProcessSample } from './process-sample.js';

export interface ChildArgs {
  sysfsRoot: string;
  devRoot: string;
  dir: string;
  pollIntervalMs: number;
  /** Feed the watcher uevents sent by the benchmark (as the kernel would send them), instead of netlink. */
  fakeUevents?: boolean;
  /** Safety poll period while uevents arrive (the health benchmark keeps it at pollIntervalMs). */
  ueventPollIntervalMs?: number;
}

export type ChildRequest =
  | { id: number; cmd: 'start' }
  | { id: number; cmd: 'sample'; gc: boolean }
  | { id: number; cmd: 'stop' }
  | { id: number; cmd: 'uevent'; message: string };

export interface ChildSample extends ProcessSample {
  registrations: number;
}

export type ChildReply = { id: number; ok: true; sample?: ChildSample } | { id: number; ok: false; error: string };
