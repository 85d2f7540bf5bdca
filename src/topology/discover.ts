// Public face of the topology room: discovery, diffing and the watcher.
export type { DiscoverOptions, GroupScanResult, GroupListing } from './scan.js';
export {
  discoverTopology,
  discoverGroup,
  groupFingerprint,
  fingerprintGroups,
  groupProblems,
  hostDriverProblem,
  devNodeProblem,
  groupDevNodePath,
  iommuGroupsDir,
  pciDevicesDir,
  vfioDevDir,
  listGroupIds,
  listVfioDevNodes,
} from './scan.js';
export { diffTopologies, groupsEqual, isEmptyChange, emptyTopology } from './diff.js';
export { TopologyWatcher } from './watcher.js';
export type { TopologyWatcherOptions, TopologyWatcherStats } from './watcher.js';
export * from './parse.js';
