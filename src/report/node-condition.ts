// The Node condition of our own type: what it should say for a snapshot, when it last changed
// status (kept across plugin restarts when the status did not change), and the patch that says it.
import { PatchStrategy, type CoreV1Api, type V1Node } from '@kubernetes/client-node';
import { conditionFor, type ConditionState } from './node-report.js';
import { REPORTING_COMPONENT, type ReporterRequests } from './reporter-requests.js';
import type { NodeSnapshot } from './snapshot.js';

export class NodeConditionReport {
  // Versioned so a change made while a request is in flight is sent again.
  private condition: ConditionState | null = null;
  private transitionAt: Date | null = null;
  private version = 0;
  private sent = 0;
  private transitionAdopted = false;

  constructor(
    readonly conditionType: string,
    private readonly nodeName: string,
    private readonly now: () => Date,
  ) {}

  /** The node shows the latest condition. */
  get synced(): boolean {
    return this.sent === this.version;
  }

  update(snapshot: NodeSnapshot): void {
    const next = conditionFor(snapshot);
    const current = this.condition;
    if (!current || current.status !== next.status) {
      this.transitionAt = this.now();
      // A transition of our own overrides whatever time the node showed.
      if (current) this.transitionAdopted = true;
    }
    if (!current || current.status !== next.status || current.reason !== next.reason || current.message !== next.message) {
      this.condition = next;
      this.version += 1;
    }
  }

  /** Rewrites the condition with a new lastHeartbeatTime. */
  heartbeat(): void {
    this.version += 1;
  }

  /** Takes what the node showed: after a plugin restart the condition keeps its transition time when the status did not change. */
  adopt(node: V1Node): void {
    const existing = node.status?.conditions?.find((c) => c.type === this.conditionType);
    if (!this.transitionAdopted && existing && this.condition && existing.status === this.condition.status && existing.lastTransitionTime) {
      const at = new Date(existing.lastTransitionTime);
      if (!Number.isNaN(at.getTime())) this.transitionAt = at;
    }
    this.transitionAdopted = true;
  }

  /** Patches the node's status; true when a condition was written. */
  async write(api: CoreV1Api, requests: ReporterRequests): Promise<boolean> {
    const condition = this.condition;
    if (!condition) return false;
    const version = this.version;
    const body = {
      status: {
        conditions: [
          {
            type: this.conditionType,
            status: condition.status,
            reason: condition.reason,
            message: condition.message,
            lastHeartbeatTime: this.now().toISOString(),
            lastTransitionTime: (this.transitionAt ?? this.now()).toISOString(),
          },
        ],
      },
    };
    await requests.call(
      'patchNodeStatus',
      (o) => api.patchNodeStatus({ name: this.nodeName, body, fieldManager: REPORTING_COMPONENT }, o),
      PatchStrategy.StrategicMergePatch,
    );
    this.sent = version;
    return true;
  }
}
