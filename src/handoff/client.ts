// The workload's side of the handoff: connect to the socket the plugin serves
// in the per-allocation directory, claim, and receive the container fd, the
// memory fd and the group fds with their description. See
// docs/handoff-protocol.md; clients/c/ holds the same in C.
import {
  FD_INDEX_CONTAINER,
  FD_INDEX_FIRST_GROUP,
  FD_INDEX_MEMORY,
  HANDOFF_PROTOCOL_VERSION,
  MAX_RESPONSE_BYTES,
  encodeClaimRequest,
  validateDescription,
  HandoffProtocolError,
  type HandoffDescription,
} from './protocol.js';
import { HandoffClaimError, delay, retryAgain, unixClaimTransport, type ClaimTransport, type ClientChannel } from './transport.js';

export { HandoffClaimError } from './transport.js';

export interface ClaimedFds {
  container: number;
  memory: number;
  /** In the order of `description.groups`. */
  groups: number[];
}

export interface ClaimResult {
  fds: ClaimedFds;
  description: HandoffDescription;
}

/** How a claim waits between attempts while the plugin answers BUSY. */
export interface BusyBackoff {
  /** First wait (default 10 ms); doubles per attempt. */
  initialMs?: number;
  /** Longest wait (default 1 s). */
  maxMs?: number;
  /** Source of jitter in [0, 1) (default Math.random); tests pin it. */
  random?: () => number;
}

export interface ClaimOptions {
  /** Whole claim deadline, BUSY retries included (default 10 s). */
  timeoutMs?: number;
  backoff?: BusyBackoff;
  /** Called before each wait after a BUSY answer (attempt number from 1, the wait). */
  onBusy?: (attempt: number, waitMs: number) => void;
  /** Protocol version to ask for (tests of version errors). */
  protocol?: number;
  /** How to reach the socket; default real unix sockets with the native addon. */
  transport?: ClaimTransport;
}

async function defaultTransport(): Promise<ClaimTransport> {
  const { createNativeBinding } = await import('../vfio/native-binding.js');
  return unixClaimTransport(createNativeBinding());
}

/**
 * The wait before retry number `attempt` (from 0): exponential up to `maxMs`,
 * with its upper half jittered so a crowd of refused clients spreads out.
 */
export function busyBackoffMs(attempt: number, backoff: BusyBackoff = {}): number {
  const initial = backoff.initialMs ?? 10;
  const max = backoff.maxMs ?? 1000;
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  const random = backoff.random ?? Math.random;
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}

/**
 * Claims the preparation served at `socketPath`. On success the caller owns
 * the fds (close them, or keep them for the workload's lifetime: the kernel
 * releases the container when the last of them closes). A BUSY answer (a
 * crowd at the socket) is retried with jittered backoff until the deadline.
 * Throws HandoffClaimError with the plugin's error code otherwise; no fd is
 * left open.
 */
export async function claim(socketPath: string, options: ClaimOptions = {}): Promise<ClaimResult> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const deadline = Date.now() + timeoutMs;
  const transport = options.transport ?? (await defaultTransport());
  const protocol = options.protocol ?? HANDOFF_PROTOCOL_VERSION;
  let lastBusy: HandoffClaimError | null = null;
  for (let attempt = 0; ; attempt++) {
    try {
      const channel = await transport.connect(socketPath, Math.max(1, deadline - Date.now()));
      try {
        return await claimOn(channel, transport, deadline, protocol);
      } finally {
        await channel.close();
      }
    } catch (err) {
      if (lastBusy && err instanceof HandoffClaimError && err.code === 'PVDP_HANDOFF_TIMEOUT') {
        // The deadline cut a retry short: the crowd that answered BUSY is most likely still there.
        throw new HandoffClaimError(BUSY, `${lastBusy.message} (still busy after ${attempt} attempts within ${timeoutMs} ms; one more had no answer by the deadline)`, { cause: err });
      }
      if (!(err instanceof HandoffClaimError) || err.code !== BUSY) throw err;
      lastBusy = err;
      const wait = busyBackoffMs(attempt, options.backoff);
      if (Date.now() + wait >= deadline) {
        throw new HandoffClaimError(BUSY, `${err.message} (still busy after ${attempt + 1} attempts within ${timeoutMs} ms)`, { cause: err });
      }
      options.onBusy?.(attempt + 1, wait);
      await delay(wait);
    }
  }
}

