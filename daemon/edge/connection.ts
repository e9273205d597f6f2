import type { Socket } from 'node:net';
import { CLOSE_IDLE, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN } from '../../protocol/constants.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Message } from '../../protocol/messages.js';
import type { ServerSession } from '../../protocol/server-session.js';
import { CommandError } from './command-errors.js';
import type { ConnectionInfo, Dispatcher } from './dispatcher.js';
import type { Limits } from '../main/config.js';
import type { Logger } from '../common/log.js';
import type { ConnectionEvents } from './requests.js';
import { ConnectionInput } from './connection-input.js';
import { attachSocket, normalizeIp, onHandshakeTimer, onTerminateTimer, type ConnectionIO } from './socket-events.js';

export type { ConnectionEvents } from './requests.js';
export { normalizeIp } from './socket-events.js';

/** How long a terminated connection may take to read its CLOSE before it is destroyed. */
const TERMINATE_GRACE_MS = 1000;

/**
 * Wires one socket to one ServerSession: bytes in, events out, commands dispatched, bytes
 * written. Reading pauses while too many requests are in flight or too much output waits,
 * so neither a pipelining client nor a slow reader can grow the server's memory without bound.
 * This class is the connection's input side (socket, handshake, record and login deadlines, faults);
 * its output is SessionOutput's (session-output.ts), and the requests on it (in flight,
 * deadlines, downloads) are RequestLifecycle's (requests.ts).
 */
export class Connection extends ConnectionInput implements ConnectionIO {
  readonly info: ConnectionInfo;
  /** When the socket was accepted, ms since the epoch. */
  readonly acceptedAt = Date.now();
  private sessionState: Map<string, unknown> | undefined;
  /** Armed from the end of the handshake until a login: the whole deadline for logging in. */
  /**
   * The login deadline (ms since the epoch, 0: none) and the last socket activity, checked by the
   * daemon's one deadline sweep (checkDeadlines) instead of two timers per connection.
   */
  private loginDeadline = 0;
  private loggedIn = false;
  /** Resources freed and socket destroyed (see destroy()). */
  private released = false;
  private faulted = false;

  constructor(
    socket: Socket,
    session: ServerSession,
    dispatcher: Dispatcher,
    limits: Limits,
    log: Logger,
    events: ConnectionEvents,
    id: number,
  ) {
    super(socket, session, dispatcher, limits, log, events);
    this.info = { id, ip: normalizeIp(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 };
    socket.setNoDelay(true);
    this.handshakeTimer = setTimeout(onHandshakeTimer, limits.handshakeTimeoutMs, this);
    if (!attachSocket(socket, this, true)) this.input = undefined;
  }

  /** The per-connection state handlers share (ctx.session), created on first use. */
  override sessionMap(): Map<string, unknown> {
    return (this.sessionState ??= new Map());
  }

  /**
   * Ends the connection now, telling an established peer why (e.g. CLOSE_POLICY after a ban).
   * Nothing more is read or answered; the socket is ended (FIN after the CLOSE record, so the
   * peer reads the reason rather than a reset) and destroyed once the peer closes, or after a
   * second at the latest. Returns false when the connection was already closing.
   */
  terminate(code: number): boolean {
    if (this.closed) return false; // already closing
    if (this.isEstablished) {
      this.session.close(code);
      this.flush();
    }
    this.closed = true;
    // Work queued for this connection stops now, not when the socket is gone (a ban's
    // disconnect must drop the banned source's queued password checks at once).
    if (this.inflight) for (const f of [...this.inflight.values()]) this.abortInFlight(f, new CommandError('CANCELLED', 'connection closed'));
    this.socket.end();
    setTimeout(onTerminateTimer, TERMINATE_GRACE_MS, this).unref();
    return true;
  }

  /**
   * The per-connection guard (issue 18): an exception that escaped this connection's code (a
   * socket event, a timer, a handler's promise callback, a download) is logged with the peer's
   * address, reported as a `protocol` violation, and ends this connection (CLOSE 3 when
   * established, then the socket). The process keeps serving everyone else. Never throws.
   */
  override fault(where: string, e: unknown): void {
    const first = !this.faulted;
    this.faulted = true;
    try {
      if (first) {
        const err = e as { name?: unknown; code?: unknown } | undefined;
        // The error's name and code only: a message may quote peer input or secrets.
        this.log.error('connection handler failed', {
          conn: this.info.id,
          ip: this.info.ip,
          port: this.info.port,
          where,
          error: typeof err?.name === 'string' ? err.name : typeof e,
          ...(typeof err?.code === 'string' ? { code: err.code } : {}),
        });
        this.events.violation('protocol', `server fault while handling this connection (${where})`);
      }
    } catch {
      // Logging or reporting failed too; closing the connection still matters most.
    }
    try {
      if (!(this.isEstablished && this.terminate(CLOSE_PROTOCOL_ERROR))) this.destroy();
    } catch {
      // Freeing failed half-way; the socket at least goes.
    }
    if (this.released && !this.socket.destroyed) {
      try {
        this.socket.destroy();
      } catch {
        // Nothing more can be done for this socket.
      }
    }
  }

  /** Runs `fn` inside the guard (for promise callbacks and microtasks). */
  protected override guarded(where: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.fault(where, e);
    }
  }

