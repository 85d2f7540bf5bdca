// Doubt is not health: a group whose members cannot all be checked, or whose
// PE state exists but cannot be read, is never offered as Healthy. The EEH
// spellings real kernels print stay healthy, and a node without EEH is fine.
import { describe, it, expect, afterEach } from 'vitest';
import { mkdir, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { discoverGroup, discoverTopology } from '../../src/topology/discover.js';
import { decodeEehStateRead } from '../../src/topology/parse.js';
import { groupHealth } from '../../src/health/group-health.js';
import { HealthTracker } from '../../src/health/health-tracker.js';
import { createLogger } from '../../src/log.js';
import { setEehState } from '../../src/simulate/sysfs-tree.js';
import type { IommuGroup } from '../../src/topology/types.js';
import { buildTree, EEH_HEALTHY_LPAR, nvme, pnvGroup, type TestTree, type TmpDir } from '../helpers/fixtures.js';

const trees: TmpDir[] = [];
afterEach(async () => {
  await Promise.all(trees.splice(0).map((t) => t.cleanup()));
});

async function oneGroupTree(peState?: string): Promise<TestTree> {
  const spec = pnvGroup(0, 0x7, [nvme('0030:01:00.0')]);
  const tree = await buildTree({ groups: [peState === undefined ? { ...spec, eeh: undefined } : { ...spec, eeh: { peState } }] });
  trees.push(tree);
  return tree;
}

async function scanned(tree: TestTree): Promise<IommuGroup> {
  const { group } = await discoverGroup(tree.roots, 0);
  if (group === null) throw new Error('Group 0 missing');
  return group;
}

const groupLink = (tree: TestTree, address: string): string => join(tree.dir, 'sys/kernel/iommu_groups/0/devices', address);
const busLink = (tree: TestTree, address: string): string => join(tree.dir, 'sys/bus/pci/devices', address);

describe('members that cannot be checked', () => {
  it('a group link that cannot be resolved makes the group Unhealthy, naming the link, even when the bus link reads fine', async () => {
    const tree = await oneGroupTree('0x00000078 0x00000800');
    await rm(groupLink(tree, '0030:01:00.0'));
    await symlink('../../../../devices/pci0030:01/gone/0030:01:00.0', groupLink(tree, '0030:01:00.0'));
    const g = await scanned(tree);
    const health = groupHealth(g);
    expect(g.usable).toBe(false);
    expect(health.healthy).toBe(false);
    expect(health.reason).toContain(groupLink(tree, '0030:01:00.0'));
    expect(health.reason).toMatch(/cannot be resolved \(ENOENT\)/);
  });

  it('a group link that loops is the same doubt', async () => {
    const tree = await oneGroupTree();
    await rm(groupLink(tree, '0030:01:00.0'));
    await symlink('0030:01:00.0', groupLink(tree, '0030:01:00.0'));
    const health = groupHealth(await scanned(tree));
    expect(health).toEqual({ healthy: false, reason: expect.stringMatching(/cannot be resolved \(ELOOP\)/) });
  });

  it('members that cannot be listed are named, not reported as no functions', async () => {
    const tree = await oneGroupTree();
    const devices = join(tree.dir, 'sys/kernel/iommu_groups/0/devices');
    await rm(devices, { recursive: true });
    await writeFile(devices, 'not a directory\n');
    const health = groupHealth(await scanned(tree));
    expect(health.healthy).toBe(false);
    expect(health.reason).toContain(`${devices}: ENOTDIR`);
  });

  it('with the bus link gone, EEH is read through the group link: a frozen PE is not missed', async () => {
    const tree = await oneGroupTree('0x00000078 0x00000800');
    await setEehState(tree.roots, '0030:01:00.0', '0x00000000 0x00000801');
    await rm(busLink(tree, '0030:01:00.0'));
    const g = await scanned(tree);
    expect(g.eeh).toMatchObject({ frozen: true, softwareState: 0x801 });
    expect(groupHealth(g).healthy).toBe(false);
  });
});

describe('EEH present but unknown', () => {
  it.each([
    ['garbage', 'banana', /reads "banana", not one or two hex words/],
    ['an empty file', '', /reads "", not one or two hex words/],
    ['three words', '0x78 0x800 0x1', /not one or two hex words/],
  ])('%s in eeh_pe_state is Unhealthy with the path in the reason', async (_what, text, why) => {
    const tree = await oneGroupTree(EEH_HEALTHY_LPAR);
    const state = join(await realpath(busLink(tree, '0030:01:00.0')), 'eeh_pe_state');
    await writeFile(state, text);
    const g = await scanned(tree);
    expect(g.eeh?.stateUnknown).toMatch(why);
    const health = groupHealth(g);
    expect(health.healthy).toBe(false);
    expect(health.reason).toContain('the EEH state of the PE is unknown');
    expect(health.reason).toContain(join(groupLink(tree, '0030:01:00.0'), 'eeh_pe_state'));
  });

  it('a state file that cannot be read (not ENOENT, not ENODEV) is Unhealthy', async () => {
    const tree = await oneGroupTree(EEH_HEALTHY_LPAR);
    const state = join(await realpath(busLink(tree, '0030:01:00.0')), 'eeh_pe_state');
    await rm(state);
    await mkdir(state);
    const health = groupHealth(await scanned(tree));
    expect(health).toEqual({ healthy: false, reason: expect.stringMatching(/eeh_pe_state cannot be read \(EISDIR\)/) });
  });

  it('ENOENT and ENODEV are EEH switched off; other errors and bad text are unknown', () => {
    expect(decodeEehStateRead('/x', { ok: false, code: 'ENOENT' })).toEqual({ kind: 'absent' });
    expect(decodeEehStateRead('/x', { ok: false, code: 'ENODEV' })).toEqual({ kind: 'absent' });
    expect(decodeEehStateRead('/x', { ok: false, code: 'EIO' })).toEqual({ kind: 'unknown', reason: '/x cannot be read (EIO)' });
    expect(decodeEehStateRead('/x', { ok: true, text: 'zz\n' })).toMatchObject({ kind: 'unknown' });
  });
});

describe('the tolerant rules still hold', () => {
  it.each([
    ['current bare metal', '0x00000078 0x00000800'],
    ['an LPAR kernel before 2025 (0x18)', '0x00000018 0x00000a00'],
    ['an older kernel without 0x', '00000078 00000800'],
    ['a lone hardware word', '0x78'],
  ])('%s is Healthy', async (_what, text) => {
    const g = await scanned(await oneGroupTree(text));
    expect(g.eeh?.stateUnknown).toBeUndefined();
    expect(groupHealth(g)).toEqual({ healthy: true });
  });

  it('no EEH files at all (pseries under TCG) is Healthy with no EEH', async () => {
    const g = await scanned(await oneGroupTree());
    expect(g.eeh).toBeNull();
    expect(groupHealth(g)).toEqual({ healthy: true });
  });

  it('a missing state file next to the other EEH files is EEH without a state, not doubt', async () => {
    const tree = await oneGroupTree(EEH_HEALTHY_LPAR);
    await rm(join(await realpath(busLink(tree, '0030:01:00.0')), 'eeh_pe_state'));
    const g = await scanned(tree);
    expect(g.eeh).toMatchObject({ hardwareState: null, softwareState: null, frozen: false });
    expect(g.eeh?.stateUnknown).toBeUndefined();
    expect(groupHealth(g)).toEqual({ healthy: true });
  });
});

describe('the reason is logged once per change', () => {
  it('logs Unhealthy with its reason once, again when the reason changes, and Healthy again once', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const logger = createLogger({
      level: 'debug',
      destination: new Writable({ write: (chunk, _e, cb) => (lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>), cb()) }),
    });
    const tracker = new HealthTracker({ logger });
    const tree = await oneGroupTree(EEH_HEALTHY_LPAR);
    const state = join(await realpath(busLink(tree, '0030:01:00.0')), 'eeh_pe_state');
    const evaluate = async () => tracker.evaluate((await discoverTopology(tree.roots)).groups.get(0)!);

    expect((await evaluate()).healthy).toBe(true);
    await writeFile(state, 'banana\n');
    for (let i = 0; i < 3; i++) expect((await evaluate()).healthy).toBe(false);
    await writeFile(state, 'cherry\n');
    await evaluate();
    await writeFile(state, `${EEH_HEALTHY_LPAR}\n`);
    await evaluate();
    await evaluate();

    const mine = lines.filter((l) => l['group'] === 0).map((l) => [l['level'], l['msg'], l['reason']]);
    expect(mine).toEqual([
      ['warn', 'IOMMU group is Unhealthy', expect.stringContaining('"banana"')],
      ['warn', 'IOMMU group is Unhealthy', expect.stringContaining('"cherry"')],
      ['info', 'IOMMU group is Healthy again', undefined],
    ]);
  });
});
