// Open file descriptions: close, the last reference's release, read and write by kind, and
// passing fds over a socket pair (SCM_RIGHTS), where a file outlives the fd that sent it.
import type { ReceivedMessage } from '../binding.js';
import { checkBytes, checkFd, checkLength, checkU64 } from '../validate.js';
import { detachGroup } from './container.js';
import { readDeviceRegion } from './groups.js';
import type { SimulatedKernel } from './kernel.js';
import { readMemfd, writeMemfd, type GroupFile, type OpenFile, type SocketFile } from './objects.js';
import type { ProcessCore } from './process-core.js';

export function close(p: ProcessCore, fd: number): void {
  checkFd('fd', fd);
  p.alive();
  const file = p.fds.get(fd);
  if (!file) {
    p.kernel.record({ pid: p.pid, op: 'close', fd, result: 'EBADF' });
    throw p.err('EBADF', 'close', fd);
  }
  p.fds.delete(fd);
  putFile(p.kernel, file);
  p.kernel.record({ pid: p.pid, op: 'close', fd, result: 'ok' });
}

/** @internal: drop one reference to an open file description; release at zero. */
export function putFile(kernel: SimulatedKernel, file: OpenFile): void {
  file.refs--;
  if (file.refs > 0) return;
  switch (file.kind) {
    case 'group':
      releaseGroupFile(kernel, file);
      break;
    case 'device':
      file.group.deviceUsers--;
      putFile(kernel, file.groupFile);
      break;
    case 'container':
      // Attached groups keep the container alive; it is torn down when they leave.
      break;
    case 'socket':
      if (file.peer) file.peer.peer = null;
      for (const msg of file.queue) for (const f of msg.files) putFile(kernel, f);
      file.queue = [];
      break;
    case 'memfd':
      break;
  }
}

export function releaseGroupFile(kernel: SimulatedKernel, file: GroupFile): void {
  const g = file.group;
  if (g.container) detachGroup(kernel, g);
  if (g.file === file) g.file = null;
}

export function pread(p: ProcessCore, fd: number, length: number, offset: bigint): Buffer {
  checkFd('fd', fd);
  checkLength('length', length, 1 << 24);
  checkU64('offset', offset);
  p.alive();
  const f = p.fds.get(fd);
  if (!f) throw p.err('EBADF', 'pread', fd);
  if (f.kind === 'memfd') {
    const avail = f.memfd.size > offset ? f.memfd.size - offset : 0n;
    return readMemfd(f.memfd, offset, Number(avail < BigInt(length) ? avail : BigInt(length)));
  }
  if (f.kind === 'device') {
    if (f.group.removed) throw p.err('ENODEV', 'pread', fd);
    return readDeviceRegion(f, length, offset);
  }
  throw p.err(f.kind === 'socket' ? 'ESPIPE' : 'EINVAL', 'pread', fd);
}

export function pwrite(p: ProcessCore, fd: number, data: Uint8Array, offset: bigint): number {
  checkFd('fd', fd);
  checkBytes('data', data);
  checkU64('offset', offset);
  p.alive();
  const f = p.fds.get(fd);
  if (!f) throw p.err('EBADF', 'pwrite', fd);
  if (f.kind === 'memfd') {
    writeMemfd(f.memfd, offset, Buffer.from(data.buffer, data.byteOffset, data.length));
    if (offset + BigInt(data.length) > f.memfd.size) f.memfd.size = offset + BigInt(data.length);
    return data.length;
  }
  if (f.kind === 'device') {
    if (f.group.removed) throw p.err('ENODEV', 'pwrite', fd);
    return data.length;
  }
  throw p.err(f.kind === 'socket' ? 'ESPIPE' : 'EINVAL', 'pwrite', fd);
}

export function socketPair(p: ProcessCore): [number, number] {
  p.alive();
  const a: SocketFile = { kind: 'socket', refs: 1, path: undefined, peer: null, queue: [] };
  const b: SocketFile = { kind: 'socket', refs: 1, path: undefined, peer: a, queue: [] };
  a.peer = b;
  return [p.installFd(a), p.installFd(b)];
}

export function sendFds(p: ProcessCore, socketFd: number, data: Uint8Array, fds: number[]): number {
  checkFd('socketFd', socketFd);
  checkBytes('data', data);
  if (!Array.isArray(fds) || fds.length > 253) throw new RangeError('fds must be an array of at most 253 fds');
  fds.forEach((fd, i) => checkFd(`fds[${i}]`, fd));
  if (data.length === 0) throw new RangeError('data must not be empty (SCM_RIGHTS needs at least one byte)');
  p.alive();
  const s = p.fds.get(socketFd);
  if (!s) throw p.err('EBADF', 'sendmsg', socketFd);
  if (s.kind !== 'socket') throw p.err('ENOTSOCK', 'sendmsg', socketFd);
  const files = fds.map((fd) => {
    const f = p.fds.get(fd);
    if (!f) throw p.err('EBADF', 'sendmsg', socketFd);
    return f;
  });
  if (!s.peer) throw p.err('EPIPE', 'sendmsg', socketFd);
  for (const f of files) f.refs++;
  s.peer.queue.push({ data: Buffer.from(data), files });
  return data.length;
}

export function recvFds(p: ProcessCore, socketFd: number, maxData: number, maxFds: number): ReceivedMessage {
  checkFd('socketFd', socketFd);
  checkLength('maxData', maxData, 1 << 24);
  checkLength('maxFds', maxFds, 253);
  p.alive();
  const s = p.fds.get(socketFd);
  if (!s) throw p.err('EBADF', 'recvmsg', socketFd);
  if (s.kind !== 'socket') throw p.err('ENOTSOCK', 'recvmsg', socketFd);
  const msg = s.queue[0];
  if (!msg) {
    if (!s.peer) return { data: Buffer.alloc(0), fds: [] };
    // The simulator cannot block: an empty queue is reported as EAGAIN.
    throw p.err('EAGAIN', 'recvmsg', socketFd);
  }
  const data = msg.data.subarray(0, maxData);
  const files = msg.files;
  msg.files = [];
  if (msg.data.length > maxData) msg.data = msg.data.subarray(maxData);
  else s.queue.shift();
  if (files.length > maxFds) {
    // MSG_CTRUNC: the kernel drops what did not fit; like the native binding,
    // a partial set is useless, so none is kept and the call fails.
    for (const f of files) putFile(p.kernel, f);
    p.kernel.record({ pid: p.pid, op: 'recvmsg', fd: socketFd, result: 'MSG_CTRUNC' });
    throw Object.assign(
      new Error(`recvmsg: the passed fds were cut off (MSG_CTRUNC): more than maxFds (${maxFds}) were sent; the fds that arrived were closed`),
      { code: 'MSG_CTRUNC', syscall: 'recvmsg' },
    );
  }
  const fds = files.map((f) => p.installFd(f));
  return { data: Buffer.from(data), fds };
}
