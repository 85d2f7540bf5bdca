// The plugin's errors: a small hierarchy with stable string codes that
// operators and tests can match on. Messages say what, which device, and the remedy.

export type PluginErrorCode =
  | 'PVDP_ERR_CONFIG'
  | 'PVDP_ERR_USAGE'
  | 'PVDP_ERR_INVALID_REQUEST'
  | 'PVDP_ERR_UNKNOWN_DEVICE'
  | 'PVDP_ERR_DUPLICATE_DEVICE'
  | 'PVDP_ERR_DEVICE_UNHEALTHY'
  | 'PVDP_ERR_PREPARATION'
  | 'PVDP_ERR_REGISTRATION'
  | 'PVDP_ERR_STARTUP';

export class PluginError extends Error {
  readonly code: PluginErrorCode;
  constructor(code: PluginErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A configuration file or flag that cannot be used; `problems` has one line per bad field. */
export class ConfigError extends PluginError {
  readonly problems: string[];
  constructor(message: string, problems: string[]) {
    super('PVDP_ERR_CONFIG', message);
    this.problems = problems;
  }
}

export class UsageError extends PluginError {
  constructor(message: string) {
    super('PVDP_ERR_USAGE', message);
  }
}

/**
 * A kubelet request that cannot be honoured. `kind` picks the gRPC status:
 * `invalid` (malformed, unknown, duplicate IDs) or `precondition` (the device is
 * known but not fit to use now).
 */
export class RequestError extends PluginError {
  readonly kind: 'invalid' | 'precondition';
  constructor(
    code: Extract<PluginErrorCode, 'PVDP_ERR_INVALID_REQUEST' | 'PVDP_ERR_UNKNOWN_DEVICE' | 'PVDP_ERR_DUPLICATE_DEVICE' | 'PVDP_ERR_DEVICE_UNHEALTHY' | 'PVDP_ERR_PREPARATION'>,
    kind: 'invalid' | 'precondition',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.kind = kind;
  }
}
