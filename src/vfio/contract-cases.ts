// The contract between the plugin and the kernel: one list of cases that runs
// against the simulated kernel (vitest, test/vfio/contract.sim.test.ts) and
// against a real ppc64le kernel in a QEMU guest (plain Node,
// test/vfio/contract/guest-runner.mjs). It lives in src/ so the guest can load
// it from dist/. Each case cleans up after itself: the real kernel is shared by
// all cases of a run, and the runner checks that locked memory returns to its
// baseline after every case.
//
// The cases live in contract/, one file per topic; this index keeps their order.
import { containerAndGroupsCases } from './contract/container-and-groups.js';
import { infoAndV1Cases } from './contract/info-and-v1.js';
import { v2Cases } from './contract/v2.js';
import { processAndInputCases } from './contract/process-and-input.js';
import { differentialCases } from './contract/differential.js';
import { sequenceCases } from './contract/sequence.js';
import type { ContractCase } from './contract/context.js';

export { ContractAssertionError, ContractSkip } from './contract-assert.js';
export {
  skipReason,
  type ContractCase,
  type ContractContext,
  type ContractGroup,
  type ContractRequires,
  type OtherProcessOp,
  type OtherProcessResult,
} from './contract/context.js';

export const contractCases: ContractCase[] = [
  ...containerAndGroupsCases,
  ...infoAndV1Cases,
  ...v2Cases,
  ...processAndInputCases,
  ...differentialCases,
  ...sequenceCases,
];
