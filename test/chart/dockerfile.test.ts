// What can be checked of the image definition without a Docker engine: the
// base images, the platforms, that every path the build copies or names
// exists in the repository, and that the entrypoint is what `npm run build`
// produces.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../../scripts/helm/render-manifests.mjs';

const dockerfile = readFileSync(join(repoRoot, 'Dockerfile'), 'utf8');
const dockerignore = readFileSync(join(repoRoot, '.dockerignore'), 'utf8');
const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {
  bin: Record<string, string>;
  files: string[];
  scripts: Record<string, string>;
  engines: { node: string };
};
const tsconfig = JSON.parse(readFileSync(join(repoRoot, 'tsconfig.json'), 'utf8')) as { compilerOptions: { rootDir: string; outDir: string } };

/** Instructions with continuation lines joined and comments dropped. */
function instructions(text: string): { op: string; args: string }[] {
  const joined = text.replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const [op = '', ...rest] = l.split(/\s+/);
      return { op: op.toUpperCase(), args: rest.join(' ') };
    });
}

const steps = instructions(dockerfile);
const globalArgs = new Map<string, string>();
for (const s of steps) {
  if (s.op === 'FROM') break;
  if (s.op === 'ARG') {
    const [k, v = ''] = s.args.split('=');
    globalArgs.set(k!, v);
  }
}
const expand = (text: string) => text.replace(/\$\{?(\w+)\}?/g, (_, name: string) => globalArgs.get(name) ?? `\${${name}}`);
const stages = steps.filter((s) => s.op === 'FROM').map((s) => {
  const parts = s.args.split(/\s+/).filter((p) => !p.startsWith('--platform'));
  return { image: expand(parts[0]!), name: parts[2] ?? null };
});

/** Paths the .dockerignore allowlist lets into the build context. */
const allowed = dockerignore
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l.startsWith('!'))
  .map((l) => l.slice(1).replace(/\/$/, ''));

