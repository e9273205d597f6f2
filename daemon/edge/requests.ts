/**
 * The requests on one connection: the in-flight table (in arrival order, which is also deadline
 * order), one sweep timer for their deadlines, handlers' results and downloads (cut to the
 * client's credit, paced by the socket's write buffer), cancels and typed errors. Connection
 * (connection.ts) extends it with the socket, the handshake and the output.
 */
import type { Socket } from 'node:net';
import { MAX_CHUNK_LEN, MAX_INFLIGHT_REQUESTS } from '../../protocol/constants.js';
import { ProtocolError } from '../../protocol/errors.js';
import { InboundStream, OutboundCredit } from '../../protocol/flow.js';
import type { Message } from '../../protocol/messages.js';
import { releaseChunk } from '../../protocol/read-buffers.js';
import { boundedText, CommandError } from './command-errors.js';
import type { CommandContext, ConnectionInfo, Dispatcher } from './dispatcher.js';
import type { Limits } from '../main/config.js';
import type { Logger } from '../common/log.js';
import type { ViolationKind } from '../bans/violations.js';

/** What a connection reports to the server (violations, handshake outcome, counters, login). */
export interface ConnectionEvents {
  violation(kind: ViolationKind, detail: string): void;
  handshakeDone(established: boolean): void;
  closed(): void;
  counted(what: 'hello' | 'established' | 'request' | 'hello-drop-tolerated', command?: string, result?: string): void;
  /**
   * True while a TCP close right after the ServerHello is not a violation: an identity key
   * rollover is in its switched phase, or was retired within the grace period (PROTOCOL.md 11).
   */
  helloDropTolerated?(): boolean;
  /** A user logged in on this connection (it leaves the pre-login stage). */
  loggedIn?(): void;
}

/** Where a request stands: waiting for its handler, streaming its download, or answered. */
const WAITING = 0;
const STREAMING = 1;
const DONE = 2;

/**
 * One request in flight, and also what its handler sees as its context (one object per request,
 * not two): the abort signal and the session map are created on first use.
 */
class InFlight implements CommandContext {
  phase = WAITING;
  /** The first reason it was aborted for (cancel, timeout, connection closed). */
  reason: CommandError | undefined;
  /** Created only when a handler reads ctx.signal. */
  controller: AbortController | undefined;
  upload: InboundStream | undefined;
  credit: OutboundCredit | undefined;
  /**
   * When it times out (ms since the epoch), set when it enters the in-flight table (the turn it
   * arrived in): a request answered at once never gets one (no clock read, no boxed number).
   */
  deadline: number | undefined = undefined;
  constructor(
    private readonly owner: RequestLifecycle,
    readonly id: number,
    readonly command: string,
  ) {}

  get conn(): ConnectionInfo {
    return this.owner.info;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.reason) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  get session(): Map<string, unknown> {
    return this.owner.sessionMap();
  }

  authenticated(): void {
    this.owner.markAuthenticated();
  }

  channelBinding(): Uint8Array | undefined {
    return this.owner.channelBinding();
  }
}

/** Twice the soft limit: past it requests are refused, below it reading merely pauses. */
const HARD_INFLIGHT = MAX_INFLIGHT_REQUESTS * 2;

/** The request side of a connection; Connection supplies the socket side (see the abstract members). */
export abstract class RequestLifecycle {
  abstract readonly info: ConnectionInfo;
  /** Requests in flight, in arrival order (which is also deadline order). */
  protected inflight: Map<number, InFlight> | undefined;
  /** One timer per connection, due at the earliest deadline of a request in flight. */
  protected sweepTimer: NodeJS.Timeout | undefined;
  protected draining = false;
  /** No more protocol activity (CLOSE sent or received, or failed). */
  protected closed = false;

  constructor(
    protected readonly socket: Socket,
    protected readonly dispatcher: Dispatcher,
    protected readonly limits: Limits,
    protected readonly log: Logger,
    protected readonly events: ConnectionEvents,
  ) {}

  /** The per-connection state handlers share (ctx.session), created on first use. */
  abstract sessionMap(): Map<string, unknown>;
  /** A handler logged a user in on this connection. */
  abstract markAuthenticated(): void;
  /** The session's exporter value once the handshake is done (channel binding). */
  abstract channelBinding(): Uint8Array | undefined;
  /** The per-connection guard: logs, reports and ends this connection. Never throws. */
  abstract fault(where: string, e: unknown): void;
  /** Runs `fn` inside the guard. */
  protected abstract guarded(where: string, fn: () => void): void;
  /** Seals a message and queues it for the socket. */
  protected abstract send(m: Message): void;
  /** send() of a RESPONSE without a stream (no message object per answer). */
  protected abstract sendResponse(id: number, payload: unknown): void;
  /** A request is over: maybe resume reading or finish a drain. */
  protected abstract afterRequest(): void;

  protected get inflightCount(): number {
    return this.inflight ? this.inflight.size : 0;
  }

