import { describe, it, expect } from 'vitest';
import {
  isEehFrozen,
  isGroupNumber,
  isPciAddress,
  isVfioDriver,
  linkBasename,
  normaliseHexId,
  parseDecimal,
  parseDriverOverride,
  parseEehPeState,
  parseGroupName,
  parseHexNumber,
  pciDomain,
} from '../../src/topology/parse.js';

describe('hex ids', () => {
  it('normalises vendor, device and class spellings', () => {
    expect(normaliseHexId('0x1014\n', 4)).toBe('1014');
    expect(normaliseHexId('0X10DE', 4)).toBe('10de');
    expect(normaliseHexId('a808', 4)).toBe('a808');
    expect(normaliseHexId('0x10b', 4)).toBe('010b');
    expect(normaliseHexId('0x010802\n', 6)).toBe('010802');
    expect(normaliseHexId('0x10802', 6)).toBe('010802');
  });
  it('rejects garbage and values too wide', () => {
    expect(normaliseHexId('not hex', 4)).toBeNull();
    expect(normaliseHexId('', 4)).toBeNull();
    expect(normaliseHexId('0x', 4)).toBeNull();
    expect(normaliseHexId('0x12345', 4)).toBeNull();
    expect(normaliseHexId('\u0000\u0001', 4)).toBeNull();
  });
});

describe('group names and addresses', () => {
  it('reads the PHB in decimal and the PE in hex', () => {
    expect(parseGroupName('domain53-pe1fd\n')).toEqual({ phb: 53, pe: 0x1fd });
    expect(parseGroupName('domain1-pe0')).toEqual({ phb: 1, pe: 0 });
    expect(parseGroupName('domain0-pe1fd')).toEqual({ phb: 0, pe: 0x1fd });
  });
  it('returns null for other spellings', () => {
    expect(parseGroupName('something else')).toBeNull();
    expect(parseGroupName('domainx-pe1')).toBeNull();
    expect(parseGroupName('domain1-pezz')).toBeNull();
  });
  it('reads the domain of an address in hex', () => {
    expect(pciDomain('0035:01:00.0')).toBe(53);
    expect(pciDomain('0030:01:00.0')).toBe(48);
    expect(pciDomain('0206:a0:00.0')).toBe(0x206);
    expect(pciDomain('junk')).toBeNull();
  });
  it('recognises PCI addresses and group numbers', () => {
    expect(isPciAddress('0030:01:00.1')).toBe(true);
    expect(isPciAddress('0030:01:00.8')).toBe(false);
    expect(isPciAddress('not-a-bdf')).toBe(false);
    expect(isGroupNumber('0')).toBe(true);
    expect(isGroupNumber('4095')).toBe(true);
    expect(isGroupNumber('abc')).toBe(false);
    expect(isGroupNumber('01')).toBe(false);
    expect(isGroupNumber('-1')).toBe(false);
  });
});

describe('EEH state', () => {
  it('parses current and older kernel spellings', () => {
    expect(parseEehPeState('0x00000078 0x00000800\n')).toEqual({ hardwareState: 0x78, softwareState: 0x800 });
    expect(parseEehPeState('00000078 00000800')).toEqual({ hardwareState: 0x78, softwareState: 0x800 });
    expect(parseEehPeState('0x00000018 0x00000a00')).toEqual({ hardwareState: 0x18, softwareState: 0xa00 });
    expect(parseEehPeState('0x78')).toEqual({ hardwareState: 0x78, softwareState: null });
  });
  it('rejects garbage', () => {
    expect(parseEehPeState('banana')).toBeNull();
    expect(parseEehPeState('')).toBeNull();
    expect(parseEehPeState('0x78 0x800 0x1')).toBeNull();
    expect(parseEehPeState('0x78 zz')).toBeNull();
  });
  it('judges frozen from ISOLATED or missing MMIO/DMA activity', () => {
    expect(isEehFrozen({ hardwareState: 0x78, softwareState: 0x800 })).toBe(false);
    expect(isEehFrozen({ hardwareState: 0x18, softwareState: 0xa00 })).toBe(false);
    expect(isEehFrozen({ hardwareState: 0x78, softwareState: 0x801 })).toBe(true);
    expect(isEehFrozen({ hardwareState: 0x08, softwareState: 0x800 })).toBe(true);
    expect(isEehFrozen({ hardwareState: 0x10, softwareState: 0x800 })).toBe(true);
    expect(isEehFrozen({ hardwareState: null, softwareState: null })).toBe(false);
    expect(isEehFrozen({ hardwareState: null, softwareState: 0x1 })).toBe(true);
  });
});

describe('small attributes', () => {
  it('parses numbers, overrides and link names', () => {
    expect(parseDecimal('-1\n')).toBe(-1);
    expect(parseDecimal('8')).toBe(8);
    expect(parseDecimal('lots')).toBeNull();
    expect(parseHexNumber('0x1fd\n')).toBe(0x1fd);
    expect(parseHexNumber('a00000')).toBe(0xa00000);
    expect(parseHexNumber('nope')).toBeNull();
    expect(parseDriverOverride('(null)\n')).toBeNull();
    expect(parseDriverOverride('\n')).toBeNull();
    expect(parseDriverOverride('vfio-pci\n')).toBe('vfio-pci');
    expect(linkBasename('../../../bus/pci/drivers/nvme')).toBe('nvme');
    expect(linkBasename('nvme/')).toBe('nvme');
    expect(isVfioDriver('vfio-pci')).toBe(true);
    expect(isVfioDriver('mlx5_vfio_pci')).toBe(true);
    expect(isVfioDriver('nvme')).toBe(false);
  });
});
