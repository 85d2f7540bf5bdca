// The handoff protocol, version 1 (docs/handoff-protocol.md): what travels over
// the per-allocation unix socket. One JSON line each way; the claimed fds ride
// on the response by SCM_RIGHTS in a fixed order (container, memory, groups).
// 64-bit quantities are "0x..." strings: JSON numbers lose precision past 2^53
// and windows start at 1<<59 on powernv.

export const HANDOFF_PROTOCOL_VERSION = 1;
export const SUPPORTED_PROTOCOL_VERSIONS: readonly number[] = [HANDOFF_PROTOCOL_VERSION];
/** The socket's file name inside the per-allocation socket directory. */
export const HANDOFF_SOCKET_NAME = 'handoff.sock';
/**
 * The per-allocation layout on the host: `<hostDir>/alloc-<16 hex>/` (0700, never
 * mounted) holds the plugin's record; only its `sock/` subdirectory, which holds
 * nothing but the socket, is mounted into the container, read-only.
 */
export const HANDOFF_SOCKET_DIR = 'sock';
/** The plugin's record of an allocation, next to (not inside) the mounted directory. */
export const HANDOFF_RECORD_NAME = 'record.json';
/** Bytes a handoff socket path adds to the host directory: `/alloc-<16 hex>/sock/handoff.sock`. */
export const HANDOFF_SOCKET_SUFFIX_BYTES = Buffer.byteLength(`/alloc-${'0'.repeat(16)}/${HANDOFF_SOCKET_DIR}/${HANDOFF_SOCKET_NAME}`);
/** Longest request line the plugin reads, newline included. */
export const MAX_REQUEST_BYTES = 4096;
/** Longest response line a client should accept. */
export const MAX_RESPONSE_BYTES = 1 << 20;
/** The fd order on the wire: index 0 container, 1 memory, 2.. groups in description order. */
export const FD_INDEX_CONTAINER = 0;
export const FD_INDEX_MEMORY = 1;
export const FD_INDEX_FIRST_GROUP = 2;

export type HandoffErrorCode =
  | 'PVDP_HANDOFF_MALFORMED'
  | 'PVDP_HANDOFF_TOO_LARGE'
  | 'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL'
  | 'PVDP_HANDOFF_UNKNOWN_REQUEST'
  | 'PVDP_HANDOFF_ALREADY_CLAIMED'
  | 'PVDP_HANDOFF_RELEASED'
  | 'PVDP_HANDOFF_NOT_READY'
  | 'PVDP_HANDOFF_BUSY'
  | 'PVDP_HANDOFF_INTERNAL';

export interface ClaimRequest {
  protocol: number;
  request: 'claim';
}

export interface HandoffRange {
  /** Bus address the device uses. */
  iova: string;
  size: string;
  /** Offset of the range in the memory fd: mmap(memoryFd, offset) is what the device sees at iova. */
  offset: string;
}

export interface HandoffGroup {
  group: number;
  /** Index of the group's fd in the received fd list. */
  fdIndex: number;
  /** PCI addresses of every function in the group. */
  functions: string[];
}

/** What the claimer receives next to the fds. */
export interface HandoffDescription {
  protocol: number;
  resource: string;
  iommu: {
    /** `spapr-tce-v2` or `spapr-tce` (v1). */
    type: 'spapr-tce-v2' | 'spapr-tce';
    /** The VFIO_SET_IOMMU value (7 for v2, 2 for v1). */
    value: number;
  };
  window: {
    start: string;
    size: string;
    /** log2 of the IOMMU page size. */
    pageShift: number;
    pageSize: string;
    /** True when the plugin created the window (v2); false for the platform's dma32 window (v1). */
    created: boolean;
  };
  memory: {
    fdIndex: number;
    size: string;
    /** Backing page size (kernel page or huge page). */
    pageSize: string;
    hugetlb: boolean;
  };
  container: { fdIndex: number };
  groups: HandoffGroup[];
  ranges: HandoffRange[];
  /** Names of the fds in order: `container`, `memory`, `group:<N>`. */
  fds: string[];
}

export interface ClaimResponse {
  protocol: number;
  result: 'claimed';
  description: HandoffDescription;
}

export interface ErrorResponse {
  protocol: number;
  result: 'error';
  error: { code: HandoffErrorCode; message: string; supportedProtocols?: number[] };
}

export type HandoffResponse = ClaimResponse | ErrorResponse;

export function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/** Parses a "0x..." quantity; throws on anything else. */
export function parseHex(text: unknown, what: string): bigint {
  if (typeof text !== 'string' || !/^0x[0-9a-fA-F]{1,16}$/.test(text)) {
    throw new HandoffProtocolError('PVDP_HANDOFF_MALFORMED', `${what} must be a hex string like "0x1000", not ${JSON.stringify(text)?.slice(0, 40)}`);
  }
  return BigInt(text);
}

/** A protocol-level failure: the code travels in the JSON error. */
export class HandoffProtocolError extends Error {
  readonly code: HandoffErrorCode;
  constructor(code: HandoffErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HandoffProtocolError';
    this.code = code;
  }
}

/** The request line a client sends. */
export function encodeClaimRequest(protocol = HANDOFF_PROTOCOL_VERSION): Buffer {
  return Buffer.from(`${JSON.stringify({ protocol, request: 'claim' })}\n`);
}

