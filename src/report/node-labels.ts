// The node's labels under our prefix: the capabilities and device count we want shown, and the
// labels we set earlier that must go when no longer wanted.
import { PatchStrategy, type CoreV1Api, type V1Node } from '@kubernetes/client-node';
import { LABEL_PREFIX, labelsFor } from './node-report.js';
import { REPORTING_COMPONENT, type ReporterRequests } from './reporter-requests.js';
import type { NodeCapabilities } from './snapshot.js';

export class NodeLabelsReport {
  private labels: Record<string, string> | null = null;
  private version = 0;
  private sent = 0;
  /** Labels under our prefix on the node, to remove the ones we no longer want. */
  private owned = new Set<string>();

  constructor(private readonly nodeName: string) {}

  /** The node shows the labels we want. */
  get synced(): boolean {
    return this.sent === this.version;
  }

  update(capabilities: NodeCapabilities, deviceCount: number): void {
    const labels = labelsFor(capabilities, deviceCount);
    if (JSON.stringify(labels) !== JSON.stringify(this.labels)) {
      this.labels = labels;
      this.version += 1;
    }
  }

  /** Takes the labels the node shows under our prefix. */
  adopt(node: V1Node): void {
    this.owned = new Set(Object.keys(node.metadata?.labels ?? {}).filter((k) => k.startsWith(LABEL_PREFIX)));
    // Labels we own that are not wanted must go, even if our wish did not change.
    this.sent = -1;
  }

  async write(api: CoreV1Api, requests: ReporterRequests): Promise<void> {
    const desired = this.labels;
    if (!desired) return;
    const version = this.version;
    const patch: Record<string, string | null> = { ...desired };
    for (const key of this.owned) if (!(key in desired)) patch[key] = null;
    await requests.call(
      'patchNodeLabels',
      (o) => api.patchNode({ name: this.nodeName, body: { metadata: { labels: patch } }, fieldManager: REPORTING_COMPONENT }, o),
      PatchStrategy.MergePatch,
    );
    this.owned = new Set(Object.keys(desired));
    this.sent = version;
  }
}
