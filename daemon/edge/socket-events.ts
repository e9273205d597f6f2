/**
 * The entry points from the event loop into a connection: one set of socket listeners and
 * timer callbacks for all connections (no closures per connection), each running inside the
 * connection's guard (fault()), and the peer address as the daemon reports it.
 */
import type { Socket } from 'node:net';
import { readIntoUserBuffers, type ReadDone } from './user-reads.js';

/** What the listeners and timers call on a connection (Connection implements it). */
export interface ConnectionIO {
  onData(data: Buffer): void;
  /** With reads into the daemon's buffers (user-reads.ts): where the next read lands, and how much landed. */
  readTarget(): Uint8Array;
  onRead(n: number): void;
  onEnd(): void;
  destroy(): void;
  onSocketClose(): void;
  onDrain(): void;
  onIdle(): void;
  onRecordTimeout(): void;
  onLoginTimeout(): void;
  onHandshakeTimeout(): void;
  /** The per-connection guard: logs, reports and ends this connection. Never throws. */
  fault(where: string, e: unknown): void;
}

const CONN = Symbol('connection');
type OwnedSocket = Socket & { [CONN]: ConnectionIO };

// One set of listener functions for all sockets (instead of six closures per connection).
// Each is an entry point from the event loop into one connection's code, so each runs inside
// the connection's guard: whatever it throws ends this connection, never the process.
function onSocketData(this: OwnedSocket, d: Buffer): void {
  const c = this[CONN];
  try {
    c.onData(d);
  } catch (e) {
    c.fault('data', e);
  }
}
function onSocketRead(this: OwnedSocket, n: number): void {
  const c = this[CONN];
  try {
    c.onRead(n);
  } catch (e) {
    c.fault('data', e);
  }
}
function onSocketEnd(this: OwnedSocket): void {
  const c = this[CONN];
  try {
    c.onEnd();
  } catch (e) {
    c.fault('end', e);
  }
}
function onSocketError(this: OwnedSocket): void {
  const c = this[CONN];
  try {
    c.destroy();
  } catch (e) {
    c.fault('error', e);
  }
}
function onSocketClose(this: OwnedSocket): void {
  const c = this[CONN];
  try {
    c.onSocketClose();
  } catch (e) {
    c.fault('close', e);
  }
}
function onSocketDrain(this: OwnedSocket): void {
  const c = this[CONN];
  try {
    c.onDrain();
  } catch (e) {
    c.fault('drain', e);
  }
}
function onSocketTimeout(this: OwnedSocket): void {
  const c = this[CONN];
  try {
    c.onIdle();
  } catch (e) {
    c.fault('idle', e);
  }
}
export function onRecordTimer(c: Pick<ConnectionIO, 'onRecordTimeout' | 'fault'>): void {
  try {
    c.onRecordTimeout();
  } catch (e) {
    c.fault('record timer', e);
  }
}
export function onLoginTimer(c: ConnectionIO): void {
  try {
    c.onLoginTimeout();
  } catch (e) {
    c.fault('login timer', e);
  }
}

/**
 * Makes `owner` the target of the socket's data, end, error, close, drain and timeout events,
 * and starts reading (the daemon accepts with pauseOnConnect). `userReads`: reads land in the
 * owner's buffers (readTarget/onRead, user-reads.ts) where that is available; the return value
 * says whether they do (otherwise the socket emits 'data' as usual).
 */
export function attachSocket(socket: Socket, owner: ConnectionIO, userReads = false): boolean {
  (socket as OwnedSocket)[CONN] = owner;
  // Node calls the buffer function without the socket: one closure per connection. It runs
  // right after onSocketRead (or at set-up) and cannot fail but by a bug.
  const own = userReads && readIntoUserBuffers(socket, () => owner.readTarget(), onSocketRead as unknown as ReadDone);
  if (!own) socket.on('data', onSocketData);
  socket.on('end', onSocketEnd);
  socket.on('error', onSocketError);
  socket.on('close', onSocketClose);
  socket.on('drain', onSocketDrain);
  socket.on('timeout', onSocketTimeout);
  socket.resume();
  return own;
}

export function onHandshakeTimer(c: ConnectionIO): void {
  try {
    c.onHandshakeTimeout();
  } catch (e) {
    c.fault('handshake timer', e);
  }
}

export function onTerminateTimer(c: ConnectionIO): void {
  try {
    c.destroy();
  } catch (e) {
    c.fault('terminate timer', e);
  }
}

/** IPv4 peers on a dual-stack socket appear as ::ffff:a.b.c.d; report them as IPv4. */
export function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}
