// Checks of host paths made once at start-up, before anything is created, so
// a wrong path is one clear line instead of a retry loop of raw errno.
import { stat } from 'node:fs/promises';
import { DEFAULT_DEVICE_PLUGIN_DIR } from '../kubelet/proto.js';
import { StartupError } from './lifecycle.js';

/**
 * The device-plugins directory: present, or missing (the kubelet creates it
 * when it starts, so the daemon waits for it). Anything else is refused.
 */
export async function checkDevicePluginDir(dir: string, label: string): Promise<'present' | 'missing'> {
  const remedy = `point ${label} at the kubelet's device-plugins directory (${DEFAULT_DEVICE_PLUGIN_DIR} unless the kubelet runs with another --root-dir)`;
  try {
    const s = await stat(dir);
    if (s.isDirectory()) return 'present';
    throw new StartupError(`The device-plugins directory ${dir} (${label}) is not a directory: ${remedy}`);
  } catch (err) {
    if (err instanceof StartupError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'missing';
    if (code === 'ENOTDIR') throw new StartupError(`The device-plugins directory ${dir} (${label}) is under a file, not a directory: ${remedy}`);
    if (code === 'EACCES') throw new StartupError(`The device-plugins directory ${dir} (${label}) cannot be reached (EACCES): run the plugin as root, as the kubelet's directories are root's`);
    throw new StartupError(`The device-plugins directory ${dir} (${label}) cannot be checked (${code ?? (err as Error).message}): ${remedy}`);
  }
}
