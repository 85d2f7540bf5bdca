// Serving the claim: the socket in each of a slot's directories, the one claim it answers (the
// fds and the description), the refusals it gives otherwise, and the claim timeout that releases
// a preparation nobody claimed.
import { join } from 'node:path';
import type { Logger } from '../log.js';
import type { HandoffPayload } from './payload.js';
import { HANDOFF_PROTOCOL_VERSION, HANDOFF_SOCKET_NAME, encodeResponse } from './protocol.js';
import { HandoffEndpoint, sendError, type EndpointLimits } from './server.js';
import { releasePayload, serial, type Slot } from './slots.js';
import type { HandoffConnection, HandoffTransport } from './transport.js';

/** What serving needs from the manager. */
export interface ClaimServing {
  logger: Logger;
  transport: HandoffTransport;
  limits: EndpointLimits | undefined;
  claimTimeoutMs(slot: Slot): number;
}

/**
 * Opens the socket of every directory of a ready slot, while it stays ready (a claim or a release
 * may come while they open). Returns the error that stopped it, if any.
 */
export async function listenForClaim(s: ClaimServing, slot: Slot, payload: HandoffPayload): Promise<Error | null> {
  const stillReady = () => slot.state === 'ready' && slot.payload === payload;
  for (const a of slot.allocations) {
    if (!stillReady()) break;
    const endpoint = (a.endpoint ??= new HandoffEndpoint(join(a.socketDir, HANDOFF_SOCKET_NAME), s.transport, { claim: (c) => claim(s, slot, c) }, s.logger, s.limits));
    try {
      await endpoint.listen();
    } catch (err) {
      if (a.endpoint === endpoint) a.endpoint = null;
      return err as Error;
    }
    if (!stillReady()) {
      // Claimed (or released) while this one was being opened: it must not stay open.
      await endpoint.close();
      if (a.endpoint === endpoint) a.endpoint = null;
      break;
    }
  }
  return null;
}

export function armClaimTimer(s: ClaimServing, slot: Slot, payload: HandoffPayload, timeoutMs: number): void {
  if (slot.timer) clearTimeout(slot.timer);
  slot.timer = setTimeout(() => {
    slot.timer = null;
    void serial(slot, async () => {
      // A claim in flight decides first: if its send fails the preparation is ready again and goes now.
      if (slot.claiming) await slot.claiming;
      if (slot.state !== 'ready' || slot.payload !== payload) return;
      await releasePayload(slot, `nobody claimed it within the claim timeout of ${timeoutMs / 1000} s`, s.logger);
    }).catch((err: unknown) => s.logger.error({ key: slot.key, err: (err as Error).message }, 'Releasing an unclaimed handoff failed'));
  }, timeoutMs);
  slot.timer.unref();
}

async function claim(s: ClaimServing, slot: Slot, connection: HandoffConnection): Promise<void> {
  switch (slot.state) {
    case 'claimed':
    case 'claiming':
      await sendError(connection, 'PVDP_HANDOFF_ALREADY_CLAIMED', `The preparation of group(s) ${slot.groups.join(', ')} was already claimed; restart the container to prepare again`);
      return;
    case 'released':
      await sendError(connection, 'PVDP_HANDOFF_RELEASED', `The preparation of group(s) ${slot.groups.join(', ')} was released: ${slot.reason}; restart the container to prepare again`);
      return;
    case 'failed':
      await sendError(connection, 'PVDP_HANDOFF_RELEASED', `The preparation of group(s) ${slot.groups.join(', ')} failed: ${slot.reason}`);
      return;
    case 'allocated':
    case 'preparing':
      await sendError(connection, 'PVDP_HANDOFF_NOT_READY', `The preparation of group(s) ${slot.groups.join(', ')} is not ready yet; retry shortly`);
      return;
    case 'ready':
      break;
  }
  const payload = slot.payload!;
  slot.state = 'claiming';
  let done!: () => void;
  slot.claiming = new Promise<void>((resolve) => (done = resolve));
  try {
    const response = encodeResponse({ protocol: HANDOFF_PROTOCOL_VERSION, result: 'claimed', description: payload.description });
    try {
      await connection.send(response, payload.fds);
    } catch (err) {
      if ((err as { fdsDelivered?: unknown }).fdsDelivered !== true) {
        // Nothing went out: the preparation stays available, under its claim timeout.
        slot.state = 'ready';
        if (!slot.timer) armClaimTimer(s, slot, payload, s.claimTimeoutMs(slot));
        s.logger.warn({ key: slot.key, err: (err as Error).message }, 'Sending a claimed handoff failed; it stays available');
        return;
      }
      // The fds went out: the claimer holds them, so this is the claim, answered or not.
      s.logger.warn({ key: slot.key, err: (err as Error).message }, 'The claimer got the fds but not the whole answer; the claim stands');
    }
    slot.state = 'claimed';
    slot.claims += 1;
    slot.payload = null;
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = null;
    // Stop accepting first, so a late client finds no socket rather than a refusal.
    for (const a of slot.allocations) {
      await a.endpoint?.close();
      a.endpoint = null;
    }
    try {
      await payload.handedOver();
    } catch (err) {
      s.logger.error({ key: slot.key, err: (err as Error).message }, 'Closing the plugin\'s copies after a claim failed');
    }
    s.logger.info({ resource: slot.resourceName, groups: slot.groups }, 'Handoff claimed; the plugin holds nothing of it now');
  } finally {
    slot.claiming = null;
    done();
  }
}
