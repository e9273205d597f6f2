/**
 * The client SDK: one authenticated, encrypted connection; request/response with promises,
 * many requests in flight, upload and download streams with flow control.
 */
import type { Socket } from 'node:net';
import type { ClientSession } from '../protocol/client-session.js';
import { CLOSE_NORMAL, MAX_CHUNK_LEN, MAX_REQUEST_ID } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { InboundStream, OutboundCredit } from '../protocol/flow.js';
import type { Message } from '../protocol/messages.js';
import { IDENTITY_NOTICE_EVENT } from '../protocol/identity-notice.js';
import { ClientError, RemoteError } from './errors.js';
import { dial, type ConnectOptions } from './dial.js';
import type { ServerPins } from './server-trust.js';
import { writePieces } from './socket-write.js';

export type { ConnectOptions } from './dial.js';

export interface RequestOptions {
  timeoutMs?: number;
  /** Data to upload as a stream after the request. */
  upload?: AsyncIterable<Uint8Array> | Uint8Array;
}

export interface Response {
  payload: unknown;
  /** Present when the server answered with a download stream. */
  download?: AsyncIterable<Uint8Array>;
}

interface Pending {
  resolve(r: Response): void;
  reject(e: Error): void;
  /** When it times out (Date.now() milliseconds), and the text of that error. */
  deadline: number;
  command: string;
  timeoutMs: number;
  download?: InboundStream;
  credit?: OutboundCredit;
}

export class Connection {
  readonly fingerprint: string;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** One timer for all requests, due at the earliest deadline (sweepAt). */
  private sweepTimer: NodeJS.Timeout | undefined;
  private sweepAt = Infinity;
  private flushQueued = false;
  private closedError: Error | undefined;
  private readonly closedPromise: Promise<void>;

  private constructor(
    private readonly socket: Socket,
    private readonly session: ClientSession,
    fingerprint: string,
    private readonly requestTimeoutMs: number,
    /** The pins for this server, moved by identity notices (server-trust.ts). */
    private readonly trust: ServerPins,
  ) {
    this.fingerprint = fingerprint;
    this.closedPromise = new Promise((r) => socket.once('close', () => r()));
  }

  /** The fingerprints accepted for this server now: the pinned ones, as updated by verified identity notices. */
  get pins(): readonly string[] {
    return this.trust.pins;
  }

  static async open(opts: ConnectOptions): Promise<Connection> {
    const { socket, session, fingerprint, trust } = await dial(opts);
    const conn = new Connection(socket, session, fingerprint, opts.requestTimeoutMs ?? 60_000, trust);
    conn.attach();
    return conn;
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** The session's exporter value (a copy; PROTOCOL.md 4): binds an application's own authentication to this session. */
  get channelBinding(): Buffer | undefined {
    const b = this.session.channelBinding;
    return b ? Buffer.from(b) : undefined;
  }

  /** The protocol version agreed in the handshake (1, 2 or 3). */
  get version(): number {
    return this.session.negotiatedVersion;
  }

  /** Sends a request; resolves with the payload (and a download stream when there is one). */
  request(command: string, payload: unknown = {}, opts: RequestOptions = {}): Promise<Response> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.allocateId();
    const upload = opts.upload;
    return new Promise<Response>((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? this.requestTimeoutMs;
      const deadline = Date.now() + timeoutMs;
      const p: Pending = { resolve, reject, deadline, command, timeoutMs };
      if (upload) p.credit = new OutboundCredit();
      this.pending.set(id, p);
      if (deadline < this.sweepAt) this.armSweep(deadline);
      try {
        this.send({ kind: 'request', id, command, payload, stream: upload !== undefined });
      } catch (e) {
        // Nothing was sent: a request too large for one record must not reach the server,
        // which would take it for an attack on the record layer.
        const tooLarge = e instanceof ProtocolError && e.code === 'RECORD_TOO_LARGE';
        return this.finish(id, tooLarge ? new ClientError('REQUEST_TOO_LARGE', `${command} request does not fit in one record; send large data as an upload`) : (e as Error));
      }
      if (upload) void this.pumpUpload(id, p.credit!, upload);
    });
  }

  /** Round-trip time of one ping, in milliseconds. */
  async ping(data?: Uint8Array): Promise<number> {
    const t0 = process.hrtime.bigint();
    await this.request('ping', data ? { data } : {});
    return Number(process.hrtime.bigint() - t0) / 1e6;
  }

  async close(): Promise<void> {
    if (!this.closedError) {
      this.session.close(CLOSE_NORMAL);
      this.flush();
      this.socket.end();
      this.shutdown(new ClientError('CONNECTION_CLOSED', 'connection closed'));
    }
    const t = setTimeout(() => this.socket.destroy(), 2000);
    await this.closedPromise;
    clearTimeout(t);
  }

  private attach(): void {
    this.socket.on('data', (d: Buffer) => {
      // The socket's read buffer is ours alone: records are opened in place in it.
      this.session.receive(d, true);
      this.pump();
    });
    this.socket.on('error', () => this.shutdown(new ClientError('CONNECTION_CLOSED', 'connection lost')));
    this.socket.on('close', () => this.shutdown(new ClientError('CONNECTION_CLOSED', 'the server closed the connection')));
    this.pump(); // records that arrived together with the handshake
  }

