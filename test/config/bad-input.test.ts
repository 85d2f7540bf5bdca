// Input an operator gets wrong, or a hostile one feeds in: every case is a
// clear refusal that names the flag, variable or file and says what to do.
import { describe, it, expect, afterEach } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile, truncate } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { loadConfigFile, parseConfigText, MAX_CONFIG_BYTES } from '../../src/config/load.js';
import { ConfigError, UsageError } from '../../src/errors.js';
import { parseCommandLine, resolveSettings } from '../../src/config/settings.js';
import { simulatedNodeConfig } from '../../src/simulate/node-config.js';
import { SelectionNotices } from '../../src/config/selection-notices.js';
import { createLogger } from '../../src/log.js';
import { fn, group, topologyOf } from '../helpers/groups.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});
async function scratch(): Promise<string> {
  const d = await mkdtemp('/tmp/pvdp-');
  dirs.push(d);
  return d;
}

function refusal(text: string): ConfigError {
  try {
    parseConfigText(text, 'configuration file c.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected the configuration to be refused');
}

describe('numbers in flags and the environment', () => {
  const resolve = (argv: string[], env: NodeJS.ProcessEnv = {}) => {
    const cli = parseCommandLine(argv, env);
    return resolveSettings(cli.values, simulatedNodeConfig, { sources: cli.sources });
  };

  it('refuses blank, hex, exponent and signed metrics ports, naming the flag', async () => {
    for (const bad of [' ', '', '0x10', '1e3', '+80', '80.0', '65536', '-1']) {
      await expect(resolve([`--metrics-port=${bad}`]), bad).rejects.toThrow(
        `--metrics-port: "${bad}" is not a port number: write a decimal port in [0, 65535] (0 picks a free one) or "off"`,
      );
    }
    expect((await resolve(['--metrics-port', '0'])).metricsPort).toBe(0);
    expect((await resolve(['--metrics-port', 'off'])).metricsPort).toBeNull();
    expect((await resolve(['--metrics-port', '9101'])).metricsPort).toBe(9101);
  });

  it('takes the poll interval in decimal seconds only', async () => {
    for (const bad of ['0x10', '1e1', ' ', '10s', '.5', '-1']) {
      await expect(resolve([`--poll-interval=${bad}`]), bad).rejects.toThrow(
        `--poll-interval: "${bad}" is not a number of seconds in [0.1, 3600]: write decimal seconds, for example 10 or 2.5`,
      );
    }
    expect((await resolve(['--poll-interval', '2.5'])).pollIntervalMs).toBe(2500);
  });

  it('names the environment variable when the bad value came from it, and the flag when a flag overrides it', async () => {
    await expect(resolve([], { PVDP_METRICS_PORT: ' ' })).rejects.toThrow(/^PVDP_METRICS_PORT: " " is not a port number/);
    await expect(resolve([], { PVDP_POLL_INTERVAL: '0x10' })).rejects.toThrow(/^PVDP_POLL_INTERVAL: "0x10"/);
    await expect(resolve([], { PVDP_LOG_LEVEL: 'loud' })).rejects.toThrow(/^PVDP_LOG_LEVEL: "loud" is not one of/);
    await expect(resolve([], { PVDP_HANDOFF_CONTAINER_DIR: 'rel' })).rejects.toThrow(/^PVDP_HANDOFF_CONTAINER_DIR: "rel" must be an absolute path/);
    await expect(resolve([], { PVDP_DEVICE_PLUGIN_DIR: `/tmp/${'d'.repeat(110)}` })).rejects.toThrow(/^Invalid PVDP_DEVICE_PLUGIN_DIR: /);
    await expect(resolve(['--metrics-port', 'x'], { PVDP_METRICS_PORT: '1' })).rejects.toThrow(/^--metrics-port: "x"/);
    const d = await scratch();
    await expect(resolve([], { PVDP_CONFIG: join(d, 'missing.yaml') })).rejects.toThrow(/check the path given with PVDP_CONFIG/);
  });
});

describe('the configuration file', () => {
  it('refuses a FIFO at once instead of waiting for a writer', async () => {
    const d = await scratch();
    const fifo = join(d, 'c.yaml');
    execFileSync('mkfifo', [fifo]);
    await expect(loadConfigFile(fifo)).rejects.toThrow(`Configuration file ${fifo} is a FIFO, not a regular file: point --config at a YAML file`);
  });

  it('refuses /dev/zero and a directory', async () => {
    await expect(loadConfigFile('/dev/zero', { setting: 'PVDP_CONFIG' })).rejects.toThrow(
      'Configuration file /dev/zero is a character device, not a regular file: point PVDP_CONFIG at a YAML file',
    );
    const d = await scratch();
    await expect(loadConfigFile(d)).rejects.toThrow(/is a directory, not a regular file/);
  });

  it('refuses a file over the size limit without reading it', async () => {
    const d = await scratch();
    const big = join(d, 'big.yaml');
    await writeFile(big, '');
    await truncate(big, 50 * 1024 * 1024);
    await expect(loadConfigFile(big)).rejects.toThrow(
      `Configuration file ${big} is 50 MiB; the limit is 1 MiB: a configuration lists resources and takes a few KiB: check that --config names the right file`,
    );
    const justOver = join(d, 'over.yaml');
    await writeFile(justOver, `# ${'x'.repeat(MAX_CONFIG_BYTES)}\n`);
    await expect(loadConfigFile(justOver)).rejects.toThrow(/the limit is 1 MiB/);
  });

  it('says an empty or comment-only file is empty and what it must contain', async () => {
    const d = await scratch();
    for (const [name, text] of [['empty.yaml', ''], ['blank.yaml', '\n  \n'], ['comments.yaml', '# nothing here\n']] as const) {
      const file = join(d, name);
      await writeFile(file, text);
      await expect(loadConfigFile(file)).rejects.toThrow(
        `Configuration file ${file} is empty: it must contain a "resources:" list naming each resource and its selectors`,
      );
    }
  });

  it('says a missing resources list is missing, in words', () => {
    expect(refusal('logLevel: info\n').problems).toEqual([
      'resources: is missing: list at least one resource with its name and selectors, for example "resources: [{name: ibm.com/nvme, selectors: {classes: [\'010802\']}}]"',
    ]);
    expect(refusal('- a\n- b\n').problems[0]).toBe('(top level): must be a mapping with a "resources:" list, not a list');
    expect(refusal('resources: 3\n').problems).toEqual(['resources: must be a list of resources, each with a name and selectors']);
  });

  it('refuses NUL bytes (a binary file named by mistake)', async () => {
    const d = await scratch();
    const file = join(d, 'bin.yaml');
    await writeFile(file, Buffer.from([0x72, 0x00, 0x00, 0x01]));
    await expect(loadConfigFile(file)).rejects.toThrow(/holds NUL bytes, so it is not YAML text/);
  });

  it('gives up a read when the start-up is cancelled', async () => {
    const d = await scratch();
    const file = join(d, 'c.yaml');
    await writeFile(file, 'resources: [{name: a.com/x, selectors: {all: true}}]\n');
    const controller = new AbortController();
    controller.abort(new Error('stopping'));
    await expect(loadConfigFile(file, { signal: controller.signal })).rejects.toThrow('stopping');
  });
});

describe('selectors', () => {
  it('refuses selectors that name nothing, and takes all: true as the one way to select everything', () => {
    const problems = refusal('resources: [{name: a.com/x, selectors: {}}]\n').problems;
    expect(problems).toEqual([
      'resources[0].selectors: must name at least one of vendors, devices, classes, drivers, addresses, domains, numaNodes; to advertise every VFIO group as this resource write "selectors: { all: true }"',
    ]);
    expect(refusal('resources: [{name: a.com/x, selectors: {match: all}}]\n').problems[0]).toMatch(/must name at least one of/);
    expect(refusal('resources: [{name: a.com/x, selectors: {all: true, vendors: ["10de"]}}]\n').problems).toEqual([
      'resources[0].selectors.all: all: true selects every VFIO group; remove it or vendors',
    ]);
    expect(refusal('resources: [{name: a.com/x, selectors: {all: false}}]\n').problems[0]).toMatch(/^resources\[0\]\.selectors\.all: must be true when present/);
    expect(parseConfigText('resources: [{name: a.com/x, selectors: {all: true}}]\n').resources[0]!.selectors.all).toBe(true);
  });
});

describe('selection notices', () => {
  function capture() {
    const lines: Array<Record<string, unknown>> = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    });
    return { lines, logger: createLogger({ level: 'info', destination }) };
  }
  const resources = parseConfigText(`
resources:
  - { name: a.com/gpu, selectors: { vendors: ["10de"] } }
  - { name: a.com/nvme, selectors: { classes: ["010802"] } }
`).resources;
  const gpu = group(1, [fn('0030:01:00.0', { vendor: '10de', classCode: '030200' })]);
  const hostNvme = group(2, [fn('0031:01:00.0', { driver: 'nvme' })], { vfioCandidate: false, usable: false, devNode: false, problems: ['x'] });
  const vfioNvme = group(2, [fn('0031:01:00.0')]);

  it('says once that the node has no IOMMU groups, and why', () => {
    const { lines, logger } = capture();
    const notices = new SelectionNotices({ logger, resources, iommuGroupsDir: '/sys/kernel/iommu_groups' });
    notices.update(topologyOf([]));
    notices.update(topologyOf([]));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'warn', dir: '/sys/kernel/iommu_groups', resources: ['a.com/gpu', 'a.com/nvme'] });
    expect(lines[0]!.msg).toMatch(/^No IOMMU groups on this node, so no resource has devices: VFIO passthrough needs the IOMMU/);
    notices.update(topologyOf([gpu]));
    expect(lines.map((l) => l.msg)).toContain('IOMMU groups appeared');
  });

  it('warns once per resource that matches nothing, again when the reason changes, and says when it matches again', () => {
    const { lines, logger } = capture();
    const notices = new SelectionNotices({ logger, resources, iommuGroupsDir: '/x' });
    notices.update(topologyOf([gpu]));
    notices.update(topologyOf([gpu]));
    expect(lines.filter((l) => l.resource === 'a.com/nvme')).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'warn', resource: 'a.com/nvme', groups: 1 });
    expect(lines[0]!.msg).toBe('Resource matches no IOMMU group and advertises no devices: check its selectors against the groups discovered');
    notices.update(topologyOf([gpu, hostNvme]));
    expect(lines[1]).toMatchObject({ level: 'warn', resource: 'a.com/nvme', hostOwnedGroups: [2] });
    expect(lines[1]!.msg).toMatch(/bind their functions to vfio-pci/);
    notices.update(topologyOf([gpu, vfioNvme]));
    expect(lines[2]).toMatchObject({ level: 'info', resource: 'a.com/nvme', msg: 'Resource matches IOMMU groups again' });
    expect(lines).toHaveLength(3);
    expect(lines.every((l) => l.resource !== 'a.com/gpu')).toBe(true);
  });
});
