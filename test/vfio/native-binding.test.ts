// The native addon on this machine (x86, no VFIO devices): constants from
// <linux/vfio.h>, typed errors, memory, fd passing, and the device-free part
// of the contract suite. Without a built addon these tests skip with the reason.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ContractSkip, contractCases, skipReason, type ContractContext } from '../../src/vfio/contract-cases.js';
import { VfioError } from '../../src/vfio/errors.js';
import { NativeBinding, loadNativeAddon } from '../../src/vfio/native-binding.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const built = existsSync(join(root, 'build', 'Release', 'vfio_native.node')) || existsSync(join(root, 'prebuilds'));
if (!built) console.warn('SKIP native binding tests: the addon is not built (run `npx node-gyp rebuild` or `npm install`)');

describe.skipIf(!built)('native VFIO binding', () => {
  const binding = built ? new NativeBinding(loadNativeAddon()) : (undefined as unknown as NativeBinding);

  it('exports ioctl numbers from <linux/vfio.h> matching the facts for this architecture', () => {
    const base = process.arch === 'ppc64' ? 0x20003b64 : 0x3b64;
    const n: Record<string, number> = {
      VFIO_GET_API_VERSION: 0, VFIO_CHECK_EXTENSION: 1, VFIO_SET_IOMMU: 2, VFIO_GROUP_GET_STATUS: 3,
      VFIO_GROUP_SET_CONTAINER: 4, VFIO_GROUP_UNSET_CONTAINER: 5, VFIO_GROUP_GET_DEVICE_FD: 6,
      VFIO_DEVICE_GET_REGION_INFO: 8, VFIO_IOMMU_SPAPR_TCE_GET_INFO: 12, VFIO_IOMMU_MAP_DMA: 13,
      VFIO_IOMMU_UNMAP_DMA: 14, VFIO_IOMMU_ENABLE: 15, VFIO_IOMMU_DISABLE: 16,
      VFIO_IOMMU_SPAPR_REGISTER_MEMORY: 17, VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY: 18,
      VFIO_IOMMU_SPAPR_TCE_CREATE: 19, VFIO_IOMMU_SPAPR_TCE_REMOVE: 20, VFIO_EEH_PE_OP: 21,
    };
    for (const [name, offset] of Object.entries(n)) expect(binding.ioctlNumbers[name], name).toBe(base + offset);
    expect(binding.ioctlNumbers['VFIO_GET_API_VERSION']).toBe(process.arch === 'ppc64' ? 0x20003b64 : 0x3b64);
    expect(binding.constants.spaprTceIommu).toBe(2);
    expect(binding.constants.spaprTceV2Iommu).toBe(7);
    expect(binding.constants.eehExtension).toBe(5);
    expect(binding.constants.apiVersion).toBe(0);
    expect(binding.constants.eehPeOp.getState).toBe(4);
    expect(binding.pageSize).toBeGreaterThanOrEqual(4096);
  });

  it('opening a missing node is ENOENT shaped like a Node system error', async () => {
    const err = await binding.openGroup('/tmp/pvdp-no-such-root', 7).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VfioError);
    const e = err as VfioError;
    expect(e.code).toBe('ENOENT');
    expect(e.errno).toBe(-2);
    expect(e.syscall).toBe('open');
    expect(e.path).toBe('/tmp/pvdp-no-such-root/dev/vfio/7');
    expect(e.message).toMatch(/^ENOENT: no such file or directory, open '\/tmp\/pvdp-no-such-root\/dev\/vfio\/7'$/);
  });

  it('an ioctl error names the ioctl and the path of the fd', async () => {
    const fd = await binding.memfdCreate('ioctl-target');
    try {
      const e = (await binding.spaprTceGetInfo(fd).catch((x: unknown) => x)) as VfioError;
      expect(e).toBeInstanceOf(VfioError);
      expect(e.code).toBe('ENOTTY');
      expect(e.ioctl).toBe('VFIO_IOMMU_SPAPR_TCE_GET_INFO');
      expect(e.path).toBe('/memfd:ioctl-target');
      expect(e.fd).toBe(fd);
    } finally {
      await binding.close(fd);
    }
  });

  it('reports RLIMIT_MEMLOCK and VmLck consistently with the process', async () => {
    const limit = binding.getMemlockLimit();
    expect(limit.soft === null || limit.soft >= 0n).toBe(true);
    expect(await binding.lockedMemoryBytes()).toBe(0n);
  });

  it('hostile addon calls throw argument errors instead of crashing', async () => {
    const addon = loadNativeAddon() as unknown as Record<string, (...a: unknown[]) => unknown>;
    expect(() => addon['readMemory']!(0x1000n, 8)).toThrow(RangeError);
    expect(() => addon['writeMemory']!(0n, Buffer.alloc(1))).toThrow(RangeError);
    expect(() => addon['mapDma']!(3, 32, 3, 1, 2n, 3n)).toThrow(TypeError);
    expect(() => addon['mapDma']!(3, 32, 3, -1n, 2n, 3n)).toThrow(RangeError);
    expect(() => addon['ioctlValue']!(3, 'VFIO_IOMMU_MAP_DMA', 0)).toThrow(TypeError);
    expect(() => addon['open']!('/dev/null\0x')).toThrow(TypeError);
    expect(() => addon['sendFds']!(3, Buffer.alloc(0), [])).toThrow(RangeError);
    await expect(addon['munmap']!(0x7000n, 4096n) as Promise<unknown>).rejects.toMatchObject({ errno: 22 });
  });

  describe('contract cases that need no device', () => {
    const ctx: ContractContext = {
      binding,
      devRoot: '/',
      simulated: false,
      platform: 'pseries',
      groups: [],
      inOtherProcess: async () => {
        throw new ContractSkip('no other process here');
      },
      inChildProcess: async () => {
        throw new ContractSkip('no child process here');
      },
      pciDevice: async () => {
        throw new ContractSkip('no device here');
      },
      hugePageShifts: async () => [],
      log: () => undefined,
    };
    const runnable = contractCases.filter((c) => skipReason(c, ctx) === null);
    it('has device-free cases to run', () => expect(runnable.length).toBeGreaterThanOrEqual(6));
    for (const c of runnable) {
      it(c.name, async () => {
        await c.run(ctx);
        expect(await binding.lockedMemoryBytes()).toBe(0n);
      });
    }
  });
});
