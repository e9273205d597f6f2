import type { Socket } from 'node:net';
import { CLOSE_IDLE, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN, MAX_CHUNK_LEN, MAX_INFLIGHT_REQUESTS } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { InboundStream, OutboundCredit } from '../protocol/flow.js';
import type { Message } from '../protocol/messages.js';
import type { ServerSession } from '../protocol/server-session.js';
import { boundedText, CommandError } from './command-errors.js';
import type { CommandContext, ConnectionInfo, Dispatcher } from './dispatcher.js';
import type { Limits } from './config.js';
import type { Logger } from './log.js';
import type { ViolationKind } from './violations.js';
import { writePieces } from '../client/socket-write.js';

/**
 * Wires one socket to one ServerSession: bytes in, events out, commands dispatched, bytes
 * written. Reading pauses while too many requests are in flight or too much output waits,
 * so neither a pipelining client nor a slow reader can grow the server's memory without bound.
 */
export interface ConnectionEvents {
  violation(kind: ViolationKind, detail: string): void;
  handshakeDone(established: boolean): void;
  closed(): void;
  counted(what: 'hello' | 'established' | 'request', command?: string, result?: string): void;
  /** A user logged in on this connection (it leaves the pre-login stage). */
  loggedIn?(): void;
}

/** Where a request stands: waiting for its handler, streaming its download, or answered. */
const WAITING = 0;
const STREAMING = 1;
const DONE = 2;

class InFlight {
  phase = WAITING;
  /** The first reason it was aborted for (cancel, timeout, connection closed). */
  reason: CommandError | undefined;
  /** Created only when a handler reads ctx.signal. */
  controller: AbortController | undefined;
  upload: InboundStream | undefined;
  credit: OutboundCredit | undefined;
  constructor(
    readonly id: number,
    readonly command: string,
    readonly deadline: number,
  ) {}

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.reason) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }
}

/** What a handler sees; the abort signal and the session map are created on first use. */
class RequestContext implements CommandContext {
  readonly conn: ConnectionInfo;
  readonly upload?: AsyncIterable<Uint8Array>;
  constructor(
    private readonly owner: Connection,
    private readonly f: InFlight,
  ) {
    this.conn = owner.info;
    if (f.upload) this.upload = f.upload;
  }

  get signal(): AbortSignal {
    return this.f.signal;
  }

  get session(): Map<string, unknown> {
    return this.owner.sessionMap();
  }

  authenticated(): void {
    this.owner.markAuthenticated();
  }
}

/** How long a terminated connection may take to read its CLOSE before it is destroyed. */
const TERMINATE_GRACE_MS = 1000;

/** Twice the soft limit: past it requests are refused, below it reading merely pauses. */
const HARD_INFLIGHT = MAX_INFLIGHT_REQUESTS * 2;

const CONN = Symbol('connection');
type OwnedSocket = Socket & { [CONN]: Connection };

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
function onRecordTimer(c: Connection): void {
  try {
    c.onRecordTimeout();
  } catch (e) {
    c.fault('record timer', e);
  }
}
function onLoginTimer(c: Connection): void {
  try {
    c.onLoginTimeout();
  } catch (e) {
    c.fault('login timer', e);
  }
}

export class Connection {
  readonly info: ConnectionInfo;
  /** When the socket was accepted, ms since the epoch. */
  readonly acceptedAt = Date.now();
  /** Requests in flight, in arrival order (which is also deadline order). */
  private inflight: Map<number, InFlight> | undefined;
  private sessionState: Map<string, unknown> | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  /**
   * The record deadline: when the record now partly received started (0: none), and one timer
   * per connection that checks it (re-armed for the rest, never per byte or per record).
   */
  private recordStart = 0;
  private recordTimer: NodeJS.Timeout | undefined;
  /** Armed from the end of the handshake until a login: the whole deadline for logging in. */
  private loginTimer: NodeJS.Timeout | undefined;
  private loggedIn = false;
  /** One timer per connection, due at the earliest deadline of a request in flight. */
  private sweepTimer: NodeJS.Timeout | undefined;
  private flushQueued = false;
  private handshakeOpen = true;
  private draining = false;
  /** No more protocol activity (CLOSE sent or received, or failed). */
  private closed = false;
  /** Resources freed and socket destroyed (see destroy()). */
  private released = false;
  private pausedForOutput = false;
  private bytesIn = 0;
  private faulted = false;

