// Property-based tests of the sysfs attribute parsers and the EEH decoding:
// every spelling the kernel prints parses back to the value it printed, no
// text makes a parser throw, and what a parser accepts is what its contract
// says (widths, ranges). EEH: the frozen verdict follows the bit rules, and
// doubt (unreadable or unparseable state) is never taken for a healthy PE.
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  decodeEehStateRead,
  isEehFrozen,
  isGroupNumber,
  isPciAddress,
  linkBasename,
  normaliseHexId,
  parseAerFatalTotal,
  parseDecimal,
  parseDriverOverride,
  parseEehPeState,
  parseGroupName,
  parseHexNumber,
  pciDomain,
} from '../../src/topology/parse.js';

/** Inputs tried per property; the report quotes these. */
export const RUNS = 5000;

/**
 * Each property runs thousands of inputs: seconds on an idle machine, several times that on a
 * loaded one. The default 20 s test timeout is too close; the run counts are what is tested.
 */
const PROPERTY_TIMEOUT_MS = 60_000;

const anyText = fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.stringMatching(/^[0-9a-fA-Fx \n\t-]{0,24}$/));
const word32 = fc.integer({ min: 0, max: 0xffffffff });
/** Trailing whitespace as sysfs and hand-edited trees leave it. */
const trailer = fc.constantFrom('', '\n', ' \n', '\t');

