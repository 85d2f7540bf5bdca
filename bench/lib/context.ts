// What every benchmark gets: the run's options, a log line printer, a private
// temp directory (short, for unix socket paths) and sysfs trees built once.
import { access, constants, mkdtemp, rm, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSysfsTree } from '../../src/simulate/sysfs-tree.js';
import type { DiscoveryRoots } from '../../src/topology/types.js';
import { largeNode } from '../../test/helpers/fixtures.js';
import { Recorder } from './report.js';
import { msSince } from './stats.js';

async function isWritableDir(dir: string): Promise<boolean> {
  try {
    await access(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface BenchOptions {
  /** Tiny sizes and few repetitions: checks that the harness runs, not how fast things are. */
  quick: boolean;
  log: (line: string) => void;
}

export interface BuiltTree {
  groups: number;
  functionsPerGroup: number;
  roots: DiscoveryRoots;
  /** How long writing it took, ms. */
  buildMs: number;
}

export class BenchContext {
  readonly quick: boolean;
  readonly log: (line: string) => void;
  /** The run's temp directory (on tmpfs when the machine has /dev/shm). */
  readonly dir: string;
  private readonly trees = new Map<string, Promise<BuiltTree>>();
  private nextDir = 0;

  private constructor(dir: string, options: BenchOptions) {
    this.dir = dir;
    this.quick = options.quick;
    this.log = options.log;
  }

  static async create(options: BenchOptions): Promise<BenchContext> {
    // Short: plugin sockets live under it and unix socket paths stop at 108 bytes.
    // tmpfs when there is one: sysfs is in memory too, and a disk file system
    // makes writing a 4096-group tree take minutes.
    const base = (await isWritableDir('/dev/shm')) ? '/dev/shm' : '/tmp';
    return new BenchContext(await mkdtemp(`${base}/pvdp-b-`), options);
  }

  /** A fresh short directory inside the run's temp dir. */
  async subdir(prefix: string): Promise<string> {
    const dir = join(this.dir, `${prefix}${this.nextDir++}`);
    await mkdir(dir, { recursive: true });
    return dir;
  }

  /**
   * A `largeNode(groups, functionsPerGroup)` tree, written once per run and
   * shared by the benchmarks. Benchmarks that change it put it back as it was.
   */
  tree(groups: number, functionsPerGroup = 4): Promise<BuiltTree> {
    const key = `${groups}x${functionsPerGroup}`;
    let p = this.trees.get(key);
    if (p === undefined) {
      p = (async () => {
        const started = process.hrtime.bigint();
        this.log(`  writing a sysfs tree of ${groups} groups x ${functionsPerGroup} functions`);
        const roots = await writeSysfsTree(join(this.dir, `t${key}`), largeNode(groups, functionsPerGroup));
        const buildMs = msSince(started);
        this.log(`  ... written in ${(buildMs / 1000).toFixed(1)} s`);
        return { groups, functionsPerGroup, roots, buildMs };
      })();
      this.trees.set(key, p);
    }
    return p;
  }

  async cleanup(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

export interface Benchmark {
  name: string;
  title: string;
  run(ctx: BenchContext, rec: Recorder): Promise<void>;
}

/** Address of function `fn` of group `id` in a `largeNode` tree. */
export function largeNodeAddress(id: number, fn = 0): string {
  const domain = (0x30 + (id >> 8)).toString(16).padStart(4, '0');
  const bus = (id & 0xff).toString(16).padStart(2, '0');
  const devNo = Math.floor(fn / 8).toString(16).padStart(2, '0');
  return `${domain}:${bus}:${devNo}.${fn % 8}`;
}
