import { afterEach, describe, expect, it } from 'vitest';
import { Agent, request } from 'node:http';
import { createMetrics } from '../../src/report/metrics.js';
import { startProbeServer, type ProbeServer, type ReadinessInput } from '../../src/report/http-server.js';
import { NodeReporter } from '../../src/report/node-reporter.js';
import { startFakeApiServer } from '../../src/simulate/api-server.js';
import { until } from './support.js';

let server: ProbeServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

async function get(path: string, method = 'GET'): Promise<{ status: number; type: string | undefined; body: string }> {
  const res = await fetch(`${server?.url}${path}`, { method });
  return { status: res.status, type: res.headers.get('content-type') ?? undefined, body: await res.text() };
}

describe('the probe and metrics server', () => {
  it('serves /healthz, /metrics and /readyz on one port', async () => {
    const metrics = createMetrics({ version: '0.1.0', processMetrics: false });
    metrics.countKubeletRestart();
    const state: ReadinessInput = { discoveryDone: false, resources: [{ name: 'ibm.com/nvme', registered: false }, { name: 'ibm.com/nic', registered: true }] };
    server = await startProbeServer({ host: '127.0.0.1', port: 0, metrics, readiness: () => state });
    expect(server.port).toBeGreaterThan(0);

    expect(await get('/healthz')).toMatchObject({ status: 200, body: 'ok\n' });

    const m = await get('/metrics');
    expect(m.status).toBe(200);
    expect(m.type).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(m.body).toContain('power_vfio_kubelet_restarts_total 1');

    let r = await get('/readyz');
    expect(r.status).toBe(503);
    expect(r.type).toBe('application/json');
    expect(JSON.parse(r.body)).toEqual({
      ready: false,
      missing: ['The first discovery of IOMMU groups has not finished', 'Resource ibm.com/nvme is not registered with the kubelet'],
      resources: [
        { name: 'ibm.com/nvme', registered: false },
        { name: 'ibm.com/nic', registered: true },
      ],
    });

    state.discoveryDone = true;
    state.resources = [{ name: 'ibm.com/nvme', registered: true }, { name: 'ibm.com/nic', registered: true }];
    r = await get('/readyz');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ ready: true, missing: [] });

    expect((await get('/nope')).status).toBe(404);
    expect((await get('/readyz', 'POST')).status).toBe(405);
    expect(await get('/healthz', 'HEAD')).toMatchObject({ status: 200, body: '' });
  });

  it('stays ready while the Kubernetes API is down, and says so', async () => {
    const api = await startFakeApiServer();
    api.addNode('n1');
    await api.down();
    const reporter = new NodeReporter({ kubeConfig: api.kubeConfig(), nodeName: 'n1', backoff: { initialMs: 5, maxMs: 20 } });
    reporter.report({ resources: [{ name: 'ibm.com/nvme', devices: [{ id: '1', healthy: true }] }] });
    await until(() => reporter.status().state === 'degraded', 'degraded reporting');
    const metrics = createMetrics({ version: '0.1.0', processMetrics: false });
    server = await startProbeServer({
      host: '127.0.0.1',
      port: 0,
      metrics,
      readiness: () => ({ discoveryDone: true, resources: [{ name: 'ibm.com/nvme', registered: true }], apiReporting: reporter.status() }),
    });
    const r = await get('/readyz');
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body) as { ready: boolean; apiReporting: { state: string; lastError: { kind: string; operation: string } } };
    expect(body.ready).toBe(true);
    expect(body.apiReporting.state).toBe('degraded');
    expect(body.apiReporting.lastError).toMatchObject({ kind: 'unreachable', operation: 'getNode' });
    await reporter.stop();
    await api.close();
  });

  it('closes promptly with a keep-alive connection open', async () => {
    const metrics = createMetrics({ version: '0.1.0', processMetrics: false });
    server = await startProbeServer({ host: '127.0.0.1', port: 0, metrics, readiness: () => ({ discoveryDone: true, resources: [] }) });
    const port = server.port;
    await new Promise<void>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: '/healthz', agent: new Agent({ keepAlive: true }) }, (res) => {
        res.resume();
        res.on('end', () => resolve());
      });
      req.on('error', reject);
      req.end();
    });
    const started = Date.now();
    await server.close();
    server = null;
    // A kept-alive connection would hold close() for the server's 5 s keep-alive timeout.
    expect(Date.now() - started).toBeLessThan(3000);
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
  });
});