describe('sysfs attribute parsers', () => {
  it('never throw, whatever the attribute holds', () => {
    fc.assert(
      fc.property(anyText, fc.integer({ min: 1, max: 8 }), (text, digits) => {
        const id = normaliseHexId(text, digits);
        if (id !== null) expect(id).toMatch(new RegExp(`^[0-9a-f]{${digits}}$`));
        const dec = parseDecimal(text);
        if (dec !== null) expect(Number.isSafeInteger(dec)).toBe(true);
        const hex = parseHexNumber(text);
        if (hex !== null) expect(Number.isSafeInteger(hex) && hex >= 0).toBe(true);
        const name = parseGroupName(text);
        if (name !== null) expect(Number.isSafeInteger(name.phb) && Number.isSafeInteger(name.pe)).toBe(true);
        const aer = parseAerFatalTotal(text);
        if (aer !== null) expect(Number.isSafeInteger(aer) && aer >= 0).toBe(true);
        const override = parseDriverOverride(text);
        if (override !== null) expect(override).toBe(override.trim());
        expect(typeof linkBasename(text)).toBe('string');
        expect(typeof isPciAddress(text) && typeof isGroupNumber(text)).toBe('boolean');
        const domain = pciDomain(text);
        expect(domain === null || isPciAddress(text)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  }, PROPERTY_TIMEOUT_MS);

  it('read back the ids the kernel prints (0x%04x, 0x%06x), in any case and padding', () => {
    fc.assert(
      fc.property(fc.constantFrom(4, 6), fc.nat(), fc.boolean(), fc.boolean(), fc.nat({ max: 3 }), trailer, (digits, raw, prefix, upper, pad, tail) => {
        const value = raw % 16 ** digits;
        let text = value.toString(16).padStart(digits - (pad % digits), '0');
        if (upper) text = text.toUpperCase();
        const expected = value.toString(16).padStart(digits, '0');
        expect(normaliseHexId(`${prefix ? '0x' : ''}${text}${tail}`, digits)).toBe(expected);
        // One digit too many (not a leading zero) is refused.
        expect(normaliseHexId(`0x1${value.toString(16).padStart(digits, '0')}`, digits)).toBeNull();
      }),
      { numRuns: RUNS },
    );
  }, PROPERTY_TIMEOUT_MS);

  it('read back numa_node, eeh_pe_config_addr and group names as printed', () => {
    fc.assert(
      fc.property(fc.integer({ min: -1, max: 2 ** 31 - 1 }), fc.nat({ max: 2 ** 40 }), fc.nat({ max: 65535 }), trailer, (numa, addr, phb, tail) => {
        expect(parseDecimal(`${numa}${tail}`)).toBe(numa);
        expect(parseHexNumber(`0x${addr.toString(16)}${tail}`)).toBe(addr);
        expect(parseHexNumber(addr.toString(16))).toBe(addr);
        expect(parseGroupName(`domain${phb}-pe${addr.toString(16)}${tail}`)).toEqual({ phb, pe: addr });
      }),
      { numRuns: RUNS },
    );
  }, PROPERTY_TIMEOUT_MS);

  it('PCI addresses: sysfs spellings are recognised and give their domain in hex', () => {
    const hexDigits = (n: number) => fc.nat({ max: 16 ** n - 1 }).map((v) => v.toString(16).padStart(n, '0'));
    fc.assert(
      fc.property(hexDigits(4), hexDigits(2), fc.nat({ max: 31 }), fc.nat({ max: 7 }), (domain, bus, slot, fn) => {
        const address = `${domain}:${bus}:${slot.toString(16).padStart(2, '0')}.${fn}`;
        expect(isPciAddress(address)).toBe(true);
        expect(pciDomain(address)).toBe(Number.parseInt(domain, 16));
        expect(isPciAddress(`${address}0`)).toBe(false);
      }),
      { numRuns: RUNS },
    );
  }, PROPERTY_TIMEOUT_MS);
});

describe('EEH decoding', () => {
  it('reads both words in every spelling kernels use: 0x%08x, %08x, %x', () => {
    fc.assert(
      fc.property(word32, word32, fc.constantFrom('current', 'old', 'short'), trailer, (hw, sw, spelling, tail) => {
        const f = (v: number) => (spelling === 'current' ? `0x${v.toString(16).padStart(8, '0')}` : spelling === 'old' ? v.toString(16).padStart(8, '0') : v.toString(16));
        expect(parseEehPeState(`${f(hw)} ${f(sw)}${tail}`)).toEqual({ hardwareState: hw, softwareState: sw });
      }),
      { numRuns: RUNS },
    );
  }, PROPERTY_TIMEOUT_MS);

  it('frozen exactly when ISOLATED is set or MMIO and DMA are not both active', () => {
    fc.assert(
      fc.property(word32, word32, (hw, sw) => {
        const frozen = (sw & 0x1) !== 0 || (hw & 0x18) !== 0x18;
        expect(isEehFrozen({ hardwareState: hw, softwareState: sw })).toBe(frozen);
        // Healthy LPAR (0x18) and bare-metal (0x78) hardware words, any software word without ISOLATED.
        if ((sw & 1) === 0) {
          expect(isEehFrozen({ hardwareState: 0x18, softwareState: sw })).toBe(false);
          expect(isEehFrozen({ hardwareState: 0x78, softwareState: sw })).toBe(false);
        }
      }),
      { numRuns: RUNS },
    );
  }, PROPERTY_TIMEOUT_MS);

  it('a read of eeh_pe_state is absent, known or unknown, and never unknown without the path and a reason', () => {
    const read = fc.oneof(
      anyText.map((text) => ({ ok: true as const, text })),
      fc.constantFrom('ENOENT', 'ENODEV', 'EIO', 'EACCES', 'EISDIR', 'ELOOP', 'EINVAL', 'EPERM').map((code) => ({ ok: false as const, code })),
    );
    fc.assert(
      fc.property(fc.stringMatching(/^\/[a-z0-9/:._-]{1,40}$/), read, (path, r) => {
        const result = decodeEehStateRead(path, r);
        if (!r.ok) {
          expect(result.kind).toBe(r.code === 'ENOENT' || r.code === 'ENODEV' ? 'absent' : 'unknown');
        } else {
          // Text is never "absent": the file is there.
          expect(result.kind).not.toBe('absent');
          expect(result.kind === 'known').toBe(parseEehPeState(r.text) !== null);
        }
        if (result.kind === 'unknown') {
          expect(result.reason.startsWith(`${path} `)).toBe(true);
          expect(result.reason.length).toBeGreaterThan(path.length + 5);
        }
      }),
      { numRuns: RUNS },
    );
  }, PROPERTY_TIMEOUT_MS);
});
