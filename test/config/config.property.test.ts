// Property-based tests of the configuration loader: random values and random
// YAML never crash it, and every refusal is a ConfigError whose every problem
// line starts by naming where (a field path, a YAML line and column, or the
// YAML layer itself). Accepted configurations keep the schema's promises.
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { stringify } from 'yaml';
import { parseConfig, parseConfigText } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

/** Inputs tried per property; the report quotes these. */
export const RUNS = { values: 3000, valid: 1000, nearValid: 3000, yaml: 2000, mutatedYaml: 1000 };

/**
 * Each property runs thousands of inputs: seconds on an idle machine, several times that on a
 * loaded one. The default 20 s test timeout is too close; the run counts are what is tested.
 */
const PROPERTY_TIMEOUT_MS = 60_000;

/**
 * Splits `path: message`; null when the line does not start with a path the
 * loader writes: `(top level)`, a YAML position, `YAML`, or field names and
 * indexes (`resources[0].selectors.vendors[1]`, odd keys as `["a b"]`).
 */
function pathOf(line: string): string | null {
  for (const fixed of [/^\(top level\): /, /^line \d+, column \d+: /, /^YAML: /]) {
    const m = fixed.exec(line);
    if (m) return m[0].slice(0, -2);
  }
  let i = 0;
  const name = /^[A-Za-z_$][\w$-]*/;
  const index = /^\[\d+\]/;
  const quoted = /^\["(?:[^"\\\n]|\\.)*"\]/;
  let first = true;
  for (;;) {
    const rest = line.slice(i);
    const m = (first ? name.exec(rest) : null) ?? (rest.startsWith('.') ? name.exec(rest.slice(1)) : null) ?? index.exec(rest) ?? quoted.exec(rest);
    if (!m) break;
    i += m[0].length + (!first && rest.startsWith('.') ? 1 : 0);
    first = false;
  }
  if (i === 0 || !line.startsWith(': ', i) || line.length <= i + 2) return null;
  return line.slice(0, i);
}

function checkOutcome(run: () => unknown): void {
  let result: unknown;
  try {
    result = run();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems;
    expect(problems.length).toBeGreaterThan(0);
    for (const p of problems) {
      expect(p, 'one line per problem').not.toContain('\n');
      expect(pathOf(p), `names a path: ${JSON.stringify(p)}`).not.toBeNull();
    }
    return;
  }
  const config = result as { resources: Array<{ name: string; preparation: { mode: string } }> };
  expect(config.resources.length).toBeGreaterThan(0);
  expect(new Set(config.resources.map((r) => r.name)).size).toBe(config.resources.length);
  for (const r of config.resources) expect(['none', 'verify', 'handoff']).toContain(r.preparation.mode);
}

const key = fc.oneof(
  fc.constantFrom('resources', 'name', 'selectors', 'preparation', 'mode', 'handoff', 'vendors', 'cdi', 'match', 'memorySize'),
  fc.string({ maxLength: 8 }),
  fc.constantFrom('a b', 'x: y', 'new\nline', '', '"', '__proto__', 'constructor', '0', 'é'),
);
const scalar = fc.oneof(fc.string({ maxLength: 12 }), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.bigInt().map((b) => Number(b)));
const junk = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, scalar, fc.array(tie('value'), { maxLength: 4 }), fc.dictionary(key, tie('value'), { maxKeys: 4 })),
})).value;

