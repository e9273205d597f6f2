import { createServer, type Server, type Socket } from 'node:net';
import type { IdentityKey } from '../../crypto/identity.js';
import { handshakeKeysBackend } from '../../crypto/handshake-keys.js';
import { recordCipherBackend } from '../../crypto/record-cipher.js';
import { CLOSE_NORMAL, CLOSE_POLICY, SUPPORTED_VERSIONS } from '../../protocol/constants.js';
import { encodeRefusal, type Refusal } from '../../protocol/refusal.js';
import { IDENTITY_NOTICE_EVENT } from '../../protocol/identity-notice.js';
import { Admission, type RefusalReason, type Stage } from './admission.js';
import { ConnectionHooks, type DaemonSide } from './connection-hooks.js';
import { ServerSession } from '../../protocol/server-session.js';
import { splitHostPort, type Config } from '../main/config.js';
import { Connection, normalizeIp } from './connection.js';
import { registerCoreCommands } from './core-commands.js';
import { Dispatcher } from './dispatcher.js';
import { nullLogger, type Logger } from '../common/log.js';
import { ViolationBus, type ViolationKind } from '../bans/violations.js';
import { CredentialIssuer } from './credentials.js';
import { probeUserReads, userReadsBackend } from './user-reads.js';

/**
 * The TCP listener: admission happens on accept, before any crypto work: the ban check (a banned
 * source gets the plaintext refusal BANNED), then a pending-handshake slot (daemon/edge/admission.ts:
 * per address, per prefix, early drop, eviction of the heaviest source; refused: BUSY); then each
 * socket becomes a Connection, which takes a pre-login slot when its handshake completes and
 * gives it back when a user logs in.
 */
export interface DaemonOptions {
  config: Config;
  identity: IdentityKey;
  logger?: Logger;
  violations?: ViolationBus;
  /** Ban check at accept time; returning false closes the socket before the handshake. */
  admit?: (ip: string) => boolean;
  /**
   * Ban check at accept time with the ban's end (ms since the epoch), or undefined: a banned
   * source gets the plaintext refusal BANNED with that time, then the close, and no crypto.
   */
  bannedUntil?: (ip: string) => number | undefined;
  /** Random source for the early drop (tests fix it). */
  random?: () => number;
  dispatcher?: Dispatcher;
  /** Test hook: lower the per-key record limit to exercise KEY_UPDATE. */
  rekeyAfterRecords?: number;
  /** The `identity.keys` NOTICE payload each session gets once established (PROTOCOL.md 6.4), if any. */
  identityNotice?: () => unknown;
  /**
   * True while a client's TCP close right after the ServerHello is not counted as a `handshake`
   * violation (an identity key rollover switched, or retired within the grace period:
   * PROTOCOL.md 11). Default: never.
   */
  helloDropTolerated?: () => boolean;
}

/** The label under which requests for unknown commands are counted (never the name sent). */
export const UNKNOWN_COMMAND_LABEL = '(unknown)';

export interface DaemonStats {
  accepted: number;
  refusedBanned: number;
  refusedLimit: number;
  /** Slots taken from the heaviest source for a lighter newcomer (pending or pre-login). */
  evicted: number;
  hellos: number;
  /** TCP closes right after the ServerHello not counted as violations (identity key rollover grace). */
  helloDropsTolerated: number;
  established: number;
  /**
   * Requests by "command:result". Keys are bounded: a command is one of the dispatcher's names or
   * UNKNOWN_COMMAND_LABEL, a result one of the CommandError codes or "ok"; a client-chosen string
   * never becomes a key (or a /metrics label).
   */
  requests: Map<string, number>;
  /** Every violation event on the bus, by kind (each event once, whoever reported it). */
  violations: Map<ViolationKind, number>;
}

export const VERSION = '0.1.0';

/** An evicted pending handshake this old that has sent nothing counts as silent. */
const SILENT_EVICTION_MS = 1000;

