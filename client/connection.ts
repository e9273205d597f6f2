import { decodeRefusal, type Refusal } from '../protocol/refusal.js';
import { connect as netConnect, type Socket } from 'node:net';
import { fingerprintOf, normalizeFingerprint } from '../crypto/identity.js';
import { ClientSession, pinFingerprint } from '../protocol/client-session.js';
import { CLOSE_NORMAL, MAX_CHUNK_LEN, MAX_REQUEST_ID } from '../protocol/constants.js';
import { ProtocolError } from '../protocol/errors.js';
import { InboundStream, OutboundCredit } from '../protocol/flow.js';
import type { Message } from '../protocol/messages.js';
import { applyIdentityNotice, IDENTITY_NOTICE_EVENT, MAX_NOTICES_PER_SESSION, parseIdentityNotice, successionFromPins, type IdentityNotice, type SuccessionRecord } from '../protocol/identity-notice.js';
import { ClientError, RemoteError } from './errors.js';
import { canonicalServerName, lookupKnownServerPins, lookupSuccessions, rememberServer, setServerPins } from './known-servers.js';
import { writePieces } from './socket-write.js';

/**
 * The client SDK: one authenticated, encrypted connection; request/response with promises,
 * many requests in flight, upload and download streams with flow control.
 */
export interface ConnectOptions {
  host: string;
  port: number;
  /** Expected SHA-256 fingerprint of the server key (hex, colons allowed). */
  fingerprint?: string;
  /** Several accepted fingerprints (an identity key rollover in progress); instead of `fingerprint`. */
  fingerprints?: readonly string[];
  /**
   * Trust on first use: record the key in this file, refuse a key not pinned there later; the
   * server's lines follow verified identity key rollovers (docs/PROTOCOL.md 6.4). With
   * `fingerprint` too, only that key is accepted, and it replaces the server's lines here (the
   * way to trust a new key after checking its fingerprint out of band).
   */
  knownServersFile?: string;
  /** Called with the new pins after a verified `identity.keys` notice changed them. */
  onPinsChanged?: (fingerprints: string[]) => void;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Local address to connect from (tests use 127.0.0.x). */
  localAddress?: string;
  rekeyAfterRecords?: number;
  /**
   * Highest protocol version to offer (default 2: requests and answers of one turn share a
   * record). 1 talks to servers that predate version 2 the same as before (PROTOCOL.md 8).
   */
  maxVersion?: 1 | 2;
}

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

  /** The fingerprints this client accepts for the server now (changed by identity notices). */
  private pinsNow: string[];
  /** Remembered rotation statements for this server (PROTOCOL.md 6.4). */
  private successions: SuccessionRecord[];
  /** Identity notices seen on this session; only the first MAX_NOTICES_PER_SESSION are processed. */
  private noticesSeen = 0;

  private constructor(
    private readonly socket: Socket,
    private readonly session: ClientSession,
    fingerprint: string,
    private readonly requestTimeoutMs: number,
    private readonly spki: Buffer,
    private readonly pinning: { server: string; pins: string[]; successions: SuccessionRecord[]; file?: string; onPinsChanged?: (fps: string[]) => void },
  ) {
    this.fingerprint = fingerprint;
    this.pinsNow = pinning.pins;
    this.successions = pinning.successions;
    this.closedPromise = new Promise((r) => socket.once('close', () => r()));
  }

  /** The fingerprints accepted for this server now: the pinned ones, as updated by verified identity notices. */
  get pins(): readonly string[] {
    return this.pinsNow;
  }

  static async open(opts: ConnectOptions): Promise<Connection> {
    // Filed canonical (lower case, no trailing dot), as ssh does with known_hosts names.
    const server = canonicalServerName(`${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`);
    // Pins: the explicit fingerprint, else the known-servers lines (none: trust on first use).
    let pins: string[];
    let successions: SuccessionRecord[] = [];
    let tofu: { file: string; known: boolean } | undefined;
    if (opts.fingerprint || (opts.fingerprints && opts.fingerprints.length > 0)) {
      pins = [];
      for (const given of opts.fingerprint ? [opts.fingerprint] : opts.fingerprints!) {
        const fp = normalizeFingerprint(given);
        if (!fp) throw new ClientError('SERVER_KEY_MISMATCH', 'the expected fingerprint is not a SHA-256 hex value');
        if (!pins.includes(fp)) pins.push(fp);
      }
    } else if (opts.knownServersFile) {
      pins = lookupKnownServerPins(opts.knownServersFile, server);
      successions = lookupSuccessions(opts.knownServersFile, server);
      tofu = { file: opts.knownServersFile, known: pins.length > 0 };
    } else {
      throw new ClientError('SERVER_KEY_MISMATCH', 'give the server fingerprint, or a known-servers file for trust on first use');
    }
    // The session accepts any key; the pin is checked once the handshake is complete, so that a
    // client with a stale pin ends the session with CLOSE (never a ban) and can read the
    // server's identity notice to tell a key rollover from an unexplained change (PROTOCOL.md 3.2).
    const trusted = (fp: string) => (pins.length === 0 && tofu !== undefined) || pins.some((p) => pinFingerprint(p)(fp));
    const session = new ClientSession({
      acceptServerKey: () => true,
      ...(opts.rekeyAfterRecords ? { rekeyAfterRecords: opts.rekeyAfterRecords } : {}),
      ...(opts.maxVersion ? { maxVersion: opts.maxVersion } : {}),
    });
    const socket = netConnect({ host: opts.host, port: opts.port, noDelay: true, ...(opts.localAddress ? { localAddress: opts.localAddress } : {}) });
    const timeoutMs = opts.connectTimeoutMs ?? 10_000;
    const { fingerprint, spki } = await new Promise<{ fingerprint: string; spki: Buffer }>((resolve, reject) => {
      const timer = setTimeout(() => fail(new ClientError('CONNECT_TIMEOUT', `no handshake with ${server} within ${timeoutMs} ms`)), timeoutMs);
      let settled = false;
      const fail = (e: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.destroy();
        reject(e);
      };
      socket.once('error', (e: NodeJS.ErrnoException) => fail(new ClientError('CONNECT_FAILED', `cannot connect to ${server}: ${e.code ?? e.message}`)));
      socket.once('close', () => fail(probe ? probeError() : new ClientError('HANDSHAKE_FAILED', `${server} closed the connection during the handshake`)));
      socket.once('connect', () => {
        session.start();
        socket.write(Buffer.concat(session.takeOutput()));
      });
      // Set when the server's key is not pinned: the session is finished but only probed.
      let probe: { fingerprint: string; spki: Buffer; notice?: IdentityNotice; seen: number } | undefined;
      const probeError = (): ClientError => keyChangedError(server, probe!.fingerprint, probe!.spki, pins, probe!.notice, opts, tofu);
      const endProbe = () => {
        if (settled) return;
        const e = probeError();
        settled = true;
        clearTimeout(timer);
        // A normal CLOSE: the server counts no violation (an abort without it counts, 11).
        try {
          session.close(CLOSE_NORMAL);
          socket.end(Buffer.concat(session.takeOutput()));
        } catch {
          socket.destroy();
        }
        setTimeout(() => socket.destroy(), 2000).unref();
        reject(e);
      };
      // The server's first bytes may be a plaintext refusal (PROTOCOL.md 3.4) instead of a
      // ServerHello: held back until it is clear which.
      let first: Buffer | undefined = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        let d = chunk;
        if (first !== undefined) {
          first = Buffer.concat([first, chunk]);
          const refusal = decodeRefusal(first);
          if (refusal === 'need-data') return;
          if (refusal) return fail(refusalError(refusal, server));
          d = first;
          first = undefined;
        }
        session.receive(d);
        for (;;) {
          const ev = session.nextEvent();
          if (ev.type === 'need-data') return;
          if (probe) {
            // Only a ping is in flight: its answer (or any end) ends the probe; a NOTICE before
            // it is the server's identity notice, if it has one.
            if (ev.type === 'message' && ev.message.kind === 'notice' && ev.message.event === IDENTITY_NOTICE_EVENT) {
              // At most MAX_NOTICES_PER_SESSION are parsed (each costs up to 8 RSA checks).
              if (probe.notice === undefined && probe.seen++ < MAX_NOTICES_PER_SESSION) probe.notice = parseIdentityNotice(ev.message.payload);
              continue;
            }
            if (ev.type === 'message' && ev.message.kind !== 'response' && ev.message.kind !== 'error') continue;
            socket.off('data', onData);
            return endProbe();
          }
          if (ev.type === 'established') {
            if (!trusted(ev.fingerprint)) {
              // Key confirmation goes out with one ping; nothing else is ever sent on this session.
              probe = { fingerprint: ev.fingerprint, spki: ev.spki, seen: 0 };
              session.sendMessage({ kind: 'request', id: 1, command: 'ping', payload: {}, stream: false });
              socket.write(Buffer.concat(session.takeOutput()));
              continue;
            }
            socket.off('data', onData);
            settled = true;
            clearTimeout(timer);
            socket.removeAllListeners('error').removeAllListeners('close');
            socket.write(Buffer.concat(session.takeOutput()));
            return resolve({ fingerprint: ev.fingerprint, spki: ev.spki });
          }
          socket.off('data', onData);
          fail(new ClientError('HANDSHAKE_FAILED', `handshake with ${server} failed: ${ev.type === 'error' ? ev.error.code : ev.type}`));
          return;
        }
      };
      socket.on('data', onData);
    });
    let accepted = pins;
    if (opts.fingerprint && opts.knownServersFile) {
      // A key the user confirmed out of band: a fresh start, no remembered rotations.
      setServerPins(opts.knownServersFile, server, pins, []);
    } else if (tofu && !tofu.known) {
      rememberServer(tofu.file, server, fingerprint);
      accepted = [fingerprint];
    }
    const conn = new Connection(socket, session, fingerprint, opts.requestTimeoutMs ?? 60_000, spki, {
      server,
      pins: accepted,
      successions: opts.fingerprint ? [] : successions,
      ...(opts.knownServersFile ? { file: opts.knownServersFile } : {}),
      ...(opts.onPinsChanged ? { onPinsChanged: opts.onPinsChanged } : {}),
    });
    conn.attach();
    return conn;
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** The protocol version agreed in the handshake (1 or 2). */
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
      this.session.receive(d);
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
        if (m.event === IDENTITY_NOTICE_EVENT) this.onIdentityNotice(m.payload);
        return; // other events: ignored (PROTOCOL.md 11.1)
      default:
        return;
    }
  }

  /**
   * A verified identity notice about the key of this session sets the pins for this server
   * under the rules of PROTOCOL.md 6.4 (applyIdentityNotice: a key the client has seen succeeded
   * rewrites nothing); a notice that fails any check changes nothing. Only the first
   * MAX_NOTICES_PER_SESSION notices of a session are parsed.
   */
  private onIdentityNotice(payload: unknown): void {
    if (this.noticesSeen >= MAX_NOTICES_PER_SESSION) return;
    this.noticesSeen++;
    const n = parseIdentityNotice(payload);
    const next = n && applyIdentityNotice(n, this.spki, { pins: this.pinsNow, successions: this.successions });
    if (!next) return;
    const changed = !(next.pins.length === this.pinsNow.length && next.pins.every((fp) => this.pinsNow.includes(fp)));
    this.pinsNow = next.pins;
    this.successions = next.successions;
    if (this.pinning.file) {
      try {
        setServerPins(this.pinning.file, this.pinning.server, next.pins, next.successions);
      } catch {
        // The file cannot be written now: the next connection gets the notice again.
      }
    }
    if (changed) this.pinning.onPinsChanged?.(next.pins);
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

/**
 * The error for a server key that is not pinned. With a verified rollover chain from a pinned key
 * to the new one (the server's identity notice), SERVER_KEY_ROTATED tells the user what to do;
 * otherwise the key change is unexplained (SERVER_KEY_CHANGED / SERVER_KEY_MISMATCH).
 */
function keyChangedError(
  server: string,
  fingerprint: string,
  spki: Buffer,
  pins: readonly string[],
  notice: IdentityNotice | undefined,
  opts: ConnectOptions,
  tofu: { file: string; known: boolean } | undefined,
): ClientError {
  const chain = notice && successionFromPins(notice, pins, spki);
  if (chain) {
    const first = chain[0]!;
    const pinned = fingerprintOf(first.old);
    const how = opts.knownServersFile
      ? `then run: commusic --server ${server} --tofu --known-servers ${opts.knownServersFile} --fingerprint ${fingerprint} ping (records it in ${opts.knownServersFile})`
      : `then connect with --fingerprint ${fingerprint}`;
    return new ClientError(
      'SERVER_KEY_ROTATED',
      `${server} has rolled its identity key over: your pinned key ${pinned} was replaced by ${fingerprint} (rollover announced ${new Date(first.time).toISOString()}, signed by both keys). This client was offline during the changeover, so it could not follow it. Verify ${fingerprint} with your server operator out of band (by telephone or letter; the operator reads it with "commusicctl keys show"), ${how}. No password or data was sent.`,
    );
  }
  if (tofu?.known) {
    return new ClientError('SERVER_KEY_CHANGED', `WARNING: the key of ${server} has CHANGED (now ${fingerprint}, recorded ${pins.join(', ')} in ${tofu.file}), and the server shows no rollover signed by the recorded key. Someone may be intercepting the connection; refusing to connect.`);
  }
  return new ClientError('SERVER_KEY_MISMATCH', `the key of ${server} (${fingerprint}) does not match the expected fingerprint; refusing to connect`);
}

/** What a member reads when the server refused the connection before the handshake. */
function refusalError(r: Refusal, server: string): ClientError {
  if (r.code === 'BANNED') {
    const until = r.until !== undefined ? new Date(r.until).toISOString() : 'further notice';
    return new ClientError('BANNED', `${server} refused the connection: this address is banned until ${until}; ask your club's operator`, r.until);
  }
  return new ClientError('BUSY', `${server} refused the connection: too many connections from this address or network right now; try again in a minute`);
}

export function connect(opts: ConnectOptions): Promise<Connection> {
  return Connection.open(opts);
}