  /** Graceful shutdown: refuse new requests, close once the in-flight ones are answered. */
  drain(): void {
    this.draining = true;
    if (!this.isEstablished) return this.destroy();
    if (this.inflightCount === 0) this.closeWith(CLOSE_SHUTDOWN);
  }

  /**
   * Frees everything, once: in-flight requests, keys, per-connection state, the socket. An
   * orderly close (CLOSE sent, socket ended) only sets `closed`; this still runs when the socket
   * closes, or when shutdown's deadline destroys a peer that never closed its end.
   */
  destroy(): void {
    if (this.released) return;
    this.released = true;
    this.closed = true;
    this.finishHandshake(false);
    clearTimeout(this.sweepTimer);
    this.sweepTimer = undefined;
    this.stopRecordTimer();
    this.loginDeadline = 0;
    if (this.inflight) {
      for (const f of [...this.inflight.values()]) this.abortInFlight(f, new CommandError('CANCELLED', 'connection closed'));
      this.inflight.clear();
    }
    this.session.wipe();
    this.input?.close();
    if (this.sessionState) this.dispatcher.connectionClosed(this.info, this.sessionState);
    this.socket.destroy();
  }

  /** @internal The session's exporter value (a copy), once the handshake is done. */
  override channelBinding(): Uint8Array | undefined {
    const b = this.session.channelBinding;
    return b ? Buffer.from(b) : undefined;
  }

  /** @internal A handler logged a user in on this connection. */
  override markAuthenticated(): void {
    if (this.loggedIn) return;
    this.loggedIn = true;
    this.loginDeadline = 0;
    this.events.loggedIn?.();
  }

  /** @internal */
  onLoginTimeout(): void {
    this.loginDeadline = 0;
    if (this.closed || this.loggedIn) return;
    this.log.info('login deadline', { conn: this.info.id, ip: this.info.ip });
    this.closeWith(CLOSE_IDLE);
  }

  protected pump(): void {
    for (;;) {
      if (this.closed) return;
      const ev = this.session.nextEvent();
      switch (ev.type) {
        case 'need-data':
          this.flush();
          return;
        case 'hello':
          this.events.counted('hello');
          continue;
        case 'established':
          this.finishHandshake(true);
          this.events.counted('established');
          this.lastActive = Date.now();
          if (!this.closed && !this.loggedIn) this.loginDeadline = this.lastActive + this.limits.loginTimeoutMs;
          continue;
        case 'message':
          this.onMessage(ev.message);
          // The rest of a version 2 record's messages, without an event object each.
          for (let m: Message | undefined; !this.closed && (m = this.session.nextQueuedMessage()); ) this.onMessage(m);
          continue;
        case 'closed':
          this.flush();
          this.socket.end();
          this.closed = true;
          this.finishHandshake(false);
          return;
        case 'error':
          return this.protocolFailure(ev.error);
      }
    }
  }

  private protocolFailure(error: ProtocolError): void {
    const cause = (error as { cause?: unknown }).cause;
    // The violation (with this code) is logged by the ban engine; this line adds the state.
    this.log.debug('connection refused', {
      conn: this.info.id,
      ip: this.info.ip,
      code: error.code,
      state: this.session.state,
      ...(cause instanceof Error ? { cause: cause.name } : {}),
    });
    this.closed = true; // see onHandshakeTimeout
    this.events.violation(error.violationKind, error.code);
    this.flush(); // a Reject, if the session produced one
    this.destroy();
  }

