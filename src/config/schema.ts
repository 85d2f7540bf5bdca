// The configuration file's schema. Every field an operator can write is
// declared here once; validation errors carry the path of the bad field.
import { z } from 'zod';
import { cdiKindProblem } from '../cdi/names.js';
import { driverNameProblem } from '../dra/constants.js';

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

// Quoted hex only: YAML reads a bare 0030 as the number 30, which is not PHB 0x30.
const domainId = z
  .string({ error: 'must be a quoted hex PCI domain as in PCI addresses, for example "0030" (a bare 0030 reads as the number 30)' })
  .regex(/^(0x)?[0-9a-fA-F]{1,8}$/, 'must be a PCI domain in hex as in PCI addresses, for example "0030"')
  .transform((v) => Number.parseInt(v.replace(/^0x/, ''), 16));

const listOf = <T extends z.ZodType>(item: T) => z.array(item).min(1, 'must list at least one value when present');

/** The fields that narrow a selection (`match` only says how they combine). */
const SELECTOR_FIELDS = ['vendors', 'devices', 'classes', 'drivers', 'addresses', 'domains', 'numaNodes'] as const;

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
    /** Every group offered for passthrough: the one way to select everything, so `{}` is never a silent catch-all. */
    all: z.literal(true, { error: 'must be true when present (all: true selects every VFIO group)' }).optional(),
  })
  .strict()
  .superRefine((selectors, ctx) => {
    const named = SELECTOR_FIELDS.filter((field) => selectors[field] !== undefined);
    if (selectors.all === true && named.length > 0) {
      ctx.addIssue({ code: 'custom', path: ['all'], message: `all: true selects every VFIO group; remove it or ${named.join(', ')}` });
    } else if (selectors.all !== true && named.length === 0) {
      ctx.addIssue({
        code: 'custom',
        message: `must name at least one of ${SELECTOR_FIELDS.join(', ')}; to advertise every VFIO group as this resource write "selectors: { all: true }"`,
      });
    }
  });

const BINARY_UNITS: Record<string, number> = { '': 1, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };

/** `"256Mi"`, `"1Gi"`, `"4096"`, `4096` -> bytes; null when not a size. Kubernetes quantity suffixes. */
export function parseByteSize(value: string | number): number | null {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : null;
  const m = /^\s*([0-9]+)\s*(Ki|Mi|Gi|Ti|k|K|M|G|T)?\s*$/.exec(value);
  if (!m) return null;
  const bytes = Number(m[1]) * BINARY_UNITS[m[2] ?? '']!;
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : null;
}

