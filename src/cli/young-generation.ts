// V8's young generation, capped at its starting size before the daemon loads.
//
// V8 doubles the new space (up to 16 MiB per semi-space, 32 MiB committed on
// 64-bit) whenever a scavenge finds many survivors, and shrinks it only when
// the allocation rate falls to almost nothing. The daemon's start-up (module
// loading, the first scan) grows it, and the safety poll every 10 s keeps the
// rate just high enough that it never shrinks: an idle daemon held ~31 MiB
// committed for 0-11 MiB of young objects. A growth factor of 1 keeps the new
// space at its initial 1 MiB semi-spaces for the life of the process.
//
// Capped, the idle command line's new space stays at 2 MiB instead of 32, and
// with the C heap trimmed (src/c-heap.ts) idle RSS at 1024 groups fell from
// ~116 to ~85 MiB on average; capped alone it did not fall (more survivors
// are promoted, and glibc keeps what their ArrayBuffers held). The price is
// more scavenges while a scan allocates, measured on the command line (x86,
// 2 cores): a full scan of 1024 groups +18% wall and CPU (1.68 -> 1.99 s),
// of 4096 groups +22% (7.1 -> 8.6 s), and idle CPU with the 10 s safety poll
// 4.4 -> 5.4-6.0% of a core at 1024 groups, 12.2 -> 17.4% at 4096. Taken for
// the memory: the poll runs every 60 s while kernel uevents arrive, and
// PVDP_V8_YOUNG_GENERATION_CAP=off gives the speed back where memory is plenty.
// The flag must be set before the heavy modules load, and only this flag works at run time:
// --max-semi-space-size is read when the heap is set up, so it would need to
// be on node's own command line (NODE_OPTIONS), which an operator may still use.
import { setFlagsFromString } from 'node:v8';

/** Set to `off` to leave V8's young generation to grow as V8 decides. */
export const YOUNG_GENERATION_ENV = 'PVDP_V8_YOUNG_GENERATION_CAP';

let capped = false;

/** Caps the young generation unless `env` turns it off; returns whether it did. */
export function capYoungGeneration(env: NodeJS.ProcessEnv = process.env, setFlags: (flags: string) => void = setFlagsFromString): boolean {
  if ((env[YOUNG_GENERATION_ENV] ?? '').trim().toLowerCase() === 'off') return false;
  setFlags('--semi-space-growth-factor=1');
  capped = true;
  return true;
}

/** Whether capYoungGeneration() capped it in this process (for the debug log). */
export function youngGenerationCapped(): boolean {
  return capped;
}
