import { describe, it, expect } from 'vitest';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfigText, loadConfigFile } from '../../src/config/load.js';
import { resourceNameProblem } from '../../src/config/schema.js';
import { ConfigError, UsageError } from '../../src/errors.js';
import { parseCommandLine, resolveSettings } from '../../src/config/settings.js';
import { selectGroups, groupMatches } from '../../src/config/selection.js';
import { fn, group, topologyOf } from '../helpers/groups.js';
import { simulatedNodeConfig } from '../../src/simulate/node-config.js';

function problemsOf(text: string): string[] {
  try {
    parseConfigText(text);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected the configuration to be refused');
}

describe('configuration file', () => {
  it('accepts a valid file and fills defaults', () => {
    const config = parseConfigText(`
resources:
  - name: ibm.com/nvme
    selectors: { classes: ["0108"], vendors: ["0x144D"], domains: ["0030", "31"] }
`);
    expect(config.resources[0]!.preparation.mode).toBe('verify');
    expect(config.resources[0]!.selectors.vendors).toEqual(['144d']);
    expect(config.resources[0]!.selectors.domains).toEqual([0x30, 0x31]);
    expect(config.resources[0]!.selectors.match).toBe('any');
  });

  it('names the path of every bad field', () => {
    const problems = problemsOf(`
resources:
  - name: nvme
    selectors: { vendors: ["14"], numaNodes: ["zero"] }
    preparation: { mode: fast }
  - name: ibm.com/gpu
    selectors: { clases: ["03"] }
`);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^resources\[0\]\.name: must be fully qualified/),
        expect.stringMatching(/^resources\[0\]\.selectors\.vendors\[0\]: must be a 4-digit hex vendor id/),
        expect.stringMatching(/^resources\[0\]\.selectors\.numaNodes\[0\]: /),
        expect.stringMatching(/^resources\[0\]\.preparation\.mode: /),
        'resources[1].selectors.clases: unknown field',
      ]),
    );
  });

  it('refuses duplicate resource names, reserved domains, empty lists and YAML syntax errors', () => {
    expect(problemsOf('resources:\n  - {name: a.com/x, selectors: {all: true}}\n  - {name: a.com/x, selectors: {all: true}}\n')).toEqual([
      'resources[1].name: duplicates resources[0].name "a.com/x"',
    ]);
    expect(problemsOf('resources: [{name: kubernetes.io/x, selectors: {all: true}}]')[0]).toMatch(/reserved/);
    expect(problemsOf('resources: [{name: a.com/x, selectors: {vendors: []}}]')[0]).toMatch(
      /^resources\[0\]\.selectors\.vendors: must list at least one value/,
    );
    expect(problemsOf('resources: []')[0]).toMatch(/^resources: must list at least one resource/);
    expect(problemsOf('resources: [ {name: a.com/x')[0]).toMatch(/^line \d+, column \d+/);
    expect(problemsOf('resources:\n  - name: a.com/x\n    name: a.com/y\n    selectors: {all: true}\n')[0]).toMatch(/line 3/);
    expect(problemsOf('')[0]).toMatch(/^\(top level\): configuration is empty: it must contain a "resources:" list/);
  });

  it('refuses a bare number as a PCI domain (YAML reads 0030 as 30), an alias bomb, and CDI-unsafe names with CDI on', () => {
    expect(problemsOf('resources: [{name: a.com/x, selectors: {domains: [0030]}}]')[0]).toMatch(
      /^resources\[0\]\.selectors\.domains\[0\]: must be a quoted hex PCI domain/,
    );
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]'];
    for (let i = 0; i < 12; i++) bomb.push(`${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [*${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}, *${String.fromCharCode(97 + i)}]`);
    bomb.push('resources: [{name: a.com/x, selectors: {all: true}}]');
    expect(problemsOf(bomb.join('\n'))[0]).toMatch(/^YAML: /);
    expect(problemsOf('cdi: {enabled: true}\nresources: [{name: a.com/nvme.v2, selectors: {all: true}}, {name: 9a.com/x, selectors: {all: true}}]')).toEqual([
      expect.stringMatching(/^resources\[0\]\.name: with cdi enabled the name "nvme\.v2"/),
      expect.stringMatching(/^resources\[1\]\.name: with cdi enabled the domain "9a\.com"/),
    ]);
    expect(parseConfigText('resources: [{name: a.com/nvme.v2, selectors: {all: true}}]').resources).toHaveLength(1);
  });

  it('validates resource names as the kubelet does', () => {
    expect(resourceNameProblem('ibm.com/nvme')).toBeNull();
    expect(resourceNameProblem('example.kubernetes.io/x')).toMatch(/reserved/);
    expect(resourceNameProblem('IBM.com/x')).toMatch(/DNS subdomain/);
    expect(resourceNameProblem('ibm.com/a/b')).toMatch(/fully qualified/);
    expect(resourceNameProblem('ibm.com/-x')).toMatch(/letters, digits/);
  });

  it('reports an unreadable file with its path', async () => {
    await expect(loadConfigFile('/nonexistent/pvdp.yaml')).rejects.toThrow('Configuration file /nonexistent/pvdp.yaml cannot be opened (ENOENT): check the path given with --config');
  });

  it('the simulated node configuration is valid', () => {
    expect(simulatedNodeConfig().resources.length).toBeGreaterThan(2);
  });
});

