// How the node reporter waits after a failed attempt, and what it logs about the failure's kind.
import type { ApiErrorKind } from './api-errors.js';

export interface BackoffSettings {
  /** First retry delay; default 1000 ms. */
  initialMs?: number;
  /** Largest retry delay; default 60 000 ms. */
  maxMs?: number;
  /** Growth per failure; default 2. */
  factor?: number;
  /** Fraction of the delay randomised either way; default 0.2. */
  jitter?: number;
}

export function backoffWithDefaults(settings: BackoffSettings | undefined): Required<BackoffSettings> {
  return {
    initialMs: settings?.initialMs ?? 1000,
    maxMs: settings?.maxMs ?? 60_000,
    factor: settings?.factor ?? 2,
    jitter: settings?.jitter ?? 0.2,
  };
}

/** Exponential, capped, with jitter either way (capped again). */
export function backoffDelay(settings: Required<BackoffSettings>, failures: number, random: () => number): number {
  const { initialMs, maxMs, factor, jitter } = settings;
  const base = Math.min(maxMs, initialMs * factor ** Math.max(0, failures - 1));
  const spread = base * jitter * (random() * 2 - 1);
  return Math.max(0, Math.min(maxMs, Math.round(base + spread)));
}

/** The log line for a failure of each kind, with the remedy where there is one. */
export const TRANSIENT_MESSAGES: Record<ApiErrorKind, string> = {
  unreachable: 'Kubernetes API unreachable',
  timeout: 'Kubernetes API did not answer in time',
  unauthorized: 'Kubernetes API rejected our credentials',
  forbidden: 'Kubernetes API forbids node reporting; check the ClusterRole (nodes get/patch, nodes/status patch, events create/patch)',
  notFound: 'Kubernetes API does not know this node; check the node name (NODE_NAME from spec.nodeName)',
  conflict: 'Kubernetes API reported a conflict',
  throttled: 'Kubernetes API is throttling us',
  serverError: 'Kubernetes API failed with a server error',
  clientError: 'Kubernetes API refused a request',
  config: 'Kubernetes API configuration is unusable',
};