const hex = (digits: number) => fc.stringMatching(new RegExp(`^(0x)?[0-9a-fA-F]{${digits}}$`));
const name = fc.oneof(
  fc.constantFrom('ibm.com/nvme', 'example.com/gpu', 'a.b/c', 'kubernetes.io/x', 'requests.x/y', 'nodomain', 'x/y/z'),
  fc.tuple(fc.stringMatching(/^[a-z0-9.-]{1,12}$/), fc.stringMatching(/^[A-Za-z0-9_.-]{1,12}$/)).map(([d, n]) => `${d}/${n}`),
  fc.string({ maxLength: 20 }),
);
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined });
const list = <T>(arb: fc.Arbitrary<T>) => fc.oneof(fc.array(arb, { maxLength: 3 }), junk);
const selectors = fc.record(
  {
    vendors: list(fc.oneof(hex(4), fc.string({ maxLength: 6 }))),
    devices: list(hex(4)),
    classes: list(fc.oneof(hex(2), hex(4), hex(6), fc.string({ maxLength: 8 }))),
    drivers: list(fc.string({ maxLength: 8 })),
    addresses: list(fc.oneof(fc.constantFrom('0030:*:00.0', '*', '00?0:01:00.1'), fc.string({ maxLength: 14 }))),
    domains: list(fc.oneof(hex(4), fc.integer(), fc.string({ maxLength: 4 }))),
    numaNodes: list(fc.oneof(fc.integer({ min: -3, max: 300 }), fc.double())),
    match: fc.oneof(fc.constantFrom('any', 'all'), junk),
  },
  { requiredKeys: [] },
);
const handoff = fc.record(
  {
    memorySize: fc.oneof(fc.constantFrom('256Mi', '1Gi', '4096', ' 1 Ki ', '0', '-1', '1e3', '99999999999Ti'), fc.integer(), fc.double(), fc.string({ maxLength: 6 })),
    hugePageShift: fc.oneof(fc.constantFrom('2Mi', '16Mi', '1Gi', '3Mi', 21, 24, 15, 41), fc.double(), fc.string({ maxLength: 5 })),
    claimTimeoutSeconds: fc.oneof(fc.integer({ min: -5, max: 100_000 }), fc.double(), junk),
    iommu: fc.oneof(fc.constantFrom('auto', 'v1', 'v2', 'v3'), junk),
  },
  { requiredKeys: [] },
);
const resource = fc.record(
  {
    name,
    selectors: fc.oneof(selectors, junk),
    preparation: fc.oneof(fc.record({ mode: fc.oneof(fc.constantFrom('none', 'verify', 'handoff'), junk), handoff: maybe(handoff) }, { requiredKeys: [] }), junk),
  },
  { requiredKeys: ['name'] },
);
const nearValid = fc
  .tuple(
    fc.record(
      {
        resources: fc.oneof(fc.array(resource, { maxLength: 4 }), junk),
        pollIntervalSeconds: fc.oneof(fc.double(), fc.integer()),
        logLevel: fc.oneof(fc.constantFrom('info', 'debug', 'loud'), junk),
        handoff: fc.oneof(fc.record({ hostDir: fc.string({ maxLength: 8 }), containerDir: fc.string({ maxLength: 8 }) }, { requiredKeys: [] }), junk),
        cdi: fc.oneof(fc.record({ enabled: fc.oneof(fc.boolean(), junk), specDir: fc.string({ maxLength: 8 }) }, { requiredKeys: [] }), junk),
      },
      { requiredKeys: ['resources'] },
    ),
    fc.dictionary(key, junk, { maxKeys: 2 }),
  )
  .map(([known, extra]) => ({ ...extra, ...known }));

/** Configurations valid by construction, with the spellings operators use (0x, upper case). */
const validResourceBody = fc.record({
  selectors: fc.record(
    {
      vendors: fc.array(hex(4), { minLength: 1, maxLength: 3 }),
      classes: fc.array(fc.oneof(hex(2), hex(4), hex(6)), { minLength: 1, maxLength: 2 }),
      domains: fc.array(fc.stringMatching(/^[0-9a-f]{4}$/), { minLength: 1, maxLength: 2 }),
      numaNodes: fc.array(fc.integer({ min: -1, max: 255 }), { minLength: 1, maxLength: 2 }),
      match: fc.constantFrom('any', 'all'),
    },
    { requiredKeys: [] },
  ).map((sel) =>
    // Selectors that name nothing are refused; selecting everything is said explicitly.
    ['vendors', 'classes', 'domains', 'numaNodes'].some((k) => k in sel) ? sel : { all: true as const, domains: undefined },
  ),
  preparation: fc.oneof(
    fc.record({ mode: fc.constantFrom('none', 'verify') }),
    fc.record({
      mode: fc.constant('handoff'),
      handoff: fc.record(
        { memorySize: fc.constantFrom('256Mi', '1Gi', 4096, '2k'), hugePageShift: fc.constantFrom('2Mi', '16Mi', 21, 30), claimTimeoutSeconds: fc.integer({ min: 1, max: 86_400 }) },
        { requiredKeys: [] },
      ),
    }),
  ),
});
const validConfig = fc
  .tuple(
    fc.uniqueArray(fc.tuple(fc.stringMatching(/^[a-z][a-z0-9]{0,6}\.(com|org|io)$/), fc.stringMatching(/^[a-z][a-z0-9-]{0,8}[a-z0-9]$/)), {
      minLength: 1,
      maxLength: 3,
      selector: ([d, n]) => `${d}/${n}`,
    }),
    fc.array(validResourceBody, { minLength: 3, maxLength: 3 }),
  )
  .map(([names, bodies]) => ({ resources: names.map(([d, n], i) => ({ name: `${d}/${n}`, ...bodies[i]! })) }));

