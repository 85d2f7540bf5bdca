// A claim's preparation options. The resource in the node's configuration
// file gives the base, the DeviceClass's opaque configuration overrides it,
// the claim's overrides both, request by request. Each opaque entry is checked
// with the same field rules as the configuration file, and a bad one is named
// by its path in the claim so its author can find it.
import { z } from 'zod';
import { handoffOptionFields, preparationSchema, PREPARATION_MODES, type Preparation } from '../config/schema.js';
import { describeIssues } from '../config/load.js';
import { CLAIM_CONFIG_API_VERSION, CLAIM_CONFIG_KIND } from './constants.js';

/** One `status.allocation.devices.config[]` entry whose opaque driver is ours. */
export interface OpaqueConfigEntry {
  /** Its index in `status.allocation.devices.config`, for error messages. */
  index: number;
  source: 'FromClass' | 'FromClaim';
  /** Requests it applies to; empty: every request of the claim. */
  requests: readonly string[];
  parameters: unknown;
}

/** Our opaque parameters: the `preparation:` block of a resource, every field optional, plus apiVersion and kind. */
const parametersSchema = z
  .object({
    apiVersion: z.literal(CLAIM_CONFIG_API_VERSION, { error: `must be ${CLAIM_CONFIG_API_VERSION}` }),
    kind: z.literal(CLAIM_CONFIG_KIND, { error: `must be ${CLAIM_CONFIG_KIND}` }),
    mode: z.enum(PREPARATION_MODES).optional(),
    handoff: z
      .object({
        memorySize: handoffOptionFields.memorySize.optional(),
        hugePageShift: handoffOptionFields.hugePageShift.optional(),
        claimTimeoutSeconds: handoffOptionFields.claimTimeoutSeconds.optional(),
        iommu: handoffOptionFields.iommu.optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

type Parameters = z.output<typeof parametersSchema>;

/** A claim whose configuration cannot be used; one line per bad field, each with its path in the claim. */
export class ClaimConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid opaque configuration: ${problems.join('; ')}`);
    this.name = 'ClaimConfigError';
  }
}

function entryPath(entry: OpaqueConfigEntry): string {
  return `status.allocation.devices.config[${entry.index}].opaque.parameters`;
}

/** Validates one entry's parameters. */
export function parseOpaqueParameters(entry: OpaqueConfigEntry): Parameters {
  const result = parametersSchema.safeParse(entry.parameters ?? undefined);
  if (!result.success) {
    const base = entryPath(entry);
    throw new ClaimConfigError(
      describeIssues(result.error.issues)
        .flatMap((line) => line.split('\n'))
        .map((line) => (line.startsWith('(top level)') ? `${base}${line.slice('(top level)'.length)}` : `${base}.${line}`)),
    );
  }
  return result.data;
}

/**
 * The preparation of one request: the resource's, then every class entry,
 * then every claim entry that applies to the request, later ones winning
 * field by field. Handoff options given while the resulting mode is not
 * handoff are an error (they would be silently ignored otherwise).
 */
export function effectivePreparation(base: Preparation, entries: readonly OpaqueConfigEntry[], request: string): Preparation {
  // A subrequest of a prioritized list (`gpu/fast`) takes the configuration of its request (`gpu`) too.
  const parent = request.split('/')[0]!;
  const applicable = entries
    .filter((e) => e.requests.length === 0 || e.requests.includes(request) || e.requests.includes(parent))
    // The class gives defaults, the claim wins: classes first, order kept within each source.
    .sort((a, b) => (a.source === b.source ? a.index - b.index : a.source === 'FromClass' ? -1 : 1));
  let mode = base.mode;
  let handoff: Record<string, unknown> = base.mode === 'handoff' && base.handoff ? { ...base.handoff } : {};
  let handoffFrom: OpaqueConfigEntry | null = null;
  const problems: string[] = [];
  for (const entry of applicable) {
    let parameters: Parameters;
    try {
      parameters = parseOpaqueParameters(entry);
    } catch (err) {
      if (err instanceof ClaimConfigError) {
        problems.push(...err.problems);
        continue;
      }
      throw err;
    }
    if (parameters.mode !== undefined && parameters.mode !== mode) {
      mode = parameters.mode;
      // Options of another mode do not carry over into this one.
      if (mode !== 'handoff') handoff = {};
    }
    if (parameters.handoff !== undefined) {
      handoff = { ...handoff, ...Object.fromEntries(Object.entries(parameters.handoff).filter(([, v]) => v !== undefined)) };
      handoffFrom = entry;
    }
  }
  if (problems.length > 0) throw new ClaimConfigError(problems);
  if (mode !== 'handoff' && handoffFrom) {
    throw new ClaimConfigError([`${entryPath(handoffFrom)}.handoff: is only used with mode: handoff (the request "${request}" ends up in mode ${mode})`]);
  }
  const result = preparationSchema.safeParse(mode === 'handoff' ? { mode, handoff } : { mode });
  if (!result.success) {
    throw new ClaimConfigError(describeIssues(result.error.issues).map((line) => `request "${request}": ${line}`));
  }
  return result.data;
}