  private onMessage(m: Message): void {
    switch (m.kind) {
      case 'request':
        return this.onRequest(m.id, m.command, m.payload, m.stream);
      case 'chunk': {
        const f = this.inflight?.get(m.id);
        if (!f?.upload) return; // a race with completion or cancel; the data is dropped
        try {
          f.upload.push(m.data);
        } catch (e) {
          return this.protocolFailure(e as ProtocolError);
        }
        return;
      }
      case 'end':
        this.inflight?.get(m.id)?.upload?.end();
        return;
      case 'credit': {
        try {
          this.inflight?.get(m.id)?.credit?.add(m.bytes);
        } catch (e) {
          return this.protocolFailure(e as ProtocolError);
        }
        return;
      }
      case 'cancel': {
        const f = this.inflight?.get(m.id);
        if (f) this.abortInFlight(f, new CommandError('CANCELLED', 'cancelled by the client'));
        return;
      }
      default:
        return this.protocolFailure(new ProtocolError('BAD_MESSAGE', `a client may not send ${m.kind}`));
    }
  }

  /** @internal */
  onHandshakeTimeout(): void {
    if (!this.handshakeOpen || this.closed) return;
    const silent = this.receivedBytes === 0;
    this.log.debug('handshake timeout', { conn: this.info.id, ip: this.info.ip, bytes: this.receivedBytes });
    // Closed first: the ban this violation may trigger must not terminate (and count) it again.
    this.closed = true;
    this.events.violation(silent ? 'silent' : 'handshake', silent ? 'sent nothing' : 'handshake not completed in time');
    this.destroy();
  }

  /**
   * @internal Called by the daemon's deadline sweep (about four times per shortest deadline, at
   * most once a second): ends a session not logged in by its login deadline, or one without
   * socket activity for limits.idleTimeoutMs (unless requests are in flight), with CLOSE 2.
   */
  checkDeadlines(now: number): void {
    if (this.closed || this.handshakeOpen || this.lastActive === 0) return;
    if (this.loginDeadline !== 0 && now >= this.loginDeadline) return this.onLoginTimeout();
    if (now - this.lastActive >= this.limits.idleTimeoutMs) {
      this.lastActive = now; // with requests in flight: looked at again after another idle period
      this.onIdle();
    }
  }

  /** @internal the idle deadline passed */
  onIdle(): void {
    if (this.inflightCount > 0) return;
    this.log.info('idle timeout', { conn: this.info.id });
    this.closeWith(CLOSE_IDLE);
  }

  /** @internal socket listener */
  onEnd(): void {
    if (this.closed) return;
    // Classified by the stage reached (PROTOCOL.md): a ClientHello cut short ("CM", 40 of 75
    // bytes) is a broken handshake, counted, not a record-layer attack banned at once.
    if (this.handshakeOpen && this.receivedBytes > 0) {
      // A client with a stale pin that drops right after the ServerHello (the pre-rollover rule,
      // or a third-party client): during a rollover's switch and grace period no violation, so a
      // key switch never bans whole NATs (PROTOCOL.md 11). Logged and counted all the same.
      if (this.session.state === 'AWAIT_CLIENT_FINISHED' && this.session.bufferedBytes === 0 && this.events.helloDropTolerated?.()) {
        this.log.info('connection ended after the ServerHello during an identity key rollover (not counted)', { conn: this.info.id, ip: this.info.ip });
        this.events.counted('hello-drop-tolerated');
        this.closeWith(CLOSE_PROTOCOL_ERROR);
        return;
      }
      this.protocolFailure(new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'connection ended inside the handshake'));
      return;
    }
    if (this.pendingBytes > 0) {
      this.protocolFailure(new ProtocolError('TRUNCATED', 'connection ended inside a record'));
      return;
    }
    this.closeWith(this.isEstablished ? CLOSE_NORMAL : CLOSE_PROTOCOL_ERROR);
  }

  /** @internal socket listener */
  onSocketClose(): void {
    try {
      this.destroy();
    } finally {
      // Even when freeing failed: the daemon must forget the connection and its pending slot.
      this.events.closed();
    }
  }
}
