// What a preparation hands to the pod, and where preparations come from.
import type { ResourceConfig } from '../config/schema.js';
import type { IommuGroup } from '../topology/types.js';
import type { HandoffDescription } from './protocol.js';

/** What one preparation hands over. */
export interface HandoffPayload {
  description: HandoffDescription;
  /** The plugin's fds in wire order: container, memory, groups. */
  fds: number[];
  /** The fds were delivered: close the plugin's copies only; the kernel objects live on in the claimer. */
  handedOver(): Promise<void>;
  /** Nobody claimed: undo everything. */
  release(): Promise<void>;
}

/** Where the fds come from: the VFIO sequence on a node, anything fd-shaped in tests. */
export type HandoffSource = (resource: ResourceConfig, groups: IommuGroup[]) => Promise<HandoffPayload>;