export class Daemon {
  readonly violations: ViolationBus;
  readonly dispatcher: Dispatcher;
  readonly log: Logger;
  readonly stats: DaemonStats = { accepted: 0, refusedBanned: 0, refusedLimit: 0, evicted: 0, hellos: 0, helloDropsTolerated: 0, established: 0, requests: new Map(), violations: new Map() };
  readonly startedAt = Date.now();
  private readonly server: Server;
  private readonly connections = new Set<Connection>();
  readonly admission: Admission;
  private nextId = 1;
  private stopping: Promise<void> | undefined;
  /** One sweep for every connection's login and idle deadline (no timers per connection). */
  private deadlineTimer: NodeJS.Timeout | undefined;
  /** The delegated credential signing version 3 handshakes (credentials.ts). */
  readonly credentials: CredentialIssuer;

  private constructor(private readonly opts: DaemonOptions) {
    this.log = opts.logger ?? nullLogger();
    this.credentials = new CredentialIssuer(opts.identity, Date.now, (c) =>
      this.log.info('delegated credential issued', { fingerprint: opts.identity.fingerprint, validUntil: new Date(c.validUntil).toISOString() }),
    );
    this.violations = opts.violations ?? new ViolationBus();
    this.dispatcher = opts.dispatcher ?? new Dispatcher();
    // Count every violation event once, wherever it was recognised (listener, connection,
    // command handlers): `status` and /metrics show events, not banned sources.
    this.violations.subscribe((e) => {
      this.stats.violations.set(e.kind, (this.stats.violations.get(e.kind) ?? 0) + 1);
    });
    registerCoreCommands(this.dispatcher, () => ({
      name: 'commusic-server',
      version: VERSION,
      protocolVersion: Math.max(...SUPPORTED_VERSIONS),
      fingerprint: opts.identity.fingerprint,
    }), Date.now, opts.config.diag);
    this.admission = new Admission(opts.config.limits, opts.random);
    // Paused until the connection has set up how it reads (socket-events.ts attachSocket).
    this.server = createServer({ pauseOnConnect: true, noDelay: true }, (s) => {
      // The accept path is guarded like each connection's (Connection.fault): a failure here
      // loses this socket, never the listener.
      try {
        this.onSocket(s);
      } catch (e) {
        this.log.error('accepting a connection failed', { ip: normalizeIp(s.remoteAddress ?? ''), error: (e as Error)?.name });
        s.destroy();
      }
    });
    this.server.maxConnections = opts.config.limits.maxConnections;
    // Past maxConnections Node closes the socket itself; that refusal counts like the others.
    this.server.on('drop', (data?: { remoteAddress?: string }) => {
      if (this.stopping || !data?.remoteAddress) return;
      this.reportLimit(normalizeIp(data.remoteAddress), 'pending', 'pool-full');
    });
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const d = new Daemon(opts);
    await probeUserReads();
    const { host, port } = splitHostPort(opts.config.listen);
    await new Promise<void>((resolve, reject) => {
      d.server.once('error', reject);
      d.server.listen({ host, port, backlog: 4096 }, () => {
        d.server.off('error', reject);
        resolve();
      });
    });
    const a = d.address();
    d.log.info('listening', { host: a.host, port: a.port, fingerprint: opts.identity.fingerprint });
    // crypto/record-cipher.ts: without the addon the records are the same bytes, only slower.
    const aead = recordCipherBackend();
    if (aead.impl === 'native') d.log.info('record cipher', { impl: aead.impl });
    else d.log.warn('record cipher addon not loaded: using node:crypto (same records, about 3 us more CPU per record); run npm ci to build it', { impl: aead.impl, reason: aead.reason });
    // crypto/handshake-keys.ts: the same handshakes either way, only more CPU per handshake.
    const hs = handshakeKeysBackend();
    if (hs.impl === 'native') d.log.info('handshake keys', { impl: hs.impl });
    else d.log.warn('handshake key addon not loaded: using node:crypto (same handshakes, more CPU per handshake); run npm ci to build it', { impl: hs.impl, reason: hs.reason });
    // user-reads.ts: the same bytes either way, only more garbage collection per MiB read.
    const reads = userReadsBackend();
    if (reads.impl === 'user-buffer') d.log.info('socket reads', { impl: reads.impl });
    else d.log.warn('socket reads into reused buffers not available: a buffer per read (same bytes, more garbage collection)', { impl: reads.impl, reason: reads.reason });
    const l = opts.config.limits;
    const sweepMs = Math.max(25, Math.min(1000, Math.floor(Math.min(l.loginTimeoutMs, l.idleTimeoutMs) / 4)));
    d.deadlineTimer = setInterval(() => d.sweepDeadlines(), sweepMs).unref();
    return d;
  }

