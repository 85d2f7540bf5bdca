// The C heap trimmer: when it trims (after discovery, then at most once per
// interval and only after work), that it never keeps the process alive, and
// that a missing addon turns it off quietly. The real addon runs malloc_trim.
import { describe, it, expect, afterEach, vi } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger } from '../src/log.js';
import { CHeapTrimmer, loadCHeapAddon, type CHeapAddon } from '../src/c-heap.js';

function capture(): { logger: ReturnType<typeof createLogger>; lines: { msg: string; [k: string]: unknown }[] } {
  const lines: { msg: string; [k: string]: unknown }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { logger: createLogger({ level: 'debug', destination: sink }), lines };
}

function fakeAddon(supported = true): CHeapAddon & { calls: number } {
  const addon = {
    calls: 0,
    supported,
    trim() {
      addon.calls++;
      return Promise.resolve(true);
    },
  };
  return addon;
}

afterEach(() => {
  vi.useRealTimers();
});

describe('CHeapTrimmer', () => {
  it('trims at start and once start-up has settled, then once per interval only when work was done since the last trim', async () => {
    vi.useFakeTimers();
    const addon = fakeAddon();
    let work = 0;
    const { logger, lines } = capture();
    const trimmer = new CHeapTrimmer({ logger, addon, intervalMs: 30_000, settleMs: 15_000, workSince: () => work });
    trimmer.start();
    expect(addon.calls).toBe(1);
    await vi.advanceTimersByTimeAsync(0);
    await vi.advanceTimersByTimeAsync(15_000);
    expect(addon.calls).toBe(2);
    await vi.advanceTimersByTimeAsync(15_000);
    expect(addon.calls).toBe(2);
    work += 3;
    await vi.advanceTimersByTimeAsync(29_999);
    expect(addon.calls).toBe(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(addon.calls).toBe(3);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(addon.calls).toBe(3);
    trimmer.stop();
    work++;
    await vi.advanceTimersByTimeAsync(120_000);
    expect(addon.calls).toBe(3);
    const trims = lines.filter((l) => l.msg === 'Trimmed the C heap');
    expect(trims).toHaveLength(3);
    expect(trims[0]).toMatchObject({ level: 'debug', released: true });
    expect(typeof trims[0]?.['durationMs']).toBe('number');
  });

  it('does nothing without the addon or without glibc', async () => {
    vi.useFakeTimers();
    const { logger } = capture();
    const off = new CHeapTrimmer({ logger, addon: null });
    off.start();
    expect(off.active).toBe(false);
    expect(await off.trimNow()).toBeNull();
    const musl = fakeAddon(false);
    const elsewhere = new CHeapTrimmer({ logger, addon: musl });
    elsewhere.start();
    vi.advanceTimersByTime(120_000);
    expect(musl.calls).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('keeps no process alive: its timers are unref\'d', () => {
    const { logger } = capture();
    const trimmer = new CHeapTrimmer({ logger, addon: fakeAddon(), intervalMs: 1000 });
    const interval = vi.spyOn(globalThis, 'setInterval');
    const timeout = vi.spyOn(globalThis, 'setTimeout');
    trimmer.start();
    for (const spy of [interval, timeout]) expect((spy.mock.results[0]?.value as NodeJS.Timeout).hasRef()).toBe(false);
    trimmer.stop();
    interval.mockRestore();
    timeout.mockRestore();
  });

  it('a failing trim is logged at debug level and not thrown; one trim at a time', async () => {
    const { logger, lines } = capture();
    const trimmer = new CHeapTrimmer({
      logger,
      addon: {
        supported: true,
        trim: () => Promise.reject(new Error('boom')),
      },
    });
    expect(await trimmer.trimNow()).toBeNull();
    expect(lines.find((l) => l.msg === 'Trimming the C heap failed')).toMatchObject({ level: 'debug' });
    let finish: (released: boolean) => void = () => undefined;
    const slow = { calls: 0, supported: true, trim: () => (slow.calls++, new Promise<boolean>((r) => (finish = r))) };
    const one = new CHeapTrimmer({ logger, addon: slow });
    const first = one.trimNow();
    expect(await one.trimNow()).toBeNull();
    finish(true);
    expect(await first).toMatchObject({ released: true });
    expect(slow.calls).toBe(1);
  });
});

const built = (() => {
  try {
    return loadCHeapAddon();
  } catch {
    return null;
  }
})();
if (!built) console.warn('SKIP the real C heap addon: it is not built (run `npm ci` or `npm run build:native`)');

describe.skipIf(!built)('the c_heap addon', () => {
  it('runs malloc_trim(0) on glibc off the event loop and says whether memory went back', async () => {
    const addon = built!;
    expect(typeof addon.supported).toBe('boolean');
    const pending = addon.trim();
    expect(pending).toBeInstanceOf(Promise);
    expect(typeof (await pending)).toBe('boolean');
    const { logger, lines } = capture();
    const result = await new CHeapTrimmer({ logger, addon }).trimNow();
    if (addon.supported) {
      expect(result?.durationMs).toBeGreaterThanOrEqual(0);
      expect(lines.some((l) => l.msg === 'Trimmed the C heap')).toBe(true);
    } else {
      expect(result).toBeNull();
    }
  });
});