  protected onRequest(id: number, command: string, payload: unknown, stream: boolean): void {
    if (this.draining) return this.sendError(id, new CommandError('SHUTTING_DOWN', 'the server is shutting down'));
    if (this.inflight?.has(id)) return this.sendError(id, new CommandError('DUPLICATE_ID', `request id ${id} is already in use`), false);
    if (this.inflightCount >= HARD_INFLIGHT) return this.sendError(id, new CommandError('BUSY', 'too many requests in flight'));
    let spec;
    let valid;
    try {
      spec = this.dispatcher.specFor(command, stream);
      valid = this.dispatcher.validate(spec, payload);
    } catch (e) {
      // Validation refuses with CommandError; anything else is a fault (the guard takes it).
      if (!(e instanceof CommandError)) throw e;
      this.events.counted('request', command, e.code);
      // Probing for commands is counted against the source; the name itself is never kept.
      if (e.code === 'UNKNOWN_COMMAND') this.events.violation('command', 'unknown command');
      // An upload that was refused still occupies the id until the client sees the error.
      return this.sendError(id, e);
    }
    const f = new InFlight(this, id, command);
    if (stream) f.upload = new InboundStream((bytes) => this.send({ kind: 'credit', id, bytes }));
    // A handler that throws synchronously escapes to the guard (fault()): the connection ends.
    const pending: unknown = spec.handler(valid, f);
    if (!(pending instanceof Promise)) {
      // A plain result (ping): answered now, sealed with the rest of this turn's output. Nothing
      // else ran in between, so unless a download follows (credit and cancel find it by id) it
      // never needs a place in the in-flight table or a deadline.
      const result = pending as { payload: unknown; download?: AsyncIterable<Uint8Array> };
      if (result.download) this.track(f);
      this.onResult(f, result);
      return;
    }
    this.track(f);
    pending.then(
      (result) => this.guarded('result', () => this.onResult(f, result)),
      (e: unknown) => {
        if (f.phase === WAITING) this.guarded('result', () => this.finishRequest(f, e));
      },
    );
  }

  /** Puts `f` in the in-flight table (its id taken, its deadline watched); pauses reading when full. */
  private track(f: InFlight): void {
    f.deadline = Date.now() + this.limits.requestTimeoutMs;
    const inflight = (this.inflight ??= new Map());
    inflight.set(f.id, f);
    if (inflight.size >= MAX_INFLIGHT_REQUESTS) this.socket.pause();
    this.sweepTimer ??= setTimeout(onSweepTimer, this.limits.requestTimeoutMs, this).unref();
  }

  private onResult(f: InFlight, result: { payload: unknown; download?: AsyncIterable<Uint8Array> }): void {
    if (f.phase !== WAITING) return discardDownload(result.download); // already answered: aborted (timeout, cancel, closed)
    if (this.closed) {
      discardDownload(result.download);
      return this.retire(f);
    }
    try {
      if (!result.download) {
        this.sendResponse(f.id, result.payload ?? null);
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
      try {
        this.send({ kind: 'response', id, payload: payload ?? null, stream: true });
      } catch (e) {
        discardDownload(download);
        throw e;
      }
      const echoed = download instanceof InboundStream;
      for await (const piece of download) {
        // Each CHUNK is cut to the credit held (at most MAX_CHUNK_LEN): any grant moves it on.
        for (let off = 0; off < piece.length; ) {
          // Without a promise when credit is held and the socket takes more (the usual case).
          const want = Math.min(MAX_CHUNK_LEN, piece.length - off);
          const n = credit.tryTakeUpTo(want) || (await credit.takeUpTo(want));
          const data = piece.subarray(off, off + n);
          off += n;
          if (this.closed || this.socket.writableLength > this.limits.writeHighWaterBytes) await this.writable(f);
          this.send({ kind: 'chunk', id, data });
        }
        // An upload echoed back: each piece is a chunk the peer sent, just sealed into the
        // download (send() copies it), so nothing reads it any more; its read buffer may be
        // reused (protocol/read-buffers.ts). Nothing happens for a chunk that was not lent.
        if (echoed) releaseChunk(piece);
      }
      this.send({ kind: 'end', id });
      this.events.counted('request', f.command, 'ok');
      this.retire(f);
    } catch (e) {
      this.finishRequest(f, e);
    }
  }

  /** Answers a request that failed or was aborted with its typed error, once. */
  protected finishRequest(f: InFlight, e: unknown): void {
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
    const inflight = this.inflight;
    if (inflight?.get(f.id) === f) inflight.delete(f.id);
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
      const deadline = f.deadline!;
      if (deadline > now) {
        this.sweepTimer = setTimeout(onSweepTimer, deadline - now, this).unref();
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

  protected abortInFlight(f: InFlight, err: CommandError): void {
    f.reason ??= err;
    if (f.controller && !f.controller.signal.aborted) f.controller.abort(f.reason);
    f.upload?.abort(err);
    f.credit?.abort(err);
    // A handler still working is answered at once; its late result is ignored.
    if (f.phase === WAITING) this.finishRequest(f, f.reason);
  }

  /**
   * Sends an ERROR. Its text is bounded (boundedText: at most MAX_WIRE_ERROR_TEXT characters,
   * control characters replaced), so the message always fits one record whoever built it.
   */
  protected sendError(id: number, e: CommandError, count = true): void {
    if (count) this.log.debug('request refused', { conn: this.info.id, code: e.code });
    this.send({ kind: 'error', id, code: e.code, message: boundedText(e.message) });
  }
}

function onSweepTimer(c: RequestLifecycle): void {
  try {
    c.sweep();
  } catch (e) {
    c.fault('request timer', e);
  }
}

/**
 * A download that will never be read is closed (its iterator's return()): what it holds (an open
 * file, a peer transfer slot, a snapshot file) is given back at once, not when it is collected.
 */
function discardDownload(download: AsyncIterable<Uint8Array> | undefined): void {
  if (!download) return;
  try {
    void download[Symbol.asyncIterator]().return?.()?.catch(() => undefined);
  } catch {
    // a broken iterable: nothing to give back
  }
}
