// Undo steps of a preparation, run newest first, so success and every failure release in order.
import type { Logger } from '../log.js';

/** A LIFO of undo steps. */
export class Teardown {
  private steps: Array<{ name: string; run: () => Promise<void> }> = [];
  private done = false;
  unmapFailed = false;

  push(name: string, run: () => Promise<void>): void {
    this.steps.push({ name, run });
  }

  /** Runs every step, newest first, even when some fail; returns the failures. */
  async run(logger?: Logger): Promise<Array<{ step: string; error: unknown }>> {
    if (this.done) return [];
    this.done = true;
    const failures: Array<{ step: string; error: unknown }> = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.run();
      } catch (error) {
        failures.push({ step: step.name, error });
        logger?.warn({ step: step.name, err: error }, 'VFIO teardown step failed');
      }
    }
    return failures;
  }
}