const BUSY = 'PVDP_HANDOFF_BUSY';

/** The peer closed before our request went in; its answer (BUSY) may still be waiting to be read. */
function isPeerGone(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'EPIPE' || code === 'ECONNRESET';
}

async function claimOn(channel: ClientChannel, transport: ClaimTransport, deadline: number, protocol: number): Promise<ClaimResult> {
  const { io, fd } = channel;
  const timeout = () => new HandoffClaimError('PVDP_HANDOFF_TIMEOUT', 'The plugin did not answer the claim in time');
  // A plugin refusing a crowd answers BUSY and drops the connection at once, maybe
  // before the request is written: the answer is read all the same.
  let sendError: unknown = null;
  await retryAgain(() => io.sendFds(fd, encodeClaimRequest(protocol), []), deadline, timeout).catch((err: unknown) => {
    if (!isPeerGone(err)) throw err;
    sendError = err;
  });
  const closedEarly = (cause: unknown) =>
    new HandoffClaimError(
      'PVDP_HANDOFF_CONNECTION_CLOSED',
      `The plugin closed the connection without a complete answer${sendError !== null ? ` (the request could not be sent: ${(sendError as Error).message})` : ''}`,
      { cause },
    );
  const chunks: Buffer[] = [];
  const fds: number[] = [];
  let length = 0;
  let line: Buffer | null = null;
  try {
    for (;;) {
      const msg = await retryAgain(() => io.recvFds(fd, 65536, 253), deadline, timeout).catch((err: unknown) => {
        if (isPeerGone(err)) throw closedEarly(err);
        if ((err as { code?: unknown }).code !== 'MSG_CTRUNC') throw err;
        throw new HandoffClaimError(
          'PVDP_HANDOFF_FDS_TRUNCATED',
          'The kernel cut off the passed fds (MSG_CTRUNC): this process is at its open-file limit (RLIMIT_NOFILE); raise ulimit -n or close fds, then restart the container to prepare again',
          { cause: err },
        );
      });
      fds.push(...msg.fds);
      if (msg.data.length === 0) break;
      chunks.push(msg.data);
      length += msg.data.length;
      if (length > MAX_RESPONSE_BYTES) throw new HandoffClaimError('PVDP_HANDOFF_MALFORMED', `The response is longer than ${MAX_RESPONSE_BYTES} bytes`);
      if (msg.data.includes(0x0a)) {
        const all = Buffer.concat(chunks);
        line = all.subarray(0, all.indexOf(0x0a));
        break;
      }
    }
    if (line === null) throw closedEarly(sendError);
    let response: { result?: unknown; error?: { code?: unknown; message?: unknown }; description?: unknown };
    try {
      response = JSON.parse(line.toString('utf8')) as typeof response;
    } catch {
      throw new HandoffClaimError('PVDP_HANDOFF_MALFORMED', 'The plugin answered with something that is not JSON');
    }
    if (response.result === 'error') {
      const code = typeof response.error?.code === 'string' ? response.error.code : 'PVDP_HANDOFF_INTERNAL';
      const message = typeof response.error?.message === 'string' ? response.error.message : 'The plugin refused the claim';
      throw new HandoffClaimError(code, message);
    }
    if (response.result !== 'claimed') throw new HandoffClaimError('PVDP_HANDOFF_MALFORMED', 'The answer is neither "claimed" nor "error"');
    let description: HandoffDescription;
    try {
      description = validateDescription(response.description, fds.length);
    } catch (err) {
      if (err instanceof HandoffProtocolError) throw new HandoffClaimError(err.code, err.message);
      throw err;
    }
    const result: ClaimResult = {
      fds: {
        container: fds[FD_INDEX_CONTAINER]!,
        memory: fds[FD_INDEX_MEMORY]!,
        groups: fds.slice(FD_INDEX_FIRST_GROUP),
      },
      description,
    };
    return result;
  } catch (err) {
    for (const received of fds) await transport.closeFd(received).catch(() => undefined);
    throw err;
  }
}

/** All claimed fds, in wire order. */
export function claimedFdList(fds: ClaimedFds): number[] {
  return [fds.container, fds.memory, ...fds.groups];
}
