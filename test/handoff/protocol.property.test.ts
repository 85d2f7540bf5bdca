// Property-based tests of the handoff request parser and of what the endpoint
// answers: any bytes give a claim only when they are a valid version-1 claim,
// every refusal is one JSON error line with a documented code, and nothing
// throws past the parser. The client's description check refuses, with
// PVDP_HANDOFF_MALFORMED, anything that does not describe what arrived.
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  HandoffProtocolError,
  MAX_REQUEST_BYTES,
  parseClaimRequest,
  validateDescription,
  type HandoffErrorCode,
} from '../../src/handoff/protocol.js';
import { HandoffEndpoint } from '../../src/handoff/server.js';
import type { HandoffConnection, HandoffListener, HandoffTransport } from '../../src/handoff/transport.js';
import { silentLogger } from '../../src/log.js';

/** Inputs tried per property; the report quotes these. */
export const RUNS = { parser: 5000, model: 5000, endpoint: 2000, description: 3000 };

/**
 * Each property runs thousands of inputs: seconds on an idle machine, several times that on a
 * loaded one. The default 20 s test timeout is too close; the run counts are what is tested.
 */
const PROPERTY_TIMEOUT_MS = 60_000;

const DOCUMENTED: HandoffErrorCode[] = [
  'PVDP_HANDOFF_MALFORMED',
  'PVDP_HANDOFF_TOO_LARGE',
  'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL',
  'PVDP_HANDOFF_UNKNOWN_REQUEST',
  'PVDP_HANDOFF_ALREADY_CLAIMED',
  'PVDP_HANDOFF_RELEASED',
  'PVDP_HANDOFF_NOT_READY',
  'PVDP_HANDOFF_BUSY',
];

/** What the parser must decide for a decoded JSON value, written from the protocol page. */
function expected(value: unknown): HandoffErrorCode | 'claim' {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'PVDP_HANDOFF_MALFORMED';
  const r = value as Record<string, unknown>;
  if (typeof r['protocol'] !== 'number' || !Number.isInteger(r['protocol'])) return 'PVDP_HANDOFF_MALFORMED';
  if (r['protocol'] !== 1) return 'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL';
  if (r['request'] !== 'claim') return 'PVDP_HANDOFF_UNKNOWN_REQUEST';
  return 'claim';
}

function decide(line: Buffer): HandoffErrorCode | 'claim' {
  try {
    parseClaimRequest(line);
    return 'claim';
  } catch (err) {
    expect(err).toBeInstanceOf(HandoffProtocolError);
    expect((err as Error).message.length).toBeGreaterThan(0);
    return (err as HandoffProtocolError).code;
  }
}

const requestish = fc.record(
  {
    protocol: fc.oneof(fc.constant(1), fc.integer({ min: -2, max: 3 }), fc.double(), fc.string({ maxLength: 3 }), fc.constant(null), fc.constant(1.0), fc.constant(2 ** 53)),
    request: fc.oneof(fc.constant('claim'), fc.constantFrom('Claim', 'claim ', 'release', ''), fc.string({ maxLength: 6 }), fc.integer()),
  },
  { requiredKeys: [] },
).chain((core) => fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }).map((extra) => ({ ...extra, ...core })));

describe('the handoff request parser', () => {
  it(`decides any bytes without throwing anything but a protocol error (${RUNS.parser} runs)`, () => {
    const bytes = fc.oneof(fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)), fc.string({ unit: 'binary', maxLength: 200 }).map((s) => Buffer.from(s)));
    fc.assert(
      fc.property(bytes, (line) => {
        const result = decide(line);
        expect(['claim', ...DOCUMENTED]).toContain(result);
        // A claim decoded from bytes is a claim the model accepts too.
        if (result === 'claim') expect(expected(JSON.parse(line.toString('utf8').replace(/\r?\n$/, '')))).toBe('claim');
      }),
      { numRuns: RUNS.parser },
    );
  }, PROPERTY_TIMEOUT_MS);

  it(`agrees with the protocol page on every JSON request, with or without its newline (${RUNS.model} runs)`, () => {
    const value = fc.oneof({ weight: 4, arbitrary: requestish }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) });
    fc.assert(
      fc.property(value, fc.constantFrom('', '\n', '\r\n'), (v, end) => {
        expect(decide(Buffer.from(`${JSON.stringify(v)}${end}`))).toBe(expected(v));
      }),
      { numRuns: RUNS.model },
    );
  }, PROPERTY_TIMEOUT_MS);
});

