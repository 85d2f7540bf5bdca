// The operator's guide's resource examples are valid: each YAML block that
// sets config.resources is accepted by the plugin's parser and by the chart.
// Its DRA examples validate against resource.k8s.io/v1, carry opaque
// configuration the plugin's preparation schema accepts, select only on
// attributes the guide lists, and show the DeviceClass the chart renders.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { Pod } from 'kubernetes-models/v1';
import { DeviceClass, ResourceClaim, ResourceClaimTemplate } from 'kubernetes-models/resource.k8s.io/v1';
import { parseConfig } from '../../src/config/load.js';
import { preparationSchema } from '../../src/config/schema.js';
import { CLAIM_CONFIG_API_VERSION, CLAIM_CONFIG_KIND, DEFAULT_DRIVER_NAME } from '../../src/dra/constants.js';
import { NAMESPACE, RELEASE, chartDir, helmSetup, parseObjects, repoRoot, runHelm } from './chart-helpers.js';

const guide = readFileSync(join(repoRoot, 'docs', 'operator-guide.md'), 'utf8');
const blocks = [...guide.matchAll(/```yaml\n([\s\S]*?)```/g)]
  .map((m) => m[1]!)
  .filter((text) => /^config:\n  resources:/m.test(text));
const setup = helmSetup();
const scratch = mkdtempSync('/tmp/pvdp-docs-');
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('docs/operator-guide.md resource examples', () => {
  it('has examples for GPUs, NVMe, ConnectX VFs and FPGAs', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(5);
    for (const id of ['"10de"', '"010802"', '"15b3"', '"10ee"']) expect(blocks.some((b) => b.includes(id)), id).toBe(true);
  });

  it.each(blocks.map((b, i) => [i, b]))("example %i is accepted by the plugin's parser", (_i, block) => {
    const values = parse(block) as { config: { resources: unknown[] } };
    expect(() => parseConfig({ resources: values.config.resources }, 'guide example')).not.toThrow();
  });

  it.skipIf(!setup.helm).each(blocks.map((b, i) => [i, b]))('example %i renders with the chart', (i, block) => {
    const file = join(scratch, `example-${i}.yaml`);
    writeFileSync(file, block);
    const run = runHelm(['template', RELEASE, chartDir, '--namespace', NAMESPACE, '-f', file]);
    expect(run.status, run.stderr).toBe(0);
  });
});

