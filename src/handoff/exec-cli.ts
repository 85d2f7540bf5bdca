#!/usr/bin/env node
// power-vfio-handoff: the workload-side wrapper.
//
//   power-vfio-handoff exec [--socket PATH] [--timeout SECONDS] [--description-file PATH] -- CMD [ARGS...]
//
// Claims the preparation served at $PVDP_HANDOFF_SOCKET (or --socket), then
// runs CMD with the fds at known numbers: 3 the VFIO container, 4 the DMA
// memory, 5.. the groups in description order. Node cannot execve, so CMD is a
// child: the wrapper closes its own copies at once (the child's exit then
// releases everything in the kernel), forwards signals and exits with CMD's
// status. The container's mm stays the plugin's: CMD uses the pre-mapped
// window (MAP_DMA from it is EPERM).
import { spawn } from 'node:child_process';
import { closeSync, realpathSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { claim, claimedFdList, HandoffClaimError, type ClaimOptions } from './client.js';
import type { HandoffDescription } from './protocol.js';

export const CHILD_FD_CONTAINER = 3;
export const CHILD_FD_MEMORY = 4;
export const CHILD_FD_FIRST_GROUP = 5;

const USAGE = `Usage: power-vfio-handoff exec [--socket PATH] [--timeout SECONDS] [--description-file PATH] -- CMD [ARGS...]

Claims the VFIO container prepared by power-vfio-device-plugin and runs CMD with
  fd 3 = the VFIO container, fd 4 = the DMA memory (memfd), fd 5.. = the IOMMU groups
and PVDP_VFIO_CONTAINER_FD, PVDP_HANDOFF_MEMORY_FD, PVDP_VFIO_GROUP_FDS, PVDP_DMA_WINDOW_START,
PVDP_DMA_WINDOW_SIZE, PVDP_DMA_IOVA, PVDP_DMA_MEMORY_SIZE, PVDP_IOMMU_PAGE_SIZE, PVDP_IOMMU_TYPE and
PVDP_HANDOFF_DESCRIPTION (the JSON description, or its file with --description-file) in its environment.

  --socket PATH             handoff socket (default $PVDP_HANDOFF_SOCKET)
  --timeout SECONDS         claim deadline, retries of a busy socket included (default 30)
  --description-file PATH   write the description there instead of into the environment`;

/** The environment CMD gets, describing its fds and the window. */
export function childEnvironment(description: HandoffDescription, descriptionValue: string): Record<string, string> {
  const groupFds = description.groups.map((_, i) => CHILD_FD_FIRST_GROUP + i);
  const env: Record<string, string> = {
    PVDP_VFIO_CONTAINER_FD: String(CHILD_FD_CONTAINER),
    PVDP_HANDOFF_MEMORY_FD: String(CHILD_FD_MEMORY),
    PVDP_VFIO_GROUP_FDS: groupFds.join(','),
    PVDP_VFIO_GROUPS: description.groups.map((g) => g.group).join(','),
    PVDP_IOMMU_TYPE: description.iommu.type,
    PVDP_DMA_WINDOW_START: description.window.start,
    PVDP_DMA_WINDOW_SIZE: description.window.size,
    PVDP_IOMMU_PAGE_SIZE: description.window.pageSize,
    PVDP_DMA_MEMORY_SIZE: description.memory.size,
    PVDP_HANDOFF_DESCRIPTION: descriptionValue,
  };
  if (description.ranges[0]) env['PVDP_DMA_IOVA'] = description.ranges[0].iova;
  description.groups.forEach((g, i) => (env[`PVDP_VFIO_GROUP_FD_${g.group}`] = String(CHILD_FD_FIRST_GROUP + i)));
  return env;
}

/** The description with the child's fd numbers added (`childFds`). */
export function childDescription(description: HandoffDescription): HandoffDescription & { childFds: { container: number; memory: number; groups: number[] } } {
  return {
    ...description,
    childFds: {
      container: CHILD_FD_CONTAINER,
      memory: CHILD_FD_MEMORY,
      groups: description.groups.map((_, i) => CHILD_FD_FIRST_GROUP + i),
    },
  };
}

export interface ExecDeps {
  env: NodeJS.ProcessEnv;
  stderr: (line: string) => void;
  claimOptions?: ClaimOptions;
}

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];