  address(): { host: string; port: number } {
    const a = this.server.address();
    if (!a || typeof a === 'string') throw new Error('not listening');
    return { host: a.address, port: a.port };
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  get pendingHandshakes(): number {
    return this.admission.count('pending');
  }

  /** Established sessions that have not logged in yet. */
  get preLoginSessions(): number {
    return this.admission.count('prelogin');
  }

  /**
   * Closes every connection whose source `banned` says is banned now: a ban applies to sessions
   * already open, not only to new connections. Returns how many were closed.
   */
  disconnectBanned(banned: (ip: string) => boolean): number {
    let n = 0;
    const silent: string[] = [];
    for (const c of this.connections) {
      if (!banned(c.info.ip)) continue;
      const wasSilent = !c.isEstablished && c.receivedBytes === 0;
      if (!c.terminate(CLOSE_POLICY)) continue;
      n++;
      if (wasSilent) silent.push(c.info.ip);
    }
    if (n > 0) this.log.warn('closed connections of banned sources', { connections: n });
    // A silent connection cut short by its source's ban is still one silent connection: each
    // is counted as the event it is (status shows events, not banned sources).
    const time = Date.now();
    for (const ip of silent) this.violations.report({ ip, kind: 'silent', detail: 'sent nothing before its source was banned', time });
    return n;
  }

  /**
   * Sessions that must move (cluster, issue 14: their club moved to another server): each session
   * `match` selects gets the NOTICE (PROTOCOL.md "Several servers"), then a normal close; the client
   * reconnects where the notice says. Returns how many sessions were closed.
   */
  closeSessions(match: (session: Map<string, unknown>) => boolean, notice: { event: string; payload: Record<string, unknown> }): number {
    let n = 0;
    for (const c of this.connections) {
      if (!match(c.sessionMap())) continue;
      c.notify(notice.event, notice.payload);
      if (c.terminate(CLOSE_NORMAL)) n++;
    }
    if (n > 0) this.log.info('closed sessions that had to move', { event: notice.event, sessions: n });
    return n;
  }

  /**
   * An identity key rollover step (daemon/identity-keys.ts): new handshakes are signed by
   * `identity`, and every established session gets the new `identity.keys` notice. Returns how
   * many sessions were told.
   */
  setIdentity(identity: IdentityKey, notice: unknown): number {
    this.opts.identity = identity;
    this.log.info('identity key in use', { fingerprint: identity.fingerprint });
    // Version 3 handshakes are signed by a credential of the new key from now on.
    this.credentials.reissue(identity);
    if (notice === undefined) return 0;
    let n = 0;
    for (const c of this.connections) {
      if (!c.isEstablished) continue;
      c.notify(IDENTITY_NOTICE_EVENT, notice);
      n++;
    }
    return n;
  }

  /** Stop accepting, let in-flight requests finish within the grace period, then close all. */
  stop(graceMs = this.opts.config.limits.shutdownGraceMs): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.deadlineTimer);
      this.log.info('shutting down', { connections: this.connections.size, graceMs });
      const closed = new Promise<void>((r) => this.server.close(() => r()));
      for (const c of this.connections) c.drain();
      const deadline = Date.now() + graceMs;
      while (this.connections.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      for (const c of this.connections) c.destroy();
      await closed;
      this.log.info('stopped');
    })();
    return this.stopping;
  }

  /**
   * A refusal before the handshake: the plaintext line (no crypto), then the close. The socket
   * is destroyed after a second at the latest, whatever the peer does.
   */
  private refuse(socket: Socket, refusal: Refusal): void {
    socket.on('error', () => socket.destroy());
    socket.resume(); // read and drop what the peer sends, so the close is not a reset
    socket.end(encodeRefusal(refusal));
    setTimeout(() => socket.destroy(), 1000).unref();
  }

  private reportLimit(ip: string, stage: Stage, reason: RefusalReason): void {
    this.stats.refusedLimit++;
    this.violations.report({ ip, kind: 'limit', detail: `refused before login: ${stage} ${reason}`, time: Date.now() });
  }

  private onSocket(socket: Socket): void {
    const ip = normalizeIp(socket.remoteAddress ?? '');
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const until = this.opts.bannedUntil?.(ip);
    if (until !== undefined || (this.opts.admit && !this.opts.admit(ip))) {
      this.stats.refusedBanned++;
      this.refuse(socket, until !== undefined ? { code: 'BANNED', until } : { code: 'BANNED' });
      return;
    }
    // One hooks object per connection: the admission slot holder and the connection's events.
    const hooks = new ConnectionHooks(this.side, ip);
    const pending = this.admission.admit('pending', ip, hooks, Date.now());
    if (!pending.ok) {
      this.reportLimit(ip, 'pending', pending.reason);
      this.refuse(socket, { code: 'BUSY' });
      return;
    }
    this.stats.accepted++;
    hooks.slot = pending.slot;
    const session = new ServerSession({
      identity: this.opts.identity,
      credential: this.credentials.current(),
      ...(this.opts.rekeyAfterRecords ? { rekeyAfterRecords: this.opts.rekeyAfterRecords } : {}),
    });
    const conn = new Connection(socket, session, this.dispatcher, this.opts.config.limits, this.log, hooks, this.nextId++);
    hooks.conn = conn;
    this.connections.add(conn);
  }

  /**
   * Checks every established connection's login and idle deadline, `deadlineSweepMs` apart: a
   * deadline is met up to that late (a quarter of the shortest, at most a second), and an idle
   * connection holds no timer of its own.
   */
  private sweepDeadlines(): void {
    const now = Date.now();
    for (const c of this.connections) {
      try {
        c.checkDeadlines(now);
      } catch (e) {
        c.fault('deadline', e);
      }
    }
  }

  /**
   * The keys of stats.requests (`command:result`), made once per registered command and result
   * code instead of a new string per request. Bounded: only registered command names (anything
   * else is UNKNOWN_COMMAND_LABEL) and the result codes the daemon itself produces.
   */
  private readonly requestKeys = new Map<string, Map<string | undefined, string>>();

  private requestKey(command: string | undefined, result: string | undefined): string {
    const name = command !== undefined && this.dispatcher.has(command) ? command : UNKNOWN_COMMAND_LABEL;
    let byResult = this.requestKeys.get(name);
    if (!byResult) this.requestKeys.set(name, (byResult = new Map()));
    let key = byResult.get(result);
    if (key === undefined) byResult.set(result, (key = `${name}:${result}`));
    return key;
  }

  /** What ConnectionHooks reach in the daemon; one object per daemon, shared by all connections. */
  private readonly side: DaemonSide = {
    violation: (ip, kind, detail) => this.violations.report({ ip, kind, detail, time: Date.now() }),
    admission: () => this.admission,
    reportLimit: (ip, stage, reason) => this.reportLimit(ip, stage, reason),
    closed: (conn) => this.connections.delete(conn),
    evicted: (conn, stage) => this.evicted(conn, stage),
    identityNotice: () => this.opts.identityNotice?.(),
    helloDropTolerated: () => this.opts.helloDropTolerated?.() ?? false,
    counted: (what, command, result) => {
      if (what === 'hello') this.stats.hellos++;
      else if (what === 'hello-drop-tolerated') this.stats.helloDropsTolerated++;
      else if (what === 'established') this.stats.established++;
      else {
        const key = this.requestKey(command, result);
        this.stats.requests.set(key, (this.stats.requests.get(key) ?? 0) + 1);
      }
    },
  };

  /**
   * The pool gave this connection's slot to a lighter source. A pending handshake that has sent
   * nothing for a second or more is a silent connection and counted as one; anything else is
   * closed without blame (a slow but honest client may retry).
   */
  private evicted(conn: Connection | undefined, stage: Stage): void {
    if (!conn) return;
    this.stats.evicted++;
    const silent = stage === 'pending' && !conn.isEstablished && conn.receivedBytes === 0 && Date.now() - conn.acceptedAt >= SILENT_EVICTION_MS;
    if (stage === 'pending') conn.destroy();
    else conn.terminate(CLOSE_POLICY);
    if (silent) this.violations.report({ ip: conn.info.ip, kind: 'silent', detail: 'sent nothing while the handshake pool was full', time: Date.now() });
  }
}