const draSection = guide.slice(guide.indexOf('## 11. Dynamic Resource Allocation'));
const draBlocks = [...draSection.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
const draDocs = draBlocks.flatMap((text) => parseAllDocuments(text).map((d) => d.toJS() as Record<string, any>));

/** Attribute names in the guide's table of published attributes (first column, back-quoted). */
function publishedAttributes(): Set<string> {
  const table = draSection.slice(draSection.indexOf('| attribute | type | value |'), draSection.indexOf('and the standard'));
  const names = new Set<string>();
  for (const line of table.split('\n').slice(2)) {
    const first = line.split('|')[1] ?? '';
    for (const m of first.matchAll(/`([A-Za-z0-9]+)`/g)) names.add(m[1]!);
  }
  return names;
}

/** Every opaque configuration for our driver in a parsed object. */
function opaqueConfigs(value: unknown, out: Record<string, any>[] = []): Record<string, any>[] {
  if (Array.isArray(value)) for (const v of value) opaqueConfigs(v, out);
  else if (value && typeof value === 'object') {
    const o = value as Record<string, any>;
    if (o.opaque && o.opaque.driver === DEFAULT_DRIVER_NAME) out.push(o.opaque.parameters);
    else if (o.driver === DEFAULT_DRIVER_NAME && o.parameters && !o.opaque) out.push(o.parameters);
    for (const v of Object.values(o)) opaqueConfigs(v, out);
  }
  return out;
}

describe('docs/operator-guide.md DRA examples', () => {
  const byKind = (kind: string) => draDocs.filter((d) => d?.kind === kind);

  it('show a DeviceClass, a ResourceClaimTemplate with a Pod, and a ResourceClaim selecting by attribute', () => {
    expect(byKind('DeviceClass')).toHaveLength(1);
    expect(byKind('ResourceClaimTemplate')).toHaveLength(1);
    expect(byKind('Pod')).toHaveLength(1);
    expect(byKind('ResourceClaim')).toHaveLength(1);
  });

  it('validate against the resource.k8s.io/v1 and v1 schemas', () => {
    const models: Record<string, (o: any) => { validate(): void }> = {
      DeviceClass: (o) => new DeviceClass(o),
      ResourceClaim: (o) => new ResourceClaim(o),
      ResourceClaimTemplate: (o) => new ResourceClaimTemplate(o),
      Pod: (o) => new Pod(o),
    };
    for (const doc of draDocs.filter((d) => d?.apiVersion)) {
      const model = models[doc.kind];
      expect(model, `a validator for ${doc.kind}`).toBeDefined();
      expect(() => model!(doc).validate(), `${doc.kind}/${doc.metadata?.name}`).not.toThrow();
    }
  });

  it("carry opaque configuration that the plugin's preparation schema accepts, handoff with 256Mi and 16Mi huge pages", () => {
    const configs = opaqueConfigs(draDocs);
    expect(configs.length).toBeGreaterThanOrEqual(3);
    for (const { apiVersion, kind, ...preparation } of configs) {
      expect(apiVersion).toBe(CLAIM_CONFIG_API_VERSION);
      expect(kind).toBe(CLAIM_CONFIG_KIND);
      expect(() => preparationSchema.parse(preparation), JSON.stringify(preparation)).not.toThrow();
    }
    const template = byKind('ResourceClaimTemplate')[0]!;
    const parsed = preparationSchema.parse((({ apiVersion: _a, kind: _k, ...p }) => p)(opaqueConfigs(template)[0]!));
    expect(parsed).toMatchObject({ mode: 'handoff', handoff: { memorySize: 256 * 2 ** 20, hugePageShift: 24 } });
    // The pod uses the template's claim in its container.
    const pod = byKind('Pod')[0]!;
    expect(pod.spec.resourceClaims[0].resourceClaimTemplateName).toBe(template.metadata.name);
    expect(pod.spec.containers[0].resources.claims[0].name).toBe(pod.spec.resourceClaims[0].name);
  });

  it('select and constrain only on attributes the guide lists as published', () => {
    const ours = publishedAttributes();
    expect(ours).toEqual(new Set(['resource', 'iommuGroup', 'phb', 'pe', 'vendor', 'device', 'class', 'subsystemVendor', 'subsystemDevice', 'functions', 'driver', 'binding', 'currentDrivers', 'platform', 'iommufd', 'eeh', 'spaprTceV2', 'dynamicWindows', 'iommuPageSizes', 'defaultWindowSize']));
    const standard = new Set(['pciBusID', 'pcieRoot', 'numaNode']);
    const used = [...draSection.matchAll(/device\.attributes\["([^"]+)"\]\.([A-Za-z0-9]+)/g), ...draSection.matchAll(/matchAttribute: ([a-z0-9.-]+)\/([A-Za-z0-9]+)/g)];
    expect(used.length).toBeGreaterThanOrEqual(5);
    for (const [text, domain, name] of used) {
      if (domain === DEFAULT_DRIVER_NAME) expect(ours.has(name!), text).toBe(true);
      else {
        expect(domain, text).toBe('resource.kubernetes.io');
        expect(standard.has(name!), text).toBe(true);
      }
    }
  });

  it.skipIf(!setup.helm)('show the DeviceClass the chart renders for the values shown', () => {
    const values = draBlocks.find((b) => /^kubeletApi: dra\n/m.test(b));
    expect(values, 'a values block with kubeletApi: dra').toBeDefined();
    const file = join(scratch, 'dra-values.yaml');
    writeFileSync(file, values!);
    const run = runHelm(['template', RELEASE, chartDir, '--namespace', NAMESPACE, '-f', file, '--show-only', 'templates/deviceclasses.yaml']);
    expect(run.status, run.stderr).toBe(0);
    const [rendered] = parseObjects(run.stdout);
    const shown = byKind('DeviceClass')[0]!;
    expect(rendered!.metadata.name).toBe(shown.metadata.name);
    expect(rendered!.spec).toEqual(shown.spec);
  });
});