describe('the configuration loader under random input', () => {
  it(`accepts every valid configuration and normalises its ids (${RUNS.valid} runs)`, () => {
    fc.assert(
      fc.property(validConfig, (value) => {
        const config = parseConfigText(stringify(value));
        expect(config.resources.map((r) => r.name)).toEqual(value.resources.map((r) => r.name));
        for (const [i, r] of config.resources.entries()) {
          for (const v of r.selectors.vendors ?? []) expect(v).toMatch(/^[0-9a-f]{4}$/);
          for (const c of r.selectors.classes ?? []) expect(c).toMatch(/^([0-9a-f]{2}){1,3}$/);
          expect(r.selectors.domains).toEqual(value.resources[i]!.selectors.domains?.map((d) => Number.parseInt(d, 16)));
        }
      }),
      { numRuns: RUNS.valid },
    );
  }, PROPERTY_TIMEOUT_MS);

  it(`never crashes on arbitrary values (${RUNS.values} runs); every problem names its path`, () => {
    // Found by this property: keys that are empty or hold spaces or ": " made lines that named no
    // path, and objects without a prototype crashed the validator's own messages.
    const nullProto = Object.assign(Object.create(null) as object, { constructor: { name: Object.create(null) as object } });
    const odd = fc.anything({ withNullPrototype: true, withBoxedValues: true, withMap: true, withSet: true, withSparseArray: true, withTypedArray: true, withObjectString: true });
    fc.assert(fc.property(fc.oneof(junk, odd), (value) => checkOutcome(() => parseConfig(value))), {
      numRuns: RUNS.values,
      examples: [[{ '': false }], [{ 'a b': 0, resources: [] }], [{ resources: nullProto }], [{ resources: [{ name: 'a.com/b', selectors: { 'x: y': 1 } }] }]],
    });
  }, PROPERTY_TIMEOUT_MS);

  it(`judges near-valid configurations (${RUNS.nearValid} runs): a ConfigError naming paths, or a configuration that keeps the schema's promises`, () => {
    let accepted = 0;
    // Valid ones with one field replaced by junk, or built from junk-prone parts.
    const broken = fc.tuple(validConfig, fc.nat(), fc.constantFrom('name', 'selectors', 'preparation'), junk).map(([v, i, field, j]) => {
      const resources = v.resources.map((r) => ({ ...r })) as Array<Record<string, unknown>>;
      resources[i % resources.length]![field] = j;
      return { resources };
    });
    fc.assert(
      fc.property(fc.oneof(validConfig, broken, nearValid), (value) => {
        checkOutcome(() => parseConfig(value));
        try {
          parseConfig(value);
          accepted += 1;
        } catch {
          // Counted only to show the generator reaches both outcomes.
        }
      }),
      { numRuns: RUNS.nearValid },
    );
    expect(accepted).toBeGreaterThan(0);
  }, PROPERTY_TIMEOUT_MS);

  it(`never crashes on random YAML text (${RUNS.yaml} runs)`, () => {
    const yamlish = fc.stringMatching(/^[-a-z0-9:{}[\]," '\n&*!|>#%@`?.]{0,80}$/);
    fc.assert(fc.property(fc.oneof(fc.string({ maxLength: 80 }), yamlish), (text) => checkOutcome(() => parseConfigText(text))), { numRuns: RUNS.yaml });
  }, PROPERTY_TIMEOUT_MS);

  it(`never crashes on YAML of near-valid configurations with random edits (${RUNS.mutatedYaml} runs)`, () => {
    const edit = fc.record({ at: fc.nat(), cut: fc.nat({ max: 4 }), insert: fc.constantFrom('', ':', '- ', '\n', '"', '{', '&a ', '*a', '!!int ', '\t', '  ') });
    fc.assert(
      fc.property(nearValid, fc.array(edit, { maxLength: 3 }), (value, edits) => {
        let text = stringify(value);
        for (const e of edits) {
          const at = e.at % (text.length + 1);
          text = text.slice(0, at) + e.insert + text.slice(at + e.cut);
        }
        checkOutcome(() => parseConfigText(text));
      }),
      { numRuns: RUNS.mutatedYaml },
    );
  }, PROPERTY_TIMEOUT_MS);
});