describe('flags and environment', () => {
  it('flags win over environment, environment over the file', async () => {
    const dir = await mkdtemp('/tmp/pvdp-');
    try {
      const file = join(dir, 'c.yaml');
      await writeFile(file, 'pollIntervalSeconds: 3\nsysfsRoot: /from-file\nresources: [{name: a.com/x, selectors: {all: true}}]\n');
      const cli = parseCommandLine(['--config', file, '--dev-root', '/from-flag'], {
        PVDP_DEV_ROOT: '/from-env',
        PVDP_SYSFS_ROOT: '/sys-env',
        PVDP_SIMULATE: 'false',
      });
      const settings = await resolveSettings(cli.values);
      expect(settings.devRoot).toBe('/from-flag');
      expect(settings.sysfsRoot).toBe('/sys-env');
      expect(settings.pollIntervalMs).toBe(3000);
      expect(settings.simulate).toBe(false);
      expect(settings.devicePluginDir).toBe('/var/lib/kubelet/device-plugins');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a device-plugins directory whose socket paths would pass the 108-byte limit', async () => {
    const long = `/tmp/${'d'.repeat(110)}`;
    await expect(resolveSettings(parseCommandLine(['--device-plugin-dir', long], {}).values, simulatedNodeConfig)).rejects.toThrow(
      /unix socket paths are limited to 107/,
    );
    const ok = await resolveSettings(parseCommandLine(['--device-plugin-dir', '/tmp//dp/./'], {}).values, simulatedNodeConfig);
    expect(ok.devicePluginDir).toBe('/tmp/dp');
  });

  it('refuses a handoff directory whose sockets would pass the limit, when a resource uses handoff', async () => {
    const long = `/var/run/${'h'.repeat(70)}`;
    await expect(resolveSettings(parseCommandLine(['--handoff-dir', long], {}).values, simulatedNodeConfig)).rejects.toThrow(
      /use a directory of at most 66 bytes/,
    );
    const s = await resolveSettings(parseCommandLine(['--handoff-container-dir', '/h'], {}).values, simulatedNodeConfig);
    expect(s.handoffHostDir).toBe('/var/run/power-vfio-device-plugin');
    expect(s.handoffContainerDir).toBe('/h');
  });

  it('checks the socket path the pod connects to, an absolute container directory and a sane poll interval', async () => {
    const { writeFile: write, mkdtemp: mk, rm: remove } = await import('node:fs/promises');
    const d = await mk('/tmp/pvdp-');
    try {
      const file = join(d, 'c.yaml');
      await write(file, `resources: [{name: storage.accelerators.power.example.com/nvme-passthrough-gen4-x16-premium, selectors: {all: true}, preparation: {mode: handoff}}]\n`);
      await expect(resolveSettings(parseCommandLine(['--config', file], {}).values)).rejects.toThrow(/in the container, 1\d\d bytes/);
      await expect(resolveSettings(parseCommandLine(['--handoff-container-dir', 'relative/dir'], {}).values, simulatedNodeConfig)).rejects.toThrow(
        /must be an absolute path/,
      );
      await expect(resolveSettings(parseCommandLine(['--poll-interval', '0.0004'], {}).values, simulatedNodeConfig)).rejects.toThrow(/\[0\.1, 3600\]/);
    } finally {
      await remove(d, { recursive: true, force: true });
    }
  });

  it('refuses unknown flags, bad values and a missing configuration', async () => {
    expect(() => parseCommandLine(['--frobnicate'], {})).toThrow(UsageError);
    expect(() => parseCommandLine(['launch'], {})).toThrow(/Unknown command "launch"/);
    expect(() => parseCommandLine([], { PVDP_SIMULATE: 'maybe' })).toThrow(/PVDP_SIMULATE=maybe/);
    await expect(resolveSettings(parseCommandLine([], {}).values)).rejects.toThrow(/--config/);
    await expect(
      resolveSettings(parseCommandLine(['--poll-interval=-1'], {}).values, simulatedNodeConfig),
    ).rejects.toThrow(/--poll-interval/);
  });
});

describe('selection', () => {
  const gpu = group(1, [fn('0030:01:00.0', { vendor: '10de', device: '1db1', classCode: '030200' }), fn('0030:01:00.1', { vendor: '10de', device: '10f0', classCode: '040300' })]);
  const nvme = group(2, [fn('0031:01:00.0', { numaNode: 8 })]);
  const host = group(3, [fn('0032:01:00.0', { driver: 'nvme' })], { vfioCandidate: false, usable: false, devNode: false, problems: ['x'] });
  const bridgeOnly = group(4, [fn('0033:00:00.0', { classCode: '060400', isBridge: true, vendor: '10de' })]);

  it('matches any endpoint by default and every endpoint with match: all', () => {
    const base = { match: 'any' as const, vendors: ['10de'], classes: ['0302'] };
    expect(groupMatches(gpu, base)).toBe(true);
    expect(groupMatches(gpu, { ...base, match: 'all' })).toBe(false);
    expect(groupMatches(bridgeOnly, { match: 'any', vendors: ['10de'] })).toBe(false);
  });

  it('matches addresses with globs and short forms, domains, NUMA nodes and drivers', () => {
    expect(groupMatches(nvme, { match: 'any', addresses: ['31:1:0.0'] })).toBe(true);
    expect(groupMatches(nvme, { match: 'any', addresses: ['0031:*:00.?'] })).toBe(true);
    expect(groupMatches(nvme, { match: 'any', addresses: ['0030:*'.concat(':00.0')] })).toBe(false);
    expect(groupMatches(nvme, { match: 'any', domains: [0x31], numaNodes: [8], drivers: ['vfio-pci'] })).toBe(true);
    expect(groupMatches(nvme, { match: 'any', numaNodes: [0] })).toBe(false);
  });

  it('skips host-owned groups and reports a group two resources select', () => {
    const resources = parseConfigText(`
resources:
  - { name: a.com/gpu, selectors: { vendors: ["10de"] } }
  - { name: a.com/any, selectors: { classes: ["03", "01"] } }
  - { name: a.com/host, selectors: { drivers: ["nvme"] } }
`).resources;
    const selection = selectGroups(topologyOf([gpu, nvme, host]), resources);
    expect(selection.conflicts).toEqual([{ group: 1, resources: ['a.com/gpu', 'a.com/any'] }]);
    expect(selection.byResource.get('a.com/gpu')).toEqual([]);
    expect(selection.byResource.get('a.com/any')!.map((g) => g.id)).toEqual([2]);
    expect(selection.byResource.get('a.com/host')).toEqual([]);
  });
});
