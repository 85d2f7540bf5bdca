// The preparation room as the kubelet front ends see it. Both front ends call
// the same preparer; neither knows whether it runs ioctls or a simulation.
import type { ResourceConfig } from '../config/schema.js';
import type { IommuGroup } from '../topology/types.js';

/** Prepares groups before a container of `resource` starts (verify or handoff). Throws to refuse. */
export type Preparer = (resource: ResourceConfig, groups: IommuGroup[]) => Promise<void>;

/** A bind mount a preparation adds to the container (the handoff directory). */
export interface ContainerMount {
  container_path: string;
  host_path: string;
  read_only: boolean;
}

/** What a preparation mode adds to a container besides the device nodes (handoff: a mount and env). */
export interface AllocationExtra {
  envs?: Record<string, string>;
  mounts?: ContainerMount[];
}
