// The DRA front end's settings and the claim configuration: the front-end
// choice, the driver name and paths, and how class and claim options combine
// over the resource's own, with every bad field named by its path.
import { describe, it, expect } from 'vitest';
import { parseCommandLine, resolveSettings } from '../../src/config/settings.js';
import { simulatedNodeConfig } from '../../src/simulate/node-config.js';
import { parseConfigText } from '../../src/config/load.js';
import { effectivePreparation, ClaimConfigError, type OpaqueConfigEntry } from '../../src/dra/claim-config.js';
import { claimAllocation, ClaimRefusal } from '../../src/dra/claim-allocation.js';
import { allocatedClaim, claimRefOf, preparationParameters } from '../../src/simulate/claims.js';

const settingsOf = (argv: string[], env: NodeJS.ProcessEnv = {}) => resolveSettings(parseCommandLine(argv, env).values, simulatedNodeConfig);

describe('DRA settings', () => {
  it('defaults to the device plugin API; --kubelet-api or PVDP_KUBELET_API picks DRA with the kubelet paths', async () => {
    expect((await settingsOf([])).kubeletApi).toBe('device-plugin');
    const dra = await settingsOf([], { PVDP_KUBELET_API: 'dra' });
    expect(dra.kubeletApi).toBe('dra');
    expect(dra.dra).toEqual({
      driverName: 'power-vfio.ibm.com',
      registryDir: '/var/lib/kubelet/plugins_registry',
      driverDir: '/var/lib/kubelet/plugins/power-vfio.ibm.com',
      cdiSpecDir: '/var/run/cdi',
    });
    const named = await settingsOf(['--kubelet-api', 'dra', '--driver-name', 'vfio.example.com', '--plugins-dir', '/p', '--plugins-registry-dir', '/r/', '--cdi-spec-dir', '/c']);
    expect(named.dra).toEqual({ driverName: 'vfio.example.com', registryDir: '/r', driverDir: '/p/vfio.example.com', cdiSpecDir: '/c' });
  });

  it('refuses an unknown front end, a driver name that is not a DNS subdomain or CDI vendor, and socket paths over the limit', async () => {
    await expect(settingsOf(['--kubelet-api', 'grpc'])).rejects.toThrow('--kubelet-api: "grpc" is not one of device-plugin, dra');
    await expect(settingsOf(['--driver-name', 'Power_VFIO'])).rejects.toThrow(/Invalid --driver-name: "Power_VFIO" is not a DNS subdomain/);
    await expect(settingsOf(['--driver-name', '3m.example.com'])).rejects.toThrow(/must start with a letter/);
    await expect(settingsOf(['--kubelet-api', 'dra', '--plugins-dir', `/tmp/${'x'.repeat(90)}`])).rejects.toThrow(/Invalid --plugins-dir: the socket path .* bytes; unix socket paths are limited to 107/);
  });

  it('reads kubeletApi and dra from the file, with the path of a bad field', () => {
    const ok = parseConfigText('resources: [{name: a.com/x, selectors: {vendors: ["1234"]}}]\nkubeletApi: dra\ndra: {driverName: vfio.example.com}\n');
    expect(ok.kubeletApi).toBe('dra');
    expect(() => parseConfigText('resources: [{name: a.com/x, selectors: {vendors: ["1234"]}}]\ndra: {driverName: "NO"}\n')).toThrow(/dra\.driverName: "NO" is not a DNS subdomain/);
    expect(() => parseConfigText('resources: [{name: a.com/x, selectors: {vendors: ["1234"]}}]\ndra: {socket: x}\n')).toThrow(/dra\.socket: unknown field/);
  });
});

const verifyBase = { mode: 'verify' as const };
const handoffBase = parseConfigText(`
resources:
  - name: a.com/x
    selectors: { vendors: ["1234"] }
    preparation: { mode: handoff, handoff: { memorySize: 64Mi, claimTimeoutSeconds: 60 } }
`).resources[0]!.preparation;

function entry(index: number, source: 'FromClass' | 'FromClaim', fields: Record<string, unknown>, requests: string[] = []): OpaqueConfigEntry {
  return { index, source, requests, parameters: preparationParameters(fields) };
}