describe('Dockerfile', () => {
  it('builds on the official multi-arch Node.js image of the current LTS (24), in every stage', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages) {
      // Official Docker Hub library image, Debian slim: published for linux/amd64 and linux/ppc64le.
      expect(stage.image).toMatch(/^node:(2[4-9]|[3-9][0-9])-(bookworm|trixie)-slim$/);
      const major = Number(/^node:(\d+)/.exec(stage.image)![1]);
      expect(major % 2, 'an LTS line (even major)').toBe(0);
      // The image runs a version package.json allows.
      expect(major).toBeGreaterThanOrEqual(Number(/(\d+)/.exec(pkg.engines.node)![1]));
    }
  });

  it('names linux/ppc64le first and linux/amd64 as its platforms', () => {
    const line = /docker buildx build --platform (\S+)/.exec(dockerfile);
    expect(line, 'a "docker buildx build --platform ..." line in the header').not.toBeNull();
    const platforms = line![1]!.split(',');
    expect(platforms[0]).toBe('linux/ppc64le');
    expect(platforms).toContain('linux/amd64');
    // Native builds per platform: a --platform=$BUILDPLATFORM stage would compile the addon with the wrong <linux/vfio.h>.
    expect(dockerfile).not.toMatch(/FROM\s+--platform=\$\{?BUILDPLATFORM/);
  });

  it('copies only from the build context allowlist or from its own build stage, and every allowed path exists', () => {
    const copies = steps.filter((s) => s.op === 'COPY' || s.op === 'ADD');
    expect(copies.length).toBeGreaterThan(0);
    const stageNames = new Set(stages.map((s) => s.name).filter(Boolean));
    for (const copy of copies) {
      expect(copy.op, 'COPY, not ADD').toBe('COPY');
      const from = /--from=(\S+)/.exec(copy.args)?.[1];
      const paths = copy.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      const sources = paths.slice(0, -1);
      if (from) {
        expect(stageNames.has(from), `COPY --from=${from} names a stage`).toBe(true);
        for (const src of sources) expect(dockerfile, `${src} is created in the build stage`).toMatch(new RegExp(`mkdir -p ${src}\\b`));
      } else {
        for (const src of sources) {
          if (src === '.') continue;
          expect(existsSync(join(repoRoot, src)), `COPY source ${src}`).toBe(true);
          expect(allowed.includes(src), `${src} is allowed into the context by .dockerignore`).toBe(true);
        }
      }
    }
    expect(dockerignore).toMatch(/^\*$/m);
    for (const path of allowed) expect(existsSync(join(repoRoot, path)), `.dockerignore allows ${path}, which must exist`).toBe(true);
  });

  it('lets in everything npm ci and npm run build need, and never the host node_modules or build/', () => {
    for (const needed of ['package.json', 'package-lock.json', 'tsconfig.json', tsconfig.compilerOptions.rootDir, 'proto']) {
      expect(allowed, needed).toContain(needed);
    }
    // The package's own sources named in "files" (dist is built in the image; README is not needed).
    for (const entry of pkg.files.filter((f) => f !== 'dist' && !/\.md$/i.test(f))) expect(allowed, `files entry ${entry}`).toContain(entry);
    // The native addon's sources, when the package has one.
    if (existsSync(join(repoRoot, 'binding.gyp'))) {
      expect(allowed).toContain('binding.gyp');
      expect(allowed).toContain('native');
    }
    // Files the lifecycle scripts run (install, prepare, build) must be in the context too.
    for (const script of ['preinstall', 'install', 'postinstall', 'prepare', 'build']) {
      for (const m of (pkg.scripts[script] ?? '').matchAll(/(?:^|\s)((?:scripts|bin)\/\S+)/g)) {
        expect(allowed.some((a) => m[1] === a || m[1]!.startsWith(`${a}/`)), `${script} runs ${m[1]}`).toBe(true);
      }
    }
    expect(dockerignore).toMatch(/^\*\*\/node_modules$/m);
    expect(dockerignore).toMatch(/^\*\*\/build$/m);
  });

  it('runs npm ci (install script: the addon), npm run build, checks the addon loads, and prunes dev dependencies', () => {
    const runs = steps.filter((s) => s.op === 'RUN').map((s) => s.args);
    const at = (re: RegExp) => runs.findIndex((r) => re.test(r));
    const ci = at(/\bnpm ci\b/);
    const build = at(/\bnpm run build\b/);
    const load = at(/vfio_native\.node/);
    const prune = at(/\bnpm prune --omit=dev\b/);
    expect(ci).toBeGreaterThanOrEqual(0);
    expect(runs[ci]).not.toMatch(/--ignore-scripts/);
    expect(build).toBeGreaterThan(ci);
    expect(load).toBeGreaterThan(ci);
    expect(prune).toBeGreaterThan(build);
    expect(pkg.scripts.build).toBeDefined();
  });

  it("starts the file `npm run build` produces for the plugin's bin, and carries every bin of package.json", () => {
    const { rootDir, outDir } = tsconfig.compilerOptions;
    expect(pkg.bin['power-vfio-device-plugin']).toBe('dist/cli/entry.js');
    for (const [name, target] of Object.entries(pkg.bin)) {
      // tsc maps <rootDir>/x.ts to <outDir>/x.js: the source must exist.
      expect(target.startsWith(`${outDir}/`), `${name} -> ${target} is under ${outDir}/`).toBe(true);
      const source = join(repoRoot, rootDir, target.slice(outDir.length + 1).replace(/\.js$/, '.ts'));
      expect(existsSync(source), `${name}: ${source}`).toBe(true);
    }
    const entrypoint = steps.find((s) => s.op === 'ENTRYPOINT');
    expect(JSON.parse(entrypoint!.args)).toEqual(['node', `/app/${pkg.bin['power-vfio-device-plugin']}`]);
    expect(JSON.parse(steps.find((s) => s.op === 'CMD')!.args)).toEqual(['run']);
    // The runtime tree is assembled from dist/, proto/ (read at run time), node_modules/ and package.json.
    expect(dockerfile).toMatch(/cp -a package\.json README\.md dist proto clients docs node_modules \/out\//);
    expect(dockerfile).toMatch(/cp -a build\/Release \/out\/build\//);
    // Every bin is linked onto PATH from package.json, so the workload client comes along when it is added.
    expect(dockerfile).toMatch(/require\('\/app\/package\.json'\)[^\n]*symlinkSync\('\/app\/'\+f,'\/usr\/local\/bin\/'\+n\)/);
  });

  it('runs as root, on purpose and with the reason written down', () => {
    expect(dockerfile).toMatch(/^USER 0:0$/m);
    expect(dockerfile).toMatch(/# Root, on purpose: the plugin opens \/dev\/vfio/);
  });
});
