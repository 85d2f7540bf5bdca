// The contract suite on the simulated kernel, once per platform profile. The
// same cases run on real ppc64le kernels through contract/guest-runner.mjs.
import { describe, expect, it } from 'vitest';
import { contractCases, skipReason } from '../../src/vfio/contract-cases.js';
import type { Platform } from '../../src/vfio/binding.js';
import { simulatedContext } from './contract-context.js';

const platforms: Platform[] = ['pseries', 'powernv9', 'powernv10'];

for (const platform of platforms) {
  describe(`VFIO contract on the simulated ${platform} kernel`, () => {
    for (const c of contractCases) {
      it(c.name, async () => {
        const ctx = simulatedContext(platform);
        const reason = skipReason(c, ctx);
        // Every case must be runnable on the simulator: a skip here would hide a case from CI.
        expect(reason).toBeNull();
        await c.run(ctx);
        if (!c.requires?.simulated) {
          // What the guest runner checks after each case: nothing left open, charged or dead.
          expect(ctx.sim!.dead).toBe(false);
          expect(await ctx.binding.lockedMemoryBytes()).toBe(0n);
          expect((ctx.binding as import('../../src/vfio/simulated-kernel.js').SimulatedProcess).openFds()).toEqual([]);
        }
      });
    }
  });
}