  private pump(): void {
    for (;;) {
      const ev = this.session.nextEvent();
      if (ev.type === 'need-data') return;
      if (ev.type === 'message') {
        try {
          this.onMessage(ev.message);
        } catch (e) {
          // A stream message past the granted credit (or a credit past the window) from the
          // server: end the connection instead of throwing out of the socket handler.
          this.shutdown(new ClientError('PROTOCOL_ERROR', `protocol error: ${e instanceof ProtocolError ? e.code : 'BAD_MESSAGE'}`));
          this.socket.destroy();
          return;
        }
        continue;
      }
      if (ev.type === 'closed') {
        this.shutdown(new ClientError('CONNECTION_CLOSED', `the server closed the session: ${CLOSE_REASONS[ev.code] ?? `code ${ev.code}`}`));
        this.socket.end();
        return;
      }
      if (ev.type === 'error') {
        this.shutdown(new ClientError('PROTOCOL_ERROR', `protocol error: ${ev.error.code}`));
        this.socket.destroy();
        return;
      }
    }
  }

  private onMessage(m: Message): void {
    switch (m.kind) {
      case 'response': {
        const p = this.pending.get(m.id);
        if (!p) return;
        if (!m.stream) return this.finish(m.id, undefined, { payload: m.payload });
        p.download = new InboundStream((bytes) => this.send({ kind: 'credit', id: m.id, bytes }));
        p.resolve({ payload: m.payload, download: p.download });
        return;
      }
      case 'error':
        return this.finish(m.id, new RemoteError(m.code, m.message));
      case 'chunk':
        this.pending.get(m.id)?.download?.push(m.data);
        return;
      case 'end': {
        const p = this.pending.get(m.id);
        p?.download?.end();
        if (p?.download) this.finish(m.id);
        return;
      }
      case 'credit':
        this.pending.get(m.id)?.credit?.add(m.bytes);
        return;
      case 'notice':
        if (m.event === IDENTITY_NOTICE_EVENT) this.trust.onIdentityNotice(m.payload);
        return; // other events: ignored (PROTOCOL.md 11.1)
      default:
        return;
    }
  }

  private async pumpUpload(id: number, credit: OutboundCredit, upload: AsyncIterable<Uint8Array> | Uint8Array): Promise<void> {
    const source: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = upload instanceof Uint8Array ? [upload] : upload;
    try {
      for await (const piece of source) {
        // Each CHUNK is cut to the credit held (at most MAX_CHUNK_LEN): any grant moves it on.
        for (let off = 0; off < piece.length; ) {
          const n = await credit.takeUpTo(Math.min(MAX_CHUNK_LEN, piece.length - off));
          const data = piece.subarray(off, off + n);
          off += n;
          if (!this.pending.has(id)) return;
          await this.writable();
          this.send({ kind: 'chunk', id, data });
        }
      }
      this.send({ kind: 'end', id });
    } catch {
      // The request failed or the connection closed; its promise already carries the reason.
    }
  }

  private async writable(): Promise<void> {
    while (!this.closedError && this.socket.writableLength > 1024 * 1024) {
      await new Promise<void>((r) => this.socket.once('drain', r).once('close', r));
    }
  }

  private armSweep(at: number): void {
    clearTimeout(this.sweepTimer);
    this.sweepAt = at;
    this.sweepTimer = setTimeout(() => this.sweep(), Math.max(0, at - Date.now())).unref();
  }

  /** Times out the requests past their deadline (cancelling them at the server); re-arms. */
  private sweep(): void {
    this.sweepTimer = undefined;
    this.sweepAt = Infinity;
    const now = Date.now();
    let next = Infinity;
    for (const [id, p] of [...this.pending]) {
      if (p.deadline <= now) {
        this.finish(id, new ClientError('TIMEOUT', `${p.command} got no answer within ${p.timeoutMs} ms`));
        this.send({ kind: 'cancel', id });
      } else if (p.deadline < next) next = p.deadline;
    }
    if (next < Infinity && !this.closedError) this.armSweep(next);
  }

  private finish(id: number, error?: Error, response?: Response): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    p.credit?.abort(error ?? new ClientError('CONNECTION_CLOSED', 'request finished'));
    if (error) {
      p.download?.abort(error);
      p.reject(error);
    } else if (response) p.resolve(response);
  }

  private shutdown(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    clearTimeout(this.sweepTimer);
    this.sweepTimer = undefined;
    this.sweepAt = -Infinity;
    for (const id of [...this.pending.keys()]) this.finish(id, error);
    this.session.wipe();
  }

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = this.nextId >= MAX_REQUEST_ID ? 1 : this.nextId + 1;
      if (!this.pending.has(id)) return id;
    }
  }

  /**
   * Seals the message now; everything sealed in this turn leaves in one write, from a
   * microtask (so many requests issued together cost one write, not one each).
   */
  private send(m: Message): void {
    if (this.closedError) return;
    this.session.sendMessage(m);
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(() => {
        this.flushQueued = false;
        this.flush();
      });
    }
  }

  private flush(): void {
    const out = this.session.takeOutputPieces();
    if (out.length > 0 && !this.socket.destroyed) writePieces(this.socket, out);
  }
}

/** docs/PROTOCOL.md section 5.2, in words for error messages. */
const CLOSE_REASONS: Record<number, string> = {
  0: 'normal close',
  1: 'the server is shutting down',
  2: 'idle timeout',
  3: 'protocol error',
  4: 'refused by policy (this address was banned, or holds too many connections)',
};


export function connect(opts: ConnectOptions): Promise<Connection> {
  return Connection.open(opts);
}