/** Parses one request line (without or with its newline); throws HandoffProtocolError. */
export function parseClaimRequest(line: Buffer): ClaimRequest {
  const text = line.toString('utf8').replace(/\r?\n$/, '');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new HandoffProtocolError('PVDP_HANDOFF_MALFORMED', 'The request is not JSON: send {"protocol":1,"request":"claim"} followed by a newline');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new HandoffProtocolError('PVDP_HANDOFF_MALFORMED', 'The request must be a JSON object: {"protocol":1,"request":"claim"}');
  }
  const request = value as Record<string, unknown>;
  if (!Number.isInteger(request['protocol'])) {
    throw new HandoffProtocolError('PVDP_HANDOFF_MALFORMED', 'The request has no integer "protocol" field');
  }
  if (!SUPPORTED_PROTOCOL_VERSIONS.includes(request['protocol'] as number)) {
    throw new HandoffProtocolError(
      'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL',
      `Protocol version ${String(request['protocol'])} is not supported; this plugin speaks ${SUPPORTED_PROTOCOL_VERSIONS.join(', ')}`,
    );
  }
  if (request['request'] !== 'claim') {
    throw new HandoffProtocolError('PVDP_HANDOFF_UNKNOWN_REQUEST', `Unknown request ${JSON.stringify(request['request'])?.slice(0, 40)}: the only request is "claim"`);
  }
  return { protocol: request['protocol'] as number, request: 'claim' };
}

export function encodeResponse(response: HandoffResponse): Buffer {
  return Buffer.from(`${JSON.stringify(response)}\n`);
}

export function errorResponse(code: HandoffErrorCode, message: string): ErrorResponse {
  return {
    protocol: HANDOFF_PROTOCOL_VERSION,
    result: 'error',
    error: { code, message, ...(code === 'PVDP_HANDOFF_UNSUPPORTED_PROTOCOL' ? { supportedProtocols: [...SUPPORTED_PROTOCOL_VERSIONS] } : {}) },
  };
}

/**
 * Checks a received description against the fds that came with it; returns it
 * typed. Clients call this before trusting any field.
 */
export function validateDescription(value: unknown, fdCount: number): HandoffDescription {
  const bad = (why: string): never => {
    throw new HandoffProtocolError('PVDP_HANDOFF_MALFORMED', `The handoff description is invalid: ${why}`);
  };
  if (typeof value !== 'object' || value === null) return bad('not an object');
  const d = value as HandoffDescription;
  if (d.protocol !== HANDOFF_PROTOCOL_VERSION) bad(`protocol ${String(d.protocol)}`);
  if (!d.window || !d.memory || !d.container || !Array.isArray(d.groups) || !Array.isArray(d.ranges) || !Array.isArray(d.fds)) {
    bad('window, memory, container, groups, ranges and fds are required');
  }
  // Every field a workload reads is checked here, so no client meets `undefined` later.
  if (typeof d.resource !== 'string') bad('resource must be a string');
  if (typeof d.iommu !== 'object' || d.iommu === null || (d.iommu.type !== 'spapr-tce-v2' && d.iommu.type !== 'spapr-tce') || !Number.isInteger(d.iommu.value)) {
    bad('iommu must name spapr-tce-v2 or spapr-tce with its integer value');
  }
  if (!Number.isInteger(d.window.pageShift) || d.window.pageShift < 0 || d.window.pageShift > 63) bad('window.pageShift must be an integer from 0 to 63');
  if (typeof d.window.created !== 'boolean' || typeof d.memory.hugetlb !== 'boolean') bad('window.created and memory.hugetlb must be booleans');
  // Indexes, not every(): every() skips the holes of a sparse array.
  const allStrings = (list: unknown[]): boolean => Array.from(list).every((v) => typeof v === 'string');
  if (!allStrings(d.fds)) bad('fds must be names');
  const windowStart = parseHex(d.window.start, 'window.start');
  const windowSize = parseHex(d.window.size, 'window.size');
  const memorySize = parseHex(d.memory.size, 'memory.size');
  parseHex(d.memory.pageSize, 'memory.pageSize');
  if (d.fds.length !== fdCount) bad(`it names ${d.fds.length} fds but ${fdCount} arrived`);
  if (d.container.fdIndex !== FD_INDEX_CONTAINER || d.memory.fdIndex !== FD_INDEX_MEMORY) bad('unexpected fd order');
  Array.from(d.groups).forEach((g, i) => {
    if (typeof g !== 'object' || g === null || !Number.isInteger(g.group) || g.fdIndex !== FD_INDEX_FIRST_GROUP + i || !Array.isArray(g.functions)) bad(`groups[${i}]`);
    if (!allStrings(g.functions)) bad(`groups[${i}].functions must be PCI addresses`);
  });
  if (fdCount !== FD_INDEX_FIRST_GROUP + d.groups.length) bad(`${fdCount} fds for ${d.groups.length} groups`);
  for (const [i, r] of d.ranges.entries()) {
    if (typeof r !== 'object' || r === null) bad(`ranges[${i}] is not an object`);
    const iova = parseHex(r.iova, `ranges[${i}].iova`);
    const size = parseHex(r.size, `ranges[${i}].size`);
    const offset = parseHex(r.offset, `ranges[${i}].offset`);
    if (iova < windowStart || iova + size > windowStart + windowSize) bad(`ranges[${i}] lies outside the window`);
    if (offset + size > memorySize) bad(`ranges[${i}] lies outside the memory fd`);
  }
  return d;
}