  constructor(
    private readonly socket: Socket,
    private readonly session: ServerSession,
    private readonly dispatcher: Dispatcher,
    private readonly limits: Limits,
    private readonly log: Logger,
    private readonly events: ConnectionEvents,
    id: number,
  ) {
    this.info = { id, ip: normalizeIp(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0 };
    socket.setNoDelay(true);
    this.handshakeTimer = setTimeout(onHandshakeTimer, limits.handshakeTimeoutMs, this);
    (socket as OwnedSocket)[CONN] = this;
    socket.on('data', onSocketData);
    socket.on('end', onSocketEnd);
    socket.on('error', onSocketError);
    socket.on('close', onSocketClose);
    socket.on('drain', onSocketDrain);
    socket.on('timeout', onSocketTimeout);
  }

  /** The per-connection state handlers share (ctx.session), created on first use. */
  sessionMap(): Map<string, unknown> {
    return (this.sessionState ??= new Map());
  }

  private get inflightCount(): number {
    return this.inflight ? this.inflight.size : 0;
  }

  /** Bytes received so far (0: the peer has sent nothing). */
  get receivedBytes(): number {
    return this.bytesIn;
  }

  get isEstablished(): boolean {
    return this.session.state === 'ESTABLISHED';
  }

  /** Send a NOTICE (PROTOCOL.md) to an established peer; nothing once the connection is closing. */
  notify(event: string, payload: Record<string, unknown>): void {
    if (this.closed || !this.isEstablished) return;
    this.send({ kind: 'notice', event, payload });
    this.flush();
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
  fault(where: string, e: unknown): void {
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
  private guarded(where: string, fn: () => void): void {
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
    clearTimeout(this.recordTimer);
    clearTimeout(this.loginTimer);
    if (this.inflight) {
      for (const f of [...this.inflight.values()]) this.abortInFlight(f, new CommandError('CANCELLED', 'connection closed'));
      this.inflight.clear();
    }
    this.session.wipe();
    if (this.sessionState) this.dispatcher.connectionClosed(this.info, this.sessionState);
    this.socket.destroy();
  }

  /** @internal socket listener */
  onData(data: Buffer): void {
    if (this.closed) return;
    this.bytesIn += data.length;
    this.session.receive(data);
    this.pump();
    this.watchRecord();
  }

  /**
   * A record started must be finished within recordTimeoutMs of its first byte, however the
   * bytes trickle in (nginx client_body_timeout is a deadline for the whole read in the same
   * way); the handshake has its own whole deadline.
   */
  private watchRecord(): void {
    if (this.closed || this.handshakeOpen) return;
    if (this.session.bufferedBytes === 0) {
      this.recordStart = 0;
    } else if (this.recordStart === 0) {
      this.recordStart = Date.now();
      this.recordTimer ??= setTimeout(onRecordTimer, this.limits.recordTimeoutMs, this);
    }
  }

  /** @internal */
  onRecordTimeout(): void {
    this.recordTimer = undefined;
    if (this.closed || this.recordStart === 0) return;
    const left = this.recordStart + this.limits.recordTimeoutMs - Date.now();
    if (left > 0) {
      // An earlier record finished in time; this one has the rest of its own deadline.
      this.recordTimer = setTimeout(onRecordTimer, left, this);
      return;
    }
    this.log.debug('record deadline', { conn: this.info.id, ip: this.info.ip, buffered: this.session.bufferedBytes });
    this.closed = true; // see onHandshakeTimeout
    this.events.violation('slow', 'record not completed in time');
    this.destroy();
  }

  /** @internal A handler logged a user in on this connection. */
  markAuthenticated(): void {
    if (this.loggedIn) return;
    this.loggedIn = true;
    clearTimeout(this.loginTimer);
    this.loginTimer = undefined;
    this.events.loggedIn?.();
  }

  /** @internal */
  onLoginTimeout(): void {
    this.loginTimer = undefined;
    if (this.closed || this.loggedIn) return;
    this.log.info('login deadline', { conn: this.info.id, ip: this.info.ip });
    this.closeWith(CLOSE_IDLE);
  }

  private pump(): void {
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
          this.socket.setTimeout(this.limits.idleTimeoutMs);
          if (!this.closed && !this.loggedIn) this.loginTimer = setTimeout(onLoginTimer, this.limits.loginTimeoutMs, this);
          continue;
        case 'message':
          this.onMessage(ev.message);
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

  private onRequest(id: number, command: string, payload: unknown, stream: boolean): void {
    if (this.draining) return this.sendError(id, new CommandError('SHUTTING_DOWN', 'the server is shutting down'));
    if (this.inflight?.has(id)) return this.sendError(id, new CommandError('DUPLICATE_ID', `request id ${id} is already in use`), false);
    if (this.inflightCount >= HARD_INFLIGHT) return this.sendError(id, new CommandError('BUSY', 'too many requests in flight'));
    let prepared;
    try {
      prepared = this.dispatcher.prepare(command, payload, stream);
    } catch (e) {
      // Validation refuses with CommandError; anything else is a fault (the guard takes it).
      if (!(e instanceof CommandError)) throw e;
      this.events.counted('request', command, e.code);
      // Probing for commands is counted against the source; the name itself is never kept.
      if (e.code === 'UNKNOWN_COMMAND') this.events.violation('command', 'unknown command');
      // An upload that was refused still occupies the id until the client sees the error.
      return this.sendError(id, e);
    }
    const f = new InFlight(id, command, Date.now() + this.limits.requestTimeoutMs);
    if (stream) f.upload = new InboundStream((bytes) => this.send({ kind: 'credit', id, bytes }));
    const inflight = (this.inflight ??= new Map());
    inflight.set(id, f);
    if (inflight.size >= MAX_INFLIGHT_REQUESTS) this.socket.pause();
    this.sweepTimer ??= setTimeout(onSweepTimer, this.limits.requestTimeoutMs, this).unref();
    // A handler that throws synchronously escapes to the guard (fault()): the connection ends.
    const pending: unknown = prepared.spec.handler(prepared.payload, new RequestContext(this, f));
    (pending instanceof Promise ? pending : Promise.resolve(pending)).then(
      (result) => this.guarded('result', () => this.onResult(f, result)),
      (e: unknown) => {
        if (f.phase === WAITING) this.guarded('result', () => this.finishRequest(f, e));
      },
    );
  }

  private onResult(f: InFlight, result: { payload: unknown; download?: AsyncIterable<Uint8Array> }): void {
    if (f.phase !== WAITING) return; // already answered: aborted (timeout, cancel, closed)
    if (this.closed) return this.retire(f);
    try {
      if (!result.download) {
        this.send({ kind: 'response', id: f.id, payload: result.payload ?? null, stream: false });
        this.events.counted('request', f.command, 'ok');
        return this.retire(f);
      }
    } catch (e) {
      return this.finishRequest(f, e);
    }
    f.phase = STREAMING;
    this.streamDownload(f, result.payload, result.download).catch((e: unknown) => this.fault('download', e));
  }

  private async streamDownload(f: InFlight, payload: unknown, download: AsyncIterable<Uint8Array>): Promise<void> {
    const id = f.id;
    try {
      const credit = (f.credit = new OutboundCredit());
      if (f.reason) credit.abort(f.reason);
      this.send({ kind: 'response', id, payload: payload ?? null, stream: true });
      for await (const piece of download) {
        // Each CHUNK is cut to the credit held (at most MAX_CHUNK_LEN): any grant moves it on.
        for (let off = 0; off < piece.length; ) {
          const n = await credit.takeUpTo(Math.min(MAX_CHUNK_LEN, piece.length - off));
          const data = piece.subarray(off, off + n);
          off += n;
          await this.writable(f);
          this.send({ kind: 'chunk', id, data });
        }
      }
      this.send({ kind: 'end', id });
      this.events.counted('request', f.command, 'ok');
      this.retire(f);
    } catch (e) {
      this.finishRequest(f, e);
    }
  }

  /** Answers a request that failed or was aborted with its typed error, once. */
  private finishRequest(f: InFlight, e: unknown): void {
    if (f.phase === DONE) return;
    const err =
      e instanceof CommandError
        ? e
        : e instanceof ProtocolError && e.code === 'RECORD_TOO_LARGE'
          ? new CommandError('TOO_LARGE', 'the response does not fit in one record')
          : e instanceof ProtocolError
            ? new CommandError('BAD_REQUEST', 'stream aborted')
            : undefined;
    if (e instanceof ProtocolError && e.code === 'RECORD_TOO_LARGE') this.log.error('response too large for one record', { conn: this.info.id, command: f.command });
    if (!err) this.log.error('command failed', { conn: this.info.id, command: f.command, error: (e as Error)?.name });
    const wire = err ?? new CommandError('INTERNAL', 'internal error');
    this.events.counted('request', f.command, wire.code);
    if (!this.closed) this.sendError(f.id, wire);
    this.retire(f);
  }

  /** The request is over: free its id and maybe resume reading or finish a drain. */
  private retire(f: InFlight): void {
    if (f.phase === DONE) return;
    f.phase = DONE;
    const inflight = this.inflight!;
    if (inflight.get(f.id) === f) inflight.delete(f.id);
    // The sweep timer stays armed (unref'd) when nothing is in flight: re-arming it for every
    // request would cost a timer per request again. It finds nothing to do and lapses.
    this.afterRequest();
  }

  /** @internal Times out the requests past their deadline; re-arms for the next one. */
  sweep(): void {
    this.sweepTimer = undefined;
    if (this.closed || !this.inflight) return;
    const now = Date.now();
    for (const f of [...this.inflight.values()]) {
      if (f.deadline > now) {
        this.sweepTimer = setTimeout(onSweepTimer, f.deadline - now, this).unref();
        return;
      }
      this.abortInFlight(f, new CommandError('TIMEOUT', 'the request took too long'));
    }
  }

  /** Resolves when the socket's write buffer is below the high-water mark. */
  private async writable(f: InFlight): Promise<void> {
    while (!this.closed && this.socket.writableLength > this.limits.writeHighWaterBytes) {
      if (f.reason) throw f.reason;
      await new Promise<void>((r) => this.socket.once('drain', r).once('close', r));
    }
    if (this.closed) throw new CommandError('CANCELLED', 'connection closed');
  }

  private abortInFlight(f: InFlight, err: CommandError): void {
    f.reason ??= err;
    if (f.controller && !f.controller.signal.aborted) f.controller.abort(f.reason);
    f.upload?.abort(err);
    f.credit?.abort(err);
    // A handler still working is answered at once; its late result is ignored.
    if (f.phase === WAITING) this.finishRequest(f, f.reason);
  }

  private afterRequest(): void {
    if (this.closed) return;
    if (this.draining && this.inflightCount === 0) return this.closeWith(CLOSE_SHUTDOWN);
    this.maybeResume();
  }

  private maybeResume(): void {
    if (this.inflightCount < MAX_INFLIGHT_REQUESTS && !this.pausedForOutput && this.socket.isPaused()) this.socket.resume();
  }

  /**
   * Sends an ERROR. Its text is bounded (boundedText: at most MAX_WIRE_ERROR_TEXT characters,
   * control characters replaced), so the message always fits one record whoever built it.
   */
  private sendError(id: number, e: CommandError, count = true): void {
    if (count) this.log.debug('request refused', { conn: this.info.id, code: e.code });
    this.send({ kind: 'error', id, code: e.code, message: boundedText(e.message) });
  }

  /**
   * Seals the message now and writes it with everything else produced in this turn: a flush
   * is queued as a microtask, so the answers to all requests of one read leave in one write.
   */
  private send(m: Message): void {
    if (this.closed || !this.isEstablished) return;
    // Throws RECORD_TOO_LARGE before sealing anything when `m` does not fit one record; the
    // callers turn that into TOO_LARGE (responses) or cannot meet it (bounded errors, credit).
    this.session.sendMessage(m);
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => {
        this.flushQueued = false;
        this.guarded('flush', () => this.flush());
      });
    }
  }

  private flush(): void {
    const out = this.session.takeOutputPieces();
    if (out.length === 0 || this.socket.destroyed) return;
    writePieces(this.socket, out);
    if (this.socket.writableLength > this.limits.writeHighWaterBytes && !this.pausedForOutput) {
      this.pausedForOutput = true;
      this.socket.pause();
    }
  }

  /** @internal socket listener */
  onDrain(): void {
    if (!this.pausedForOutput) return;
    this.pausedForOutput = false;
    this.maybeResume();
  }

  private closeWith(code: number): void {
    if (this.closed) return;
    this.session.close(code);
    this.flush();
    this.closed = true;
    this.finishHandshake(false);
    this.socket.end();
  }

  private finishHandshake(established: boolean): void {
    if (!this.handshakeOpen) return;
    this.handshakeOpen = false;
    clearTimeout(this.handshakeTimer);
    this.events.handshakeDone(established);
  }

  /** @internal */
  onHandshakeTimeout(): void {
    if (!this.handshakeOpen || this.closed) return;
    const silent = this.bytesIn === 0;
    this.log.debug('handshake timeout', { conn: this.info.id, ip: this.info.ip, bytes: this.bytesIn });
    // Closed first: the ban this violation may trigger must not terminate (and count) it again.
    this.closed = true;
    this.events.violation(silent ? 'silent' : 'handshake', silent ? 'sent nothing' : 'handshake not completed in time');
    this.destroy();
  }

  /** @internal socket listener */
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
    if (this.handshakeOpen && this.bytesIn > 0) {
      this.protocolFailure(new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'connection ended inside the handshake'));
      return;
    }
    if (this.session.bufferedBytes > 0) {
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

function onHandshakeTimer(c: Connection): void {
  try {
    c.onHandshakeTimeout();
  } catch (e) {
    c.fault('handshake timer', e);
  }
}

function onSweepTimer(c: Connection): void {
  try {
    c.sweep();
  } catch (e) {
    c.fault('request timer', e);
  }
}

function onTerminateTimer(c: Connection): void {
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
