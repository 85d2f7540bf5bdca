// The node daemon: discovery feeds selection, selection feeds one kubelet
// server per resource. Dependencies come in from the caller (the CLI, the
// demo, tests), so each room is used only through its interface.
import type { Logger } from './log.js';
import type { Settings } from './config/settings.js';
import type { Topology, TopologyChange } from './topology/types.js';
import { TopologyWatcher } from './topology/discover.js';
import { PluginManager, type Preparer } from './kubelet/plugin-manager.js';
import { CdiSpecWriter } from './cdi/spec-writer.js';

export interface DaemonDeps {
  logger: Logger;
  /** Runs in PreStartContainer for resources whose mode is verify or handoff. */
  preparer?: Preparer;
  /** Device-plugins directory polling interval (safety net behind the directory watch). */
  socketCheckIntervalMs?: number;
}

export class Daemon {
  readonly settings: Settings;
  readonly manager: PluginManager;
  private readonly watcher: TopologyWatcher;
  private readonly logger: Logger;
  private issuesText = '';

  constructor(settings: Settings, deps: DaemonDeps) {
    this.settings = settings;
    this.logger = deps.logger;
    this.watcher = new TopologyWatcher(
      { sysfsRoot: settings.sysfsRoot, devRoot: settings.devRoot },
      { pollIntervalMs: settings.pollIntervalMs, logger: deps.logger.child({ room: 'topology' }) },
    );
    this.manager = new PluginManager({
      pluginDir: settings.devicePluginDir,
      resources: settings.resources,
      logger: deps.logger,
      ...(deps.preparer ? { preparer: deps.preparer } : {}),
      ...(deps.socketCheckIntervalMs ? { checkIntervalMs: deps.socketCheckIntervalMs } : {}),
      ...(settings.cdiSpecDir ? { cdi: new CdiSpecWriter(settings.cdiSpecDir) } : {}),
    });
  }

  topology(): Topology {
    return this.watcher.current();
  }

  /** Discovers, then serves and registers every resource. */
  async start(): Promise<Topology> {
    this.watcher.on('change', (change: TopologyChange) => this.onChange(change));
    const topology = await this.watcher.start();
    this.logTopology(topology);
    this.manager.applyTopology(topology);
    await this.manager.start();
    return topology;
  }

  /** Rescans now (tests and operators' SIGHUP). */
  async refresh(): Promise<void> {
    await this.watcher.refresh();
  }

  private onChange(change: TopologyChange): void {
    this.logger.info(
      { added: change.added, removed: change.removed, changed: change.changed },
      'IOMMU groups changed',
    );
    this.logTopology(change.topology);
    this.manager.applyTopology(change.topology);
  }

  private logTopology(topology: Topology): void {
    const text = JSON.stringify(topology.issues);
    if (text === this.issuesText) return;
    this.issuesText = text;
    for (const issue of topology.issues) {
      this.logger.warn({ path: issue.path, group: issue.group }, `Skipped part of the sysfs tree: ${issue.message}`);
    }
  }

  async stop(): Promise<void> {
    await this.watcher.stop();
    await this.manager.stop();
  }
}
