import { describe, expect, it } from 'vitest';
import { register as defaultRegistry } from 'prom-client';
import { createMetrics, errnoLabel, registrationReasonLabel } from '../../src/report/metrics.js';

describe('plugin metrics', () => {
  it('exposes every series the plugin updates, on its own registry', async () => {
    const m = createMetrics({ version: '0.1.0', processMetrics: false });
    m.setDevices({
      resources: [
        { name: 'ibm.com/nvme', devices: [{ id: '1', healthy: true }, { id: '2', healthy: false, reason: 'frozen' }] },
        { name: 'ibm.com/nic', devices: [{ id: '7', healthy: true }] },
      ],
    });
    m.countAllocation('ibm.com/nvme', 2);
    m.observePreparation('ibm.com/nvme', 'verify', 'success', 0.042);
    await expect(m.timePreparation('ibm.com/nvme', 'handoff', async () => { throw new Error('ENOMEM'); })).rejects.toThrow('ENOMEM');
    m.countIoctlError('VFIO_IOMMU_MAP_DMA', 'ENOSPC');
    m.countIoctlError('VFIO_SET_IOMMU', 16);
    expect(m.countIoctlErrorFrom({ ioctl: 'VFIO_IOMMU_ENABLE', code: 'EPERM', errno: -1 })).toBe(true);
    expect(m.countIoctlErrorFrom(new Error('plain'))).toBe(false);
    m.countRegistration('ibm.com/nvme', 'start');
    m.countRegistration('ibm.com/nvme', 'our socket was removed (kubelet restart)');
    m.countKubeletRestart();
    m.setApiReportingState('degraded');
    m.countApiRequestError('forbidden', 'patchNodeStatus');

    const text = await m.text();
    expect(m.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const line of [
      'power_vfio_devices{resource="ibm.com/nvme",health="Healthy"} 1',
      'power_vfio_devices{resource="ibm.com/nvme",health="Unhealthy"} 1',
      'power_vfio_devices{resource="ibm.com/nic",health="Unhealthy"} 0',
      'power_vfio_allocations_total{resource="ibm.com/nvme"} 2',
      'power_vfio_preparations_total{resource="ibm.com/nvme",mode="verify",result="success"} 1',
      'power_vfio_preparations_total{resource="ibm.com/nvme",mode="handoff",result="failure"} 1',
      'power_vfio_preparation_duration_seconds_bucket{le="0.05",resource="ibm.com/nvme",mode="verify",result="success"} 1',
      'power_vfio_preparation_duration_seconds_count{resource="ibm.com/nvme",mode="verify",result="success"} 1',
      'power_vfio_ioctl_errors_total{ioctl="VFIO_IOMMU_MAP_DMA",errno="ENOSPC"} 1',
      'power_vfio_ioctl_errors_total{ioctl="VFIO_SET_IOMMU",errno="EBUSY"} 1',
      'power_vfio_ioctl_errors_total{ioctl="VFIO_IOMMU_ENABLE",errno="EPERM"} 1',
      'power_vfio_registrations_total{resource="ibm.com/nvme",reason="start"} 1',
      'power_vfio_registrations_total{resource="ibm.com/nvme",reason="kubelet_restart"} 1',
      'power_vfio_kubelet_restarts_total 1',
      'power_vfio_api_reporting_state{state="degraded"} 1',
      'power_vfio_api_reporting_state{state="ok"} 0',
      'power_vfio_api_request_errors_total{kind="forbidden",operation="patchNodeStatus"} 1',
      `power_vfio_build_info{version="0.1.0",node_version="${process.version}",arch="${process.arch}"} 1`,
    ]) {
      expect(text).toContain(line);
    }
    expect(text).not.toContain('process_cpu');
    // Nothing leaked into prom-client's global registry.
    expect(await defaultRegistry.metrics()).not.toContain('power_vfio_');
  });

  it('follows devices that recover or vanish, counting health transitions', async () => {
    const m = createMetrics({ version: 'test', processMetrics: false });
    m.setDevices({ resources: [{ name: 'ibm.com/nvme', devices: [{ id: '1', healthy: true }, { id: '2', healthy: true }] }] });
    m.setDevices({ resources: [{ name: 'ibm.com/nvme', devices: [{ id: '1', healthy: false }, { id: '2', healthy: true }] }] });
    m.setDevices({ resources: [{ name: 'ibm.com/nvme', devices: [{ id: '1', healthy: true }] }] });
    const text = await m.text();
    expect(text).toContain('power_vfio_devices{resource="ibm.com/nvme",health="Healthy"} 1');
    expect(text).toContain('power_vfio_devices{resource="ibm.com/nvme",health="Unhealthy"} 0');
    expect(text).toContain('power_vfio_device_health_transitions_total{resource="ibm.com/nvme",health="Unhealthy"} 1');
    expect(text).toContain('power_vfio_device_health_transitions_total{resource="ibm.com/nvme",health="Healthy"} 1');
  });

  it('adds process metrics when asked, and two instances do not collide', async () => {
    const a = createMetrics({ version: 'a' });
    const b = createMetrics({ version: 'b' });
    expect(await a.text()).toContain('power_vfio_process_cpu_user_seconds_total');
    expect(await b.text()).toContain('power_vfio_build_info{version="b"');
  });

  it('maps labels to small sets', () => {
    expect(registrationReasonLabel('start')).toBe('start');
    expect(registrationReasonLabel('retry')).toBe('retry');
    expect(registrationReasonLabel('ListAndWatch stream ended')).toBe('stream_ended');
    expect(registrationReasonLabel('a new kubelet socket appeared')).toBe('kubelet_restart');
    expect(registrationReasonLabel('kubelet socket appeared')).toBe('kubelet_appeared');
    expect(registrationReasonLabel('something else')).toBe('other');
    expect(errnoLabel(-22)).toBe('EINVAL');
    expect(errnoLabel(0)).toBe('unknown');
    expect(errnoLabel('ERR_VFIO_UNEXPECTED_RETURN')).toBe('ERR_VFIO_UNEXPECTED_RETURN');
  });
});
