// Public face of the binding room: moving IOMMU groups between host drivers and vfio-pci.
export { GroupBinder, writeAttribute, VFIO_PCI, type GroupBinderOptions } from './group-binder.js';
export { hostUse } from './in-use.js';
export { BindingError, type FunctionDriver, type GroupInspection, type SysfsWriter } from './types.js';
