// Regenerates the typed gRPC handlers in src/generated from proto/ with
// proto-loader-gen-types (no native protoc). The options must match the ones
// src/kubelet/proto.ts loads the .proto files with.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'src', 'generated');
rmSync(out, { recursive: true, force: true });
const bin = join(root, 'node_modules', '.bin', 'proto-loader-gen-types');
// Two runs: the DRA files share package names (v1beta1, v1) with the device
// plugin and PodResources files, so their types live in a directory of their own.
const runs = [
  { outDir: out, files: ['deviceplugin/v1beta1/deviceplugin.proto', 'podresources/v1/podresources.proto'] },
  {
    outDir: join(out, 'dra'),
    files: [
      'pluginregistration/v1/registration.proto',
      'dra/v1/dra.proto',
      'dra/v1beta1/dra.proto',
      'dra-health/v1alpha1/health.proto',
      'dra-health/v1beta1/health.proto',
      'dra-health/v1/health.proto',
    ],
  },
];
for (const run of runs) {
  execFileSync(
    bin,
    [
      '--keepCase',
      '--longs=String',
      '--enums=String',
      '--defaults',
      '--oneofs',
      '--grpcLib=@grpc/grpc-js',
      '--outDir', run.outDir,
      `--includeDirs=${join(root, 'proto')}`,
      '--importFileExtension=.js',
      ...run.files,
    ],
    { stdio: 'inherit', cwd: root },
  );
}

// The generator records the absolute .proto path; keep the output the same on
// every machine so a test can check it is in sync.
for (const entry of readdirSync(out, { recursive: true, withFileTypes: true })) {
  if (!entry.isFile()) continue;
  const file = join(entry.parentPath ?? entry.path, entry.name);
  const text = readFileSync(file, 'utf8');
  writeFileSync(file, text.replaceAll(`${root}/`, ''));
}
