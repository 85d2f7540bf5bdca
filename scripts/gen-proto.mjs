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
execFileSync(
  bin,
  [
    '--keepCase',
    '--longs=String',
    '--enums=String',
    '--defaults',
    '--oneofs',
    '--grpcLib=@grpc/grpc-js',
    '--outDir', out,
    `--includeDirs=${join(root, 'proto')}`,
    '--importFileExtension=.js',
    'deviceplugin/v1beta1/deviceplugin.proto',
    'podresources/v1/podresources.proto',
  ],
  { stdio: 'inherit', cwd: root },
);

// The generator records the absolute .proto path; keep the output the same on
// every machine so a test can check it is in sync.
for (const entry of readdirSync(out, { recursive: true, withFileTypes: true })) {
  if (!entry.isFile()) continue;
  const file = join(entry.parentPath ?? entry.path, entry.name);
  const text = readFileSync(file, 'utf8');
  writeFileSync(file, text.replaceAll(`${root}/`, ''));
}
