// The configuration file's schema. Every field an operator can write is
// declared here once; validation errors carry the path of the bad field.
import { z } from 'zod';

/** Kubernetes extended resource names: `<domain>/<name>`, outside kubernetes.io. */
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const QUALIFIED_NAME = /^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

export function resourceNameProblem(name: string): string | null {
  const slash = name.indexOf('/');
  if (slash <= 0 || slash !== name.lastIndexOf('/')) {
    return 'must be fully qualified as <domain>/<name>, for example ibm.com/nvme';
  }
  const domain = name.slice(0, slash);
  const local = name.slice(slash + 1);
  if (!DNS_SUBDOMAIN.test(domain)) return `domain "${domain}" is not a valid DNS subdomain`;
  if (domain === 'kubernetes.io' || domain.endsWith('.kubernetes.io')) {
    return 'the kubernetes.io domain is reserved; the kubelet refuses extended resources in it';
  }
  if (domain === 'requests' || name.startsWith('requests.')) return 'the "requests." prefix is reserved';
  if (!QUALIFIED_NAME.test(local)) {
    return `name "${local}" must be 1-63 characters of letters, digits, "-", "_" or ".", starting and ending with a letter or digit`;
  }
  return null;
}

const hexId = (digits: number, what: string) =>
  z
    .string()
    .regex(new RegExp(`^(0x)?[0-9a-fA-F]{${digits}}$`), `must be a ${digits}-digit hex ${what}, for example ${'1014'.padEnd(digits, '0').slice(0, digits)}`)
    .transform((s) => s.replace(/^0x/, '').toLowerCase());

const classPrefix = z
  .string()
  .regex(/^(0x)?([0-9a-fA-F]{2}){1,3}$/, 'must be a PCI class prefix of 2, 4 or 6 hex digits, for example 0108 or 010802')
  .transform((s) => s.replace(/^0x/, '').toLowerCase());

// PCI address patterns: `dddd:bb:ss.f` where any part may use `*` or `?` globs.
const addressPattern = z
  .string()
  .regex(/^[0-9a-fA-F*?]{1,4}:[0-9a-fA-F*?]{1,2}:[0-9a-fA-F*?]{1,2}\.[0-7*?]$|^\*$/, 'must be a PCI address like 0030:01:00.0, with optional * or ? globs')
  .transform((s) => s.toLowerCase());

const domainId = z
  .union([z.string().regex(/^(0x)?[0-9a-fA-F]{1,8}$/, 'must be a PCI domain in hex as in PCI addresses, for example "0030"'), z.number().int().min(0)])
  .transform((v) => (typeof v === 'number' ? v : Number.parseInt(v.replace(/^0x/, ''), 16)));

const listOf = <T extends z.ZodType>(item: T) => z.array(item).min(1, 'must list at least one value when present');

export const selectorsSchema = z
  .object({
    vendors: listOf(hexId(4, 'vendor id')).optional(),
    devices: listOf(hexId(4, 'device id')).optional(),
    classes: listOf(classPrefix).optional(),
    drivers: listOf(z.string().min(1)).optional(),
    addresses: listOf(addressPattern).optional(),
    /** PHBs by PCI domain (hex, as in the address `0030:01:00.0`). */
    domains: listOf(domainId).optional(),
    numaNodes: listOf(z.number().int().min(-1)).optional(),
    /** `any` (default): a group matches when one of its endpoints matches; `all`: every endpoint must. */
    match: z.enum(['any', 'all']).default('any'),
  })
  .strict();

export const preparationSchema = z
  .object({
    /**
     * none: no PreStartContainer; verify: prove the sPAPR container works, then release;
     * handoff: prepare and hand the container to the pod.
     */
    mode: z.enum(['none', 'verify', 'handoff']).default('verify'),
  })
  .strict();

export const resourceSchema = z
  .object({
    name: z.string().superRefine((name, ctx) => {
      const problem = resourceNameProblem(name);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
    selectors: selectorsSchema,
    preparation: preparationSchema.default({ mode: 'verify' }),
  })
  .strict();

export const configSchema = z
  .object({
    resources: z.array(resourceSchema).min(1, 'must list at least one resource'),
    sysfsRoot: z.string().min(1).optional(),
    devRoot: z.string().min(1).optional(),
    devicePluginDir: z.string().min(1).optional(),
    podResourcesSocket: z.string().min(1).optional(),
    pollIntervalSeconds: z.number().positive().max(3600).optional(),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional(),
    /** Container Device Interface: write specs and name CDI devices in Allocate instead of device nodes. */
    cdi: z
      .object({
        enabled: z.boolean().default(false),
        specDir: z.string().min(1).default('/var/run/cdi'),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((config, ctx) => {
    const seen = new Map<string, number>();
    config.resources.forEach((resource, index) => {
      const first = seen.get(resource.name);
      if (first !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['resources', index, 'name'],
          message: `duplicates resources[${first}].name "${resource.name}"`,
        });
      } else {
        seen.set(resource.name, index);
      }
    });
  });

export type Selectors = z.output<typeof selectorsSchema>;
export type Preparation = z.output<typeof preparationSchema>;
export type ResourceConfig = z.output<typeof resourceSchema>;
export type FileConfig = z.output<typeof configSchema>;
export type PreparationMode = Preparation['mode'];