describe('claim configuration', () => {
  it('takes the resource as base, the class over it and the claim over both, field by field and per request', () => {
    const entries = [
      entry(1, 'FromClaim', { handoff: { memorySize: '2Mi' } }, ['fast']),
      entry(0, 'FromClass', { mode: 'handoff', handoff: { memorySize: '1Mi', hugePageShift: '16Mi', iommu: 'v2' } }),
    ];
    expect(effectivePreparation(verifyBase, entries, 'fast')).toEqual({
      mode: 'handoff',
      handoff: { memorySize: 2 << 20, hugePageShift: 24, iommu: 'v2', claimTimeoutSeconds: 120 },
    });
    expect(effectivePreparation(verifyBase, entries, 'slow')).toEqual({
      mode: 'handoff',
      handoff: { memorySize: 1 << 20, hugePageShift: 24, iommu: 'v2', claimTimeoutSeconds: 120 },
    });
    // A subrequest of a prioritized list takes its request's configuration.
    expect(effectivePreparation(verifyBase, entries, 'fast/a100').handoff?.memorySize).toBe(2 << 20);
    // The node's handoff options carry over unless overridden; switching mode drops them.
    expect(effectivePreparation(handoffBase, [], 'r')).toEqual(handoffBase);
    expect(effectivePreparation(handoffBase, [entry(0, 'FromClaim', { handoff: { claimTimeoutSeconds: 5 } })], 'r').handoff).toEqual({ memorySize: 64 << 20, claimTimeoutSeconds: 5, iommu: 'auto' });
    expect(effectivePreparation(handoffBase, [entry(0, 'FromClaim', { mode: 'none' })], 'r')).toEqual({ mode: 'none' });
  });

  it('names every bad field by its path in the claim', () => {
    const bad = (parameters: unknown, index = 3) => {
      try {
        effectivePreparation(verifyBase, [{ index, source: 'FromClaim', requests: [], parameters }], 'r');
      } catch (err) {
        expect(err).toBeInstanceOf(ClaimConfigError);
        return (err as ClaimConfigError).problems;
      }
      throw new Error('accepted');
    };
    const base = 'status.allocation.devices.config[3].opaque.parameters';
    expect(bad(preparationParameters({ mode: 'fast' }))).toEqual([`${base}.mode: Invalid option: expected one of "none"|"verify"|"handoff"`]);
    expect(bad(preparationParameters({ handoff: { memorySize: -1, window: 1 } }))).toEqual(
      expect.arrayContaining([`${base}.handoff.window: unknown field`, expect.stringMatching(/handoff\.memorySize: must be a positive size/)]),
    );
    expect(bad({ kind: 'VfioPreparation' })[0]).toBe(`${base}.apiVersion: must be power-vfio.ibm.com/v1alpha1`);
    expect(bad(null)[0]).toMatch(new RegExp(`^${base.replace(/[.[\]]/g, '\\$&')}`));
    expect(bad(preparationParameters({ handoff: { memorySize: '1Mi' } }))).toEqual([`${base}.handoff: is only used with mode: handoff (the request "r" ends up in mode verify)`]);
  });

  it('reads our devices and entries from a claim status; other drivers\' are not ours', () => {
    const claim = allocatedClaim({
      name: 'c',
      driver: 'vfio.example.com',
      pool: 'node-a',
      devices: [
        { request: 'a', device: 'pci-0000-01-00-0' },
        { request: 'b', device: 'gpu-0', driver: 'gpu.example.com' },
      ],
      config: [
        { source: 'FromClass', parameters: { x: 1 } },
        { source: 'FromClaim', driver: 'gpu.example.com', parameters: {} },
      ],
    });
    const ref = claimRefOf(claim);
    expect(claimAllocation(claim, ref, 'vfio.example.com')).toEqual({
      devices: [{ request: 'a', pool: 'node-a', device: 'pci-0000-01-00-0' }],
      config: [{ index: 0, source: 'FromClass', requests: [], parameters: { x: 1 } }],
    });
    expect(() => claimAllocation(claim, ref, 'nobody.example.com')).toThrow(ClaimRefusal);
    expect(() => claimAllocation('not an object', ref, 'x')).toThrow(/returned no object/);
  });
});
