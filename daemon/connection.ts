import type { Socket } from 'node:net';
import { CLOSE_IDLE, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN, MAX_CHUNK_LEN, MAX_INFLIGHT_REQUESTS } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { InboundStream, OutboundCredit } from '../protocol/flow.js';
import type { Message } from '../protocol/messages.js';
import type { ServerSession } from '../protocol/server-session.js';
import { CommandError } from './command-errors.js';
import type { CommandContext, ConnectionInfo, Dispatcher } from './dispatcher.js';
import type { Limits } from './config.js';
import type { Logger } from './log.js';
import type { ViolationKind } from './violations.js';

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
}

interface InFlight {
  readonly abort: AbortController;
  upload?: InboundStream;
  credit?: OutboundCredit;
}

/** Twice the soft limit: past it requests are refused, below it reading merely pauses. */
const HARD_INFLIGHT = MAX_INFLIGHT_REQUESTS * 2;

export class Connection {
  readonly info: ConnectionInfo;
  private readonly inflight = new Map<number, InFlight>();
  private readonly sessionState = new Map<string, unknown>();
  private handshakeTimer: NodeJS.Timeout | undefined;
  private handshakeOpen = true;
  private draining = false;
  private closed = false;
  private pausedForOutput = false;
  private bytesIn = 0;

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
    this.handshakeTimer = setTimeout(() => this.onHandshakeTimeout(), limits.handshakeTimeoutMs);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('end', () => this.onEnd());
    socket.on('error', () => this.destroy());
    socket.on('close', () => this.onSocketClose());
    socket.on('drain', () => this.onDrain());
    socket.on('timeout', () => this.onIdle());
  }

  get isEstablished(): boolean {
    return this.session.state === 'ESTABLISHED';
  }

  /** Graceful shutdown: refuse new requests, close once the in-flight ones are answered. */
  drain(): void {
    this.draining = true;
    if (!this.isEstablished) return this.destroy();
    if (this.inflight.size === 0) this.closeWith(CLOSE_SHUTDOWN);
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.finishHandshake(false);
    for (const f of this.inflight.values()) this.abortInFlight(f, new CommandError('CANCELLED', 'connection closed'));
    this.inflight.clear();
    this.session.wipe();
    this.socket.destroy();
  }

  private onData(data: Buffer): void {
    if (this.closed) return;
    this.bytesIn += data.length;
    this.session.receive(data);
    this.pump();
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
    this.log.warn('connection refused', {
      conn: this.info.id,
      ip: this.info.ip,
      code: error.code,
      state: this.session.state,
      ...(cause instanceof Error ? { cause: cause.name } : {}),
    });
    this.events.violation(error.violationKind, error.code);
    this.flush(); // a Reject, if the session produced one
    this.destroy();
  }

  private onMessage(m: Message): void {
    switch (m.kind) {
      case 'request':
        return this.onRequest(m.id, m.command, m.payload, m.stream);
      case 'chunk': {
        const f = this.inflight.get(m.id);
        if (!f?.upload) return; // a race with completion or cancel; the data is dropped
        try {
          f.upload.push(m.data);
        } catch (e) {
          return this.protocolFailure(e as ProtocolError);
        }
        return;
      }
      case 'end':
        this.inflight.get(m.id)?.upload?.end();
        return;
      case 'credit': {
        try {
          this.inflight.get(m.id)?.credit?.add(m.bytes);
        } catch (e) {
          return this.protocolFailure(e as ProtocolError);
        }
        return;
      }
      case 'cancel': {
        const f = this.inflight.get(m.id);
        if (f) this.abortInFlight(f, new CommandError('CANCELLED', 'cancelled by the client'));
        return;
      }
      default:
        return this.protocolFailure(new ProtocolError('BAD_MESSAGE', `a client may not send ${m.kind}`));
    }
  }

  private onRequest(id: number, command: string, payload: unknown, stream: boolean): void {
    if (this.draining) return this.sendError(id, new CommandError('SHUTTING_DOWN', 'the server is shutting down'));
    if (this.inflight.has(id)) return this.sendError(id, new CommandError('DUPLICATE_ID', `request id ${id} is already in use`), false);
    if (this.inflight.size >= HARD_INFLIGHT) return this.sendError(id, new CommandError('BUSY', 'too many requests in flight'));
    let prepared;
    try {
      prepared = this.dispatcher.prepare(command, payload, stream);
    } catch (e) {
      this.events.counted('request', command, (e as CommandError).code);
      // An upload that was refused still occupies the id until the client sees the error.
      return this.sendError(id, e as CommandError);
    }
    const f: InFlight = { abort: new AbortController() };
    if (stream) f.upload = new InboundStream((bytes) => this.send({ kind: 'credit', id, bytes }));
    this.inflight.set(id, f);
    if (this.inflight.size >= MAX_INFLIGHT_REQUESTS) this.socket.pause();
    const timer = setTimeout(() => this.abortInFlight(f, new CommandError('TIMEOUT', 'the request took too long')), this.limits.requestTimeoutMs);
    const ctx: CommandContext = {
      conn: this.info,
      signal: f.abort.signal,
      session: this.sessionState,
      ...(f.upload ? { upload: f.upload } : {}),
    };
    void this.run(id, command, prepared.spec.handler(prepared.payload, ctx), f).finally(() => {
      clearTimeout(timer);
      this.inflight.delete(id);
      this.afterRequest();
    });
  }

  private async run(id: number, command: string, pending: Promise<{ payload: unknown; download?: AsyncIterable<Uint8Array> }>, f: InFlight): Promise<void> {
    try {
      const result = await Promise.race([pending, aborted(f.abort.signal)]);
      if (this.closed) return;
      if (!result.download) {
        this.send({ kind: 'response', id, payload: result.payload ?? null, stream: false });
        this.events.counted('request', command, 'ok');
        return;
      }
      f.credit = new OutboundCredit();
      this.send({ kind: 'response', id, payload: result.payload ?? null, stream: true });
      for await (const piece of result.download) {
        for (let off = 0; off < piece.length; off += MAX_CHUNK_LEN) {
          const data = piece.subarray(off, Math.min(piece.length, off + MAX_CHUNK_LEN));
          await f.credit.take(data.length);
          await this.writable(f.abort.signal);
          this.send({ kind: 'chunk', id, data });
        }
      }
      this.send({ kind: 'end', id });
      this.events.counted('request', command, 'ok');
    } catch (e) {
      const err =
        e instanceof CommandError
          ? e
          : e instanceof ProtocolError && e.code === 'RECORD_TOO_LARGE'
            ? new CommandError('TOO_LARGE', 'the response does not fit in one record')
            : e instanceof ProtocolError
              ? new CommandError('BAD_REQUEST', 'stream aborted')
              : undefined;
      if (e instanceof ProtocolError && e.code === 'RECORD_TOO_LARGE') this.log.error('response too large for one record', { conn: this.info.id, command });
      if (!err) this.log.error('command failed', { conn: this.info.id, command, error: (e as Error)?.name });
      const wire = err ?? new CommandError('INTERNAL', 'internal error');
      this.events.counted('request', command, wire.code);
      if (!this.closed) this.sendError(id, wire);
    }
  }

  /** Resolves when the socket's write buffer is below the high-water mark. */
  private async writable(signal: AbortSignal): Promise<void> {
    while (!this.closed && this.socket.writableLength > this.limits.writeHighWaterBytes) {
      if (signal.aborted) throw signal.reason;
      await new Promise<void>((r) => this.socket.once('drain', r).once('close', r));
    }
    if (this.closed) throw new CommandError('CANCELLED', 'connection closed');
  }

  private abortInFlight(f: InFlight, err: CommandError): void {
    if (!f.abort.signal.aborted) f.abort.abort(err);
    f.upload?.abort(err);
    f.credit?.abort(err);
  }

  private afterRequest(): void {
    if (this.closed) return;
    if (this.draining && this.inflight.size === 0) return this.closeWith(CLOSE_SHUTDOWN);
    this.maybeResume();
  }

  private maybeResume(): void {
    if (this.inflight.size < MAX_INFLIGHT_REQUESTS && !this.pausedForOutput && this.socket.isPaused()) this.socket.resume();
  }

  private sendError(id: number, e: CommandError, count = true): void {
    if (count) this.log.debug('request refused', { conn: this.info.id, code: e.code });
    this.send({ kind: 'error', id, code: e.code, message: e.message });
  }

  private send(m: Message): void {
    if (this.closed || !this.isEstablished) return;
    this.session.sendMessage(m);
    this.flush();
  }

  private flush(): void {
    const out = this.session.takeOutput();
    if (out.length === 0 || this.socket.destroyed) return;
    this.socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
    if (this.socket.writableLength > this.limits.writeHighWaterBytes && !this.pausedForOutput) {
      this.pausedForOutput = true;
      this.socket.pause();
    }
  }

  private onDrain(): void {
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

  private onHandshakeTimeout(): void {
    if (!this.handshakeOpen || this.closed) return;
    const silent = this.bytesIn === 0;
    this.log.warn('handshake timeout', { conn: this.info.id, ip: this.info.ip, bytes: this.bytesIn });
    this.events.violation(silent ? 'silent' : 'handshake', silent ? 'sent nothing' : 'handshake not completed in time');
    this.destroy();
  }

  private onIdle(): void {
    if (this.inflight.size > 0) return;
    this.log.info('idle timeout', { conn: this.info.id });
    this.closeWith(CLOSE_IDLE);
  }

  private onEnd(): void {
    if (this.closed) return;
    if (this.session.bufferedBytes > 0) {
      this.protocolFailure(new ProtocolError('TRUNCATED', 'connection ended inside a record'));
      return;
    }
    if (this.handshakeOpen && this.bytesIn > 0) {
      this.protocolFailure(new ProtocolError('BAD_HANDSHAKE_MESSAGE', 'connection ended inside the handshake'));
      return;
    }
    this.closeWith(this.isEstablished ? CLOSE_NORMAL : CLOSE_PROTOCOL_ERROR);
  }

  private onSocketClose(): void {
    this.destroy();
    this.events.closed();
  }
}

function aborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

/** IPv4 peers on a dual-stack socket appear as ::ffff:a.b.c.d; report them as IPv4. */
export function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}