/** A connection that hands the endpoint one scripted request line and records what it sends. */
class ScriptedConnection implements HandoffConnection {
  sent: Buffer[] = [];
  closed = false;
  constructor(private readonly request: Buffer) {}
  async readRequest(maxBytes: number): Promise<Buffer> {
    const newline = this.request.indexOf(0x0a);
    const line = newline >= 0 ? this.request.subarray(0, newline) : this.request;
    if (line.length > maxBytes - 1) throw new HandoffProtocolError('PVDP_HANDOFF_TOO_LARGE', `The request is longer than ${maxBytes} bytes`);
    return line;
  }
  async send(data: Buffer): Promise<void> {
    this.sent.push(data);
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}

describe('the endpoint answering random requests', () => {
  it(`claims only on a valid claim, otherwise answers one documented JSON error line and closes (${RUNS.endpoint} runs)`, async () => {
    let onConnection: ((c: HandoffConnection) => void) | null = null;
    const transport: HandoffTransport = {
      kind: 'simulated',
      async listen(socketPath, handler): Promise<HandoffListener> {
        onConnection = handler;
        return { socketPath, close: async () => undefined };
      },
    };
    let claims = 0;
    const endpoint = new HandoffEndpoint('/p', transport, { claim: async () => void (claims += 1) }, silentLogger());
    await endpoint.listen();
    const line = fc.oneof(
      requestish.map((v) => Buffer.from(`${JSON.stringify(v)}\n`)),
      fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
      fc.nat({ max: 3 }).map((extra) => Buffer.alloc(MAX_REQUEST_BYTES + extra - 1, 0x20)),
    );
    await fc.assert(
      fc.asyncProperty(line, async (request) => {
        const before = claims;
        const connection = new ScriptedConnection(request);
        onConnection!(connection);
        await endpoint.drain();
        expect(connection.closed).toBe(true);
        const newline = request.indexOf(0x0a);
        const body = newline >= 0 ? request.subarray(0, newline) : request;
        if (body.length <= MAX_REQUEST_BYTES - 1 && decide(body) === 'claim') {
          expect(claims).toBe(before + 1);
          expect(connection.sent).toEqual([]);
          return;
        }
        expect(claims).toBe(before);
        expect(connection.sent).toHaveLength(1);
        const text = connection.sent[0]!.toString('utf8');
        expect(text.endsWith('\n') && text.indexOf('\n') === text.length - 1).toBe(true);
        const answer = JSON.parse(text) as { protocol: number; result: string; error: { code: HandoffErrorCode; message: string } };
        expect(answer).toMatchObject({ protocol: 1, result: 'error' });
        expect(DOCUMENTED).toContain(answer.error.code);
      }),
      { numRuns: RUNS.endpoint },
    );
    await endpoint.close();
  }, PROPERTY_TIMEOUT_MS);
});

describe('the client\'s check of a description', () => {
  it(`refuses, as PVDP_HANDOFF_MALFORMED, anything that does not describe the fds that arrived (${RUNS.description} runs)`, () => {
    /** Descriptions as the plugin writes them: consistent fds, ranges inside the window and the memory. */
    const valid = fc
      .record({
        groups: fc.array(fc.nat({ max: 99 }), { minLength: 1, maxLength: 3 }),
        start: fc.bigInt({ min: 0n, max: 1n << 60n }),
        windowSize: fc.bigInt({ min: 1n << 20n, max: 1n << 32n }),
        memorySize: fc.bigInt({ min: 1n << 20n, max: 1n << 30n }),
        v2: fc.boolean(),
      })
      .map(({ groups, start, windowSize, memorySize, v2 }) => {
        const size = (windowSize < memorySize ? windowSize : memorySize) / 2n;
        const h = (v: bigint) => `0x${v.toString(16)}`;
        return {
          protocol: 1,
          resource: 'ibm.com/edu',
          iommu: v2 ? { type: 'spapr-tce-v2', value: 7 } : { type: 'spapr-tce', value: 2 },
          window: { start: h(start), size: h(windowSize), pageShift: 16, pageSize: '0x10000', created: v2 },
          memory: { fdIndex: 1, size: h(memorySize), pageSize: '0x1000', hugetlb: false },
          container: { fdIndex: 0 },
          groups: groups.map((g, i) => ({ group: g, fdIndex: 2 + i, functions: [`0001:00:0${i}.0`] })),
          ranges: [{ iova: h(start), size: h(size), offset: '0x0' }],
          fds: ['container', 'memory', ...groups.map((g) => `group:${g}`)],
        } as Record<string, unknown>;
      });
    /** One field somewhere replaced by junk or removed. */
    const junkValue = fc.oneof(fc.jsonValue({ maxDepth: 1 }), fc.constant(undefined), fc.constantFrom('0x', '0x12345678901234567', -1, 1.5, 'spapr-tce-v3'));
    const paths = [
      ['protocol'], ['resource'], ['iommu'], ['iommu', 'type'], ['iommu', 'value'], ['window'], ['window', 'start'], ['window', 'size'],
      ['window', 'pageShift'], ['window', 'pageSize'], ['window', 'created'], ['memory', 'size'], ['memory', 'pageSize'], ['memory', 'hugetlb'],
      ['memory', 'fdIndex'], ['container', 'fdIndex'], ['groups'], ['groups', 0, 'group'], ['groups', 0, 'fdIndex'], ['groups', 0, 'functions'],
      ['groups', 0, 'functions', 0], ['ranges'], ['ranges', 0, 'iova'], ['ranges', 0, 'size'], ['ranges', 0, 'offset'], ['fds'], ['fds', 0],
    ];
    const broken = fc.tuple(valid, fc.constantFrom(...paths), junkValue).map(([d, path, junk]) => {
      const copy = structuredClone(d);
      let at: Record<string | number, unknown> = copy;
      for (const part of path.slice(0, -1)) at = at[part] as Record<string | number, unknown>;
      const last = path[path.length - 1]!;
      if (junk === undefined) delete at[last];
      else at[last] = junk;
      return copy;
    });
    let accepted = 0;
    const plain = (changes: (d: Record<string, unknown>) => void) => {
      const d = structuredClone(fc.sample(valid, { numRuns: 1, seed: 1 })[0]!);
      changes(d);
      return [d, 0, true] as [Record<string, unknown>, number, boolean];
    };
    // Found by this property: a description without iommu (or with a non-string function
    // address) passed the check, and the exec wrapper then failed reading iommu.type.
    fc.assert(
      fc.property(fc.oneof(valid, broken, fc.jsonValue({ maxDepth: 2 })), fc.nat({ max: 6 }), fc.boolean(), (value, n, matching) => {
        // Mostly the fd count the description names, so that acceptance is reached.
        const fdCount = matching && typeof value === 'object' && value !== null && Array.isArray((value as { fds?: unknown }).fds) ? (value as { fds: unknown[] }).fds.length : n;
        let d;
        try {
          d = validateDescription(value, fdCount);
        } catch (err) {
          expect(err).toBeInstanceOf(HandoffProtocolError);
          expect((err as HandoffProtocolError).code).toBe('PVDP_HANDOFF_MALFORMED');
          return;
        }
        // Accepted: every promise a workload relies on holds (the exec wrapper reads each of these).
        expect(['spapr-tce-v2', 'spapr-tce']).toContain(d.iommu?.type);
        expect(Number.isInteger(d.iommu.value)).toBe(true);
        expect(typeof d.resource).toBe('string');
        expect(Number.isInteger(d.window.pageShift) && d.window.pageShift >= 0 && d.window.pageShift < 64).toBe(true);
        expect(typeof d.window.created === 'boolean' && typeof d.memory.hugetlb === 'boolean').toBe(true);
        for (const g of d.groups) for (const f of g.functions) expect(typeof f).toBe('string');
        for (const name of d.fds) expect(typeof name).toBe('string');
        expect(d.fds).toHaveLength(fdCount);
        expect(fdCount).toBe(2 + d.groups.length);
        const start = BigInt(d.window.start);
        const end = start + BigInt(d.window.size);
        for (const r of d.ranges) {
          expect(BigInt(r.iova) >= start && BigInt(r.iova) + BigInt(r.size) <= end).toBe(true);
          expect(BigInt(r.offset) + BigInt(r.size) <= BigInt(d.memory.size)).toBe(true);
        }
        accepted += 1;
      }),
      {
        numRuns: RUNS.description,
        examples: [
          plain((d) => delete d['iommu']),
          plain((d) => ((d['iommu'] as Record<string, unknown>)['value'] = {})),
          plain((d) => ((d['groups'] as Array<Record<string, unknown>>)[0]!['functions'] = [4])),
        ],
      },
    );
    expect(accepted).toBeGreaterThan(RUNS.description / 20);
  }, PROPERTY_TIMEOUT_MS);
});