/** Bytes for people: `0 bytes`, `512 bytes`, `257 MiB`, `1.5 GiB` (binary units, one decimal when not whole). */
export function formatByteSize(value: number | bigint): string {
  const bytes = Number(value);
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  if (Math.abs(bytes) < 1024) return `${bytes} bytes`;
  let n = bytes / 1024;
  let unit = 0;
  while (Math.abs(n) >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[unit]}`;
}

const byteSize = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const bytes = parseByteSize(v);
  if (bytes === null) {
    ctx.addIssue({ code: 'custom', message: 'must be a positive size in bytes or with a suffix, for example 268435456, "256Mi" or "1Gi"' });
    return z.NEVER;
  }
  return bytes;
});

/** Huge page size as a size (`"2Mi"`, `"16Mi"`, `"1Gi"`) or a page shift (21, 24, 30) -> shift. */
const hugePages = z.union([z.string(), z.number()]).transform((v, ctx) => {
  let shift: number | null = null;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 16 && v <= 40) shift = v;
  else {
    const bytes = parseByteSize(v);
    if (bytes !== null && (bytes & (bytes - 1)) === 0 && bytes >= 2 ** 16) shift = Math.log2(bytes);
  }
  if (shift === null) {
    ctx.addIssue({ code: 'custom', message: 'must be a huge page size that is a power of two ("2Mi", "16Mi", "1Gi") or its shift (21, 24, 30)' });
    return z.NEVER;
  }
  return shift;
});

/**
 * The handoff mode's options, field by field: the config file and the DRA
 * claim configuration validate them with the same rules.
 */
export const handoffOptionFields = {
  /** DMA memory prepared and mapped; default: the whole default (dma32) window of the container. */
  memorySize: byteSize,
  /** Back the memory with hugetlb pages of this size (the node must reserve them). */
  hugePageShift: hugePages,
  /** Release an unclaimed preparation after this many seconds. */
  claimTimeoutSeconds: z.number().positive().max(86_400),
  /** sPAPR TCE IOMMU version: auto (v2, else v1), or force one. */
  iommu: z.enum(['auto', 'v1', 'v2']),
};

export const PREPARATION_MODES = ['none', 'verify', 'handoff'] as const;

/** Options of the handoff mode. */
export const handoffOptionsSchema = z
  .object({
    memorySize: handoffOptionFields.memorySize.optional(),
    hugePageShift: handoffOptionFields.hugePageShift.optional(),
    claimTimeoutSeconds: handoffOptionFields.claimTimeoutSeconds.default(120),
    iommu: handoffOptionFields.iommu.default('auto'),
  })
  .strict();

export const preparationSchema = z
  .object({
    /**
     * none: no PreStartContainer; verify: prove the sPAPR container works, then release;
     * handoff: prepare and hand the container to the pod.
     */
    mode: z.enum(PREPARATION_MODES).default('verify'),
    /** Only read in handoff mode. */
    handoff: handoffOptionsSchema.optional(),
  })
  .strict()
  .superRefine((p, ctx) => {
    if (p.handoff !== undefined && p.mode !== 'handoff') {
      ctx.addIssue({ code: 'custom', path: ['handoff'], message: `is only used with mode: handoff (mode is ${p.mode})` });
    }
  });

// A kernel driver name as it appears under /sys/bus/pci/drivers: it becomes part of sysfs paths.
const DRIVER_NAME = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$/;

export const BINDING_MODES = ['static', 'managed'] as const;

/**
 * Who binds the group's functions to vfio-pci. static: the operator did
 * (driverctl, udev, a machine config); only groups already on vfio-pci are
 * offered. managed (DRA only): groups stay on their host drivers until a
 * claim is prepared, which moves them to vfio-pci; unprepare gives them back.
 */
export const bindingSchema = z
  .object({
    mode: z.enum(BINDING_MODES).default('static'),
    /** Host drivers a managed resource may take functions from; a group on any other driver is not offered. */
    allowedDrivers: z
      .array(
        z
          .string()
          .regex(DRIVER_NAME, 'must be a kernel driver name as under /sys/bus/pci/drivers, for example nvme or virtio-pci')
          .refine((d) => !d.includes('vfio'), 'names a VFIO driver: managed binding moves functions to vfio-pci; list the host drivers it may take them from'),
      )
      .min(1, 'must list at least one value when present')
      .optional(),
    /** Bound on each rebinding (taking a group, giving it back), in seconds. */
    timeoutSeconds: z.number().positive().max(600).default(30),
  })
  .strict()
  .superRefine((b, ctx) => {
    if (b.mode === 'managed' && b.allowedDrivers === undefined) {
      ctx.addIssue({ code: 'custom', path: ['allowedDrivers'], message: 'is required with mode: managed: name the host drivers it may take devices from, for example [nvme]' });
    }
    if (b.mode === 'static' && b.allowedDrivers !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['allowedDrivers'], message: 'is only used with mode: managed (mode is static)' });
    }
  });

export const resourceSchema = z
  .object({
    name: z.string().superRefine((name, ctx) => {
      const problem = resourceNameProblem(name);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
    selectors: selectorsSchema,
    preparation: preparationSchema.default({ mode: 'verify' }),
    /** `binding: static` is short for `binding: {mode: static}`. */
    binding: z
      .preprocess((v) => (typeof v === 'string' ? { mode: v } : v), bindingSchema)
      .optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    // A managed group changes driver when a claim takes it: a driver selector would drop it from the pool mid-claim.
    if (r.binding?.mode === 'managed' && r.selectors.drivers !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['selectors', 'drivers'], message: 'cannot be used with binding mode managed: the driver of a managed group changes when a claim takes it; use binding.allowedDrivers' });
    }
  });

export const configSchema = z
  .object({
    resources: z
      .array(resourceSchema, {
        error: (issue) =>
          issue.input === undefined
            ? 'is missing: list at least one resource with its name and selectors, for example "resources: [{name: ibm.com/nvme, selectors: {classes: [\'010802\']}}]"'
            : 'must be a list of resources, each with a name and selectors',
      })
      .min(1, 'must list at least one resource'),
    sysfsRoot: z.string().min(1).optional(),
    /** Root under which `proc/` lives: managed binding reads mounts and open files there (the host's with hostPID). */
    procRoot: z.string().min(1).optional(),
    devRoot: z.string().min(1).optional(),
    devicePluginDir: z.string().min(1).optional(),
    podResourcesSocket: z.string().min(1).optional(),
    pollIntervalSeconds: z.number().min(0.1, 'must be at least 0.1 seconds').max(3600).optional(),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional(),
    /** Where handoff-mode resources keep their per-allocation directories and sockets. */
    handoff: z
      .object({
        /**
         * Host directory (a hostPath of the plugin's pod). No default here: an
         * unnamed one defaults in settings, where the simulated node keeps it
         * under its temporary root.
         */
        hostDir: z.string().min(1).optional(),
        /** Where a container sees its allocation's directory (a sub-directory per resource). */
        containerDir: z.string().regex(/^\//, 'must be an absolute path').default('/var/run/power-vfio/handoff'),
      })
      .strict()
      .optional(),
    /** The kubelet front end: the device plugin API or Dynamic Resource Allocation. */
    kubeletApi: z.enum(['device-plugin', 'dra']).optional(),
    /** The DRA front end (kubeletApi: dra). */
    dra: z
      .object({
        driverName: z
          .string()
          .superRefine((name, ctx) => {
            const problem = driverNameProblem(name);
            if (problem) ctx.addIssue({ code: 'custom', message: problem });
          })
          .optional(),
        pluginsRegistryDir: z.string().min(1).optional(),
        pluginsDir: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
    /** Container Device Interface: write specs and name CDI devices in Allocate instead of device nodes. */
    cdi: z
      .object({
        enabled: z.boolean().default(false),
        /** Defaults in settings (/var/run/cdi; under its root on the simulated node). */
        specDir: z.string().min(1).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((config, ctx) => {
    const seen = new Map<string, number>();
    config.resources.forEach((resource, index) => {
      if (resource.binding?.mode === 'managed' && config.kubeletApi !== undefined && config.kubeletApi !== 'dra') {
        ctx.addIssue({ code: 'custom', path: ['resources', index, 'binding', 'mode'], message: 'managed binding needs the DRA front end (kubeletApi: dra): the device plugin API has no prepare step to rebind in' });
      }
      if (config.cdi?.enabled) {
        const problem = cdiKindProblem(resource.name);
        if (problem) ctx.addIssue({ code: 'custom', path: ['resources', index, 'name'], message: problem });
      }
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
export type BindingConfig = z.output<typeof bindingSchema>;
export type HandoffOptions = z.output<typeof handoffOptionsSchema>;
export type ResourceConfig = z.output<typeof resourceSchema>;
export type FileConfig = z.output<typeof configSchema>;
export type PreparationMode = Preparation['mode'];
