// Moving the functions of an IOMMU group between their host drivers and
// vfio-pci through sysfs, as an operator does with driver_override and
// drivers_probe. Plain types; the sysfs work is in group-binder.ts.

/** One function and the driver it is on; what a rebinding records before it writes anything. */
export interface FunctionDriver {
  /** `0030:01:00.0`. */
  address: string;
  /** The bound driver, null when unbound. */
  driver: string | null;
  /** `driver_override`, null when unset (`(null)`). */
  driverOverride: string | null;
  /** Bridges are left where they are. */
  isBridge: boolean;
}

/** What a group looks like now and what stops taking it from the host; `blockers` is empty when it can be taken. */
export interface GroupInspection {
  group: number;
  functions: FunctionDriver[];
  blockers: string[];
}

/**
 * Writes one sysfs attribute. Production writes the real file; a simulated
 * node passes a writer that also does what the kernel does on that write.
 */
export type SysfsWriter = (path: string, value: string) => Promise<void>;

/** A rebinding that failed; the functions were rolled back as far as they could be. */
export class BindingError extends Error {
  constructor(
    message: string,
    readonly group: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BindingError';
  }
}
