import { describe, it, expect } from 'vitest';
import { HealthTracker } from '../../src/health/health-tracker.js';
import { groupHealth } from '../../src/health/group-health.js';
import { parseAerFatalTotal } from '../../src/topology/parse.js';
import { fn, group } from '../helpers/groups.js';

describe('group health', () => {
  it('is Healthy only when usable and the PE is not frozen, and says why not', () => {
    expect(groupHealth(group(1, [fn('0030:01:00.0')]))).toEqual({ healthy: true });
    const frozen = group(1, [fn('0030:01:00.0')], {
      eeh: { hardwareState: 0, softwareState: 1, configAddr: 1, mode: 1, frozen: true, source: '0030:01:00.0' },
    });
    expect(groupHealth(frozen)).toEqual({ healthy: false, reason: expect.stringMatching(/frozen by EEH/) });
    const unusable = group(1, [fn('0030:01:00.0', { driver: 'nvme' })], { usable: false, problems: ['bound to nvme'] });
    expect(groupHealth(unusable).reason).toBe('bound to nvme');
  });
});

describe('AER fatal errors', () => {
  it('parses TOTAL_ERR_FATAL and nothing else', () => {
    expect(parseAerFatalTotal('Undefined 0\nDLP 2\nTOTAL_ERR_FATAL 3\n')).toBe(3);
    expect(parseAerFatalTotal('garbage')).toBeNull();
    expect(parseAerFatalTotal('TOTAL_ERR_FATAL x\n')).toBeNull();
  });

  it('a rise turns the group Unhealthy until a quiet period passes; the first reading is only a baseline', () => {
    let now = 1_000;
    const tracker = new HealthTracker({ aerQuietMs: 60_000, now: () => now });
    const at = (count: number) => group(4, [fn('0030:02:00.0', { aerFatal: count }), fn('0030:02:00.1', { aerFatal: null })]);
    expect(tracker.evaluate(at(7))).toEqual({ healthy: true });
    expect(tracker.nextRecoveryInMs()).toBeNull();
    now += 1000;
    const sick = tracker.evaluate(at(8));
    expect(sick.healthy).toBe(false);
    expect(sick.reason).toMatch(/AER fatal errors on 0030:02:00\.0 rose from 7 to 8/);
    expect(tracker.nextRecoveryInMs()).toBe(60_000);
    now += 30_000;
    expect(tracker.evaluate(at(8)).healthy).toBe(false);
    now += 30_001;
    expect(tracker.evaluate(at(8))).toEqual({ healthy: true });
    expect(tracker.nextRecoveryInMs()).toBeNull();
  });

  it('forgets groups that went away', () => {
    let now = 0;
    const tracker = new HealthTracker({ aerQuietMs: 1000, now: () => now });
    tracker.evaluate(group(4, [fn('0030:02:00.0', { aerFatal: 1 })]));
    tracker.evaluate(group(4, [fn('0030:02:00.0', { aerFatal: 2 })]));
    tracker.retain([5]);
    expect(tracker.nextRecoveryInMs()).toBeNull();
    now += 1;
    // Re-plugged: a new baseline, not a rise.
    expect(tracker.evaluate(group(4, [fn('0030:02:00.0', { aerFatal: 9 })])).healthy).toBe(true);
  });
});