/** Runs the CLI; resolves with the exit status. */
export async function runHandoffCli(argv: readonly string[], deps: ExecDeps): Promise<number> {
  const dashDash = argv.indexOf('--');
  const own = dashDash >= 0 ? argv.slice(0, dashDash) : [...argv];
  const command = dashDash >= 0 ? argv.slice(dashDash + 1) : [];
  let parsed;
  try {
    parsed = parseArgs({
      args: own,
      options: {
        socket: { type: 'string' },
        timeout: { type: 'string' },
        'description-file': { type: 'string' },
        help: { type: 'boolean' },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    deps.stderr(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.values.help) {
    deps.stderr(USAGE);
    return 0;
  }
  if (parsed.positionals[0] !== 'exec' || parsed.positionals.length !== 1 || command.length === 0) {
    deps.stderr(USAGE);
    return 2;
  }
  const socket = parsed.values.socket ?? deps.env['PVDP_HANDOFF_SOCKET'];
  if (!socket) {
    deps.stderr('No handoff socket: set PVDP_HANDOFF_SOCKET (the plugin does, in handoff mode) or pass --socket');
    return 2;
  }
  const timeoutSeconds = parsed.values.timeout !== undefined ? Number(parsed.values.timeout) : 30;
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) {
    deps.stderr(`--timeout: "${parsed.values.timeout}" is not a positive number of seconds`);
    return 2;
  }

  let claimed;
  try {
    claimed = await claim(socket, {
      timeoutMs: timeoutSeconds * 1000,
      // A crowd at the socket is retried until the deadline; say so, once per wait.
      onBusy: (attempt, waitMs) => deps.stderr(`The handoff socket is busy (PVDP_HANDOFF_BUSY); retrying in ${waitMs} ms (attempt ${attempt})`),
      ...deps.claimOptions,
    });
  } catch (err) {
    const code = err instanceof HandoffClaimError ? `${err.code}: ` : '';
    deps.stderr(`Cannot claim the VFIO handoff at ${socket}: ${code}${(err as Error).message}`);
    return 75; // EX_TEMPFAIL: a container restart prepares again
  }
  const fds = claimedFdList(claimed.fds);
  const descriptionJson = JSON.stringify(childDescription(claimed.description));
  let descriptionValue = descriptionJson;
  const descriptionFile = parsed.values['description-file'];
  if (descriptionFile) {
    writeFileSync(descriptionFile, `${descriptionJson}\n`, { mode: 0o600 });
    descriptionValue = descriptionFile;
  }

  const [file, ...args] = command as [string, ...string[]];
  const child = spawn(file, args, {
    stdio: ['inherit', 'inherit', 'inherit', ...fds],
    env: { ...deps.env, ...childEnvironment(claimed.description, descriptionValue) },
  });
  // The child has its own copies now (or failed to start): drop ours either way.
  for (const fd of fds) {
    try {
      closeSync(fd);
    } catch {
      // Already closed.
    }
  }
  const handlers = new Map<NodeJS.Signals, () => void>();
  for (const signal of FORWARDED) {
    const handler = () => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    };
    handlers.set(signal, handler);
    process.on(signal, handler);
  }
  return new Promise<number>((resolve) => {
    const done = (code: number) => {
      for (const [signal, handler] of handlers) process.off(signal, handler);
      resolve(code);
    };
    child.once('error', (err) => {
      deps.stderr(`Cannot run ${file}: ${err.message}`);
      done(127);
    });
    child.once('exit', (code, signal) => {
      if (signal) {
        done(signalExitCode(signal));
      } else {
        done(code ?? 1);
      }
    });
  });
}

/** The shell's status for a death by `signal`: 128 + its number on this platform. */
export function signalExitCode(signal: NodeJS.Signals): number {
  const n = (os.constants.signals as Record<string, number | undefined>)[signal];
  return 128 + (n ?? 0);
}

function isMain(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  runHandoffCli(process.argv.slice(2), { env: process.env, stderr: (line) => process.stderr.write(`${line}\n`) }).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
