// Bad values are refused by `helm template` and `helm install` with a message
// that names the field, and the configuration mistakes among them are ones the
// plugin's own parser refuses too: chart and plugin agree on what is valid.
// Each file in test/chart/values/bad/ states what helm must say (`# expect:`,
// a regular expression) and, for configuration mistakes, what the plugin says
// (`# plugin-refuses:`), and for flag mistakes, what the plugin says when the
// chart's PVDP_* variables carry them (`# plugin-refuses-flag:`).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { parseCommandLine, resolveSettings } from '../../src/config/settings.js';
import { ConfigError, UsageError } from '../../src/errors.js';
import { NAMESPACE, RELEASE, badValuesDir, chartDir, helmSetup, runHelm } from './chart-helpers.js';

const setup = helmSetup();

interface BadCase {
  file: string;
  path: string;
  expect: RegExp;
  pluginRefuses: RegExp | null;
  pluginRefusesFlag: RegExp | null;
  values: Record<string, any>;
}

function header(text: string, key: string): string | null {
  const line = text.split('\n').find((l) => l.startsWith(`# ${key}: `));
  return line ? line.slice(`# ${key}: `.length).trim() : null;
}

const cases: BadCase[] = readdirSync(badValuesDir)
  .filter((f) => f.endsWith('.yaml'))
  .sort()
  .map((file) => {
    const path = join(badValuesDir, file);
    const text = readFileSync(path, 'utf8');
    const expected = header(text, 'expect');
    if (!expected) throw new Error(`${file} has no "# expect:" line`);
    const refuses = header(text, 'plugin-refuses');
    const refusesFlag = header(text, 'plugin-refuses-flag');
    return {
      file,
      path,
      expect: new RegExp(expected),
      pluginRefuses: refuses ? new RegExp(refuses) : null,
      pluginRefusesFlag: refusesFlag ? new RegExp(refusesFlag) : null,
      values: parse(text),
    };
  });

describe('bad values files', () => {
  it('cover names, modes, ids, classes, addresses, unknown fields, duplicates and chart settings', () => {
    expect(cases.length).toBeGreaterThanOrEqual(15);
    expect(cases.filter((c) => c.pluginRefuses).length).toBeGreaterThanOrEqual(10);
  });

  it('cover unquoted domains, CDI resource names and handoff settings', () => {
    for (const file of [
      'domains-unquoted.yaml',
      'cdi-name-not-a-cdi-class.yaml',
      'cdi-domain-starts-with-digit.yaml',
      'handoff-options-without-handoff-mode.yaml',
      'handoff-memory-size-bad.yaml',
      'handoff-host-dir-too-long.yaml',
    ]) {
      expect(cases.some((c) => c.file === file), file).toBe(true);
    }
  });

  describe.each(cases.filter((c) => c.pluginRefuses))('$file (configuration)', (c) => {
    it("is refused by the plugin's own configuration parser too", () => {
      let error: unknown;
      try {
        // The file the chart would render: resources, and cdi when the values set it (CDI name rules).
        parseConfig({ resources: c.values.config.resources, ...(c.values.cdi ? { cdi: c.values.cdi } : {}) }, 'values');
      } catch (err) {
        error = err;
      }
      expect(error, 'the plugin accepted what the chart refuses').toBeInstanceOf(ConfigError);
      expect((error as Error).message).toMatch(c.pluginRefuses!);
    });
  });
});

/** The PVDP_* variables the chart's DaemonSet would pass for these values' kubeletApi and dra settings. */
function draEnv(values: Record<string, any>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  if (values.kubeletApi !== undefined && values.kubeletApi !== 'auto') env.PVDP_KUBELET_API = String(values.kubeletApi);
  const dra = values.dra ?? {};
  if (dra.driverName !== undefined) env.PVDP_DRIVER_NAME = String(dra.driverName);
  if (dra.pluginsRegistryDir !== undefined) env.PVDP_PLUGINS_REGISTRY_DIR = String(dra.pluginsRegistryDir);
  if (dra.pluginsDir !== undefined) env.PVDP_PLUGINS_DIR = String(dra.pluginsDir);
  if (dra.cdiSpecDir !== undefined) env.PVDP_CDI_SPEC_DIR = String(dra.cdiSpecDir);
  return env;
}

describe('bad values files (flags)', () => {
  it('cover the kubelet API choice and the DRA driver settings', () => {
    for (const file of [
      'kubelet-api-unknown.yaml',
      'dra-driver-name-not-dns.yaml',
      'dra-driver-name-too-long.yaml',
      'dra-plugins-dir-relative.yaml',
      'dra-service-socket-too-long.yaml',
      'dra-device-classes-unknown-field.yaml',
      'dra-device-class-names-collide.yaml',
    ]) {
      expect(cases.some((c) => c.file === file), file).toBe(true);
    }
  });

  describe.each(cases.filter((c) => c.pluginRefusesFlag))('$file (flags)', (c) => {
    it('is refused by the plugin at start when the chart passes it as PVDP_* variables', async () => {
      const resources = c.values.config?.resources ?? [{ name: 'ibm.com/vfio-pci', selectors: { drivers: ['vfio-pci'] } }];
      const { values } = parseCommandLine([], draEnv(c.values));
      const error = await resolveSettings(values, () => parseConfig({ resources }, 'values')).then(
        () => null,
        (err: unknown) => err,
      );
      expect(error, 'the plugin accepted what the chart refuses').not.toBeNull();
      expect(error instanceof ConfigError || error instanceof UsageError, String(error)).toBe(true);
      expect((error as Error).message).toMatch(c.pluginRefusesFlag!);
    });
  });
});

describe.skipIf(!setup.helm)('helm refuses bad values', () => {
  describe.each(cases)('$file', (c) => {
    it('fails helm template with a message naming the field', () => {
      const run = runHelm(['template', RELEASE, chartDir, '--namespace', NAMESPACE, '-f', c.path]);
      expect(run.status, run.stdout).not.toBe(0);
      expect(run.stderr).toMatch(c.expect);
    });
  });

  it('fails helm install (client dry run) the same way', () => {
    const c = cases.find((x) => x.file === 'mode-unknown.yaml')!;
    const run = runHelm(['install', RELEASE, chartDir, '--namespace', NAMESPACE, '--dry-run=client', '-f', c.path]);
    expect(run.status).not.toBe(0);
    expect(run.stderr).toMatch(c.expect);
  });

  it('fails helm lint --strict', () => {
    const c = cases.find((x) => x.file === 'vendor-three-digits.yaml')!;
    const run = runHelm(['lint', '--strict', chartDir, '-f', c.path]);
    expect(run.status).not.toBe(0);
    expect(run.stdout + run.stderr).toMatch(c.expect);
  });
});

if (!setup.helm) {
  describe('helm refuses bad values', () => {
    it.skip(`skipped: ${setup.skipReason}`, () => {});
  });
}
