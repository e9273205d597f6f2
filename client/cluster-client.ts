/**
 * A client of a cluster of servers (issue 14, PROTOCOL.md "Several servers"): a list of servers
 * that all present the one cluster identity key (one pinned fingerprint), tried in turn; a MOVED
 * error (the club is served by another server) is followed to the server it names; a connection
 * lost during a takeover or a drain is retried on the next server by the retry rule
 * (client/retry-rule.ts: a quiet budget restarted by progress, an absolute cap, jitter). Mutating
 * requests carry a request key (`rk`), so a request retried after its answer was lost is applied
 * once: the server that holds the club answers the retry from its record of the key.
 */
import { randomBytes } from 'node:crypto';
import { connect, type ConnectOptions, type Connection, type RequestOptions, type Response } from './connection.js';
import { ClientError, RemoteError } from './errors.js';
import { DEFAULT_QUIET_MS, RetryRule, showsProgress } from './retry-rule.js';

export interface ServerAddress {
  host: string;
  port: number;
}

/** Wire error code of a redirect (PROTOCOL.md): the message starts with the owner's HOST:PORT. */
export const MOVED = 'MOVED';
/** Wire error code while no server serves the club yet (takeover under way): retry shortly. */
export const UNAVAILABLE = 'UNAVAILABLE';
/** Payload key of a request key (PROTOCOL.md "Request keys"). */
export const REQUEST_KEY_FIELD = 'rk';

const HOST_PORT = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})$/;

/** Parse `HOST:PORT[,HOST:PORT...]` (IPv6 in brackets). @throws ClientError CONNECT_FAILED on a bad entry. */
export function parseServerList(list: string): ServerAddress[] {
  const out: ServerAddress[] = [];
  for (const part of list.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = HOST_PORT.exec(part);
    const port = Number(m?.[2]);
    if (!m || !(port >= 1 && port <= 65535)) throw new ClientError('CONNECT_FAILED', `"${part.slice(0, 80)}" is not HOST:PORT`);
    out.push({ host: m[1]!.replace(/^\[|\]$/g, ''), port });
  }
  if (out.length === 0 || out.length > 32) throw new ClientError('CONNECT_FAILED', 'give 1 to 32 servers as HOST:PORT[,HOST:PORT...]');
  return out;
}

/** The server a MOVED error names, or undefined when the error is no redirect. */
export function movedTarget(e: unknown): ServerAddress | undefined {
  if (!(e instanceof RemoteError) || e.code !== MOVED) return undefined;
  const first = e.message.split(' ')[0] ?? '';
  try {
    return parseServerList(first)[0];
  } catch {
    return undefined;
  }
}

/** A fresh request key: 16 random bytes, base64url (22 characters). */
export function newRequestKey(): string {
  return randomBytes(16).toString('base64url');
}

export interface ClusterClientOptions extends Omit<ConnectOptions, 'host' | 'port'> {
  servers: ServerAddress[];
  /** Log in on a fresh connection (auth.login or auth.resume); called after every (re)connect. */
  login?: (conn: Connection) => Promise<void>;
  /**
   * How long to keep trying without seeing progress (ms; default 30 s, the takeover
   * bound). Progress (a redirect to another owner, a takeover or drain under way) starts it
   * again, up to `retryCapMs` (client/retry-rule.ts, PROTOCOL.md 6.5).
   */
  retryForMs?: number;
  /** The most one request keeps trying in all, progress or not (ms; default 120 s). */
  retryCapMs?: number;
  /** Redirects followed at once for one request (default 4); past them the client pauses before following again. */
  maxRedirects?: number;
  /** For tests: how a server is connected to (default: connect()). */
  connector?: (o: ConnectOptions) => Promise<Connection>;
  /** For tests: the clock and the pause (default: Date.now and setTimeout). */
  clock?: { now(): number; sleep(ms: number): Promise<void> };
  /** For tests: the jitter's randomness (default Math.random). */
  random?: () => number;
}

const REAL_CLOCK = { now: () => Date.now(), sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)) };
/** Most redirects followed while connecting (login answered MOVED) before request() decides. */
const MAX_LOGIN_HOPS = 4;
const RETRIABLE_LOCAL = new Set(['CONNECT_FAILED', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'HANDSHAKE_FAILED']);

const sameServer = (a: ServerAddress, b: ServerAddress) => a.host === b.host && a.port === b.port;

/** One logical connection to a cluster; see the file comment. */
export class ClusterClient {
  private conn: Connection | undefined;
  private current: ServerAddress | undefined;
  private next = 0;
  private readonly opts: ClusterClientOptions;

  constructor(opts: ClusterClientOptions) {
    if (opts.servers.length === 0) throw new ClientError('CONNECT_FAILED', 'no servers given');
    this.opts = opts;
  }

  /** The server the client talks to now. */
  get server(): ServerAddress | undefined {
    return this.current;
  }

  /** Connect (first reachable server in the list order) and log in. */
  async open(): Promise<void> {
    await this.ensure(undefined, this.clock.now() + (this.opts.retryForMs ?? DEFAULT_QUIET_MS));
  }

  private get clock(): { now(): number; sleep(ms: number): Promise<void> } {
    return this.opts.clock ?? REAL_CLOCK;
  }

  /**
   * Send a request, following redirects and retrying across a takeover or a drain by the retry
   * rule (client/retry-rule.ts): it gives up after `retryForMs` without progress, or after
   * `retryCapMs` in all, with the last error. With `mutating`, the payload gets a request key
   * (the same for every retry of this call), so a retried write is applied once.
   */
  async request(command: string, payload: Record<string, unknown> = {}, opts: RequestOptions & { mutating?: boolean } = {}): Promise<Response> {
    const body = opts.mutating ? { ...payload, [REQUEST_KEY_FIELD]: newRequestKey() } : payload;
    const clock = this.clock;
    const rule = new RetryRule(clock.now(), { ...(this.opts.retryForMs !== undefined ? { quietMs: this.opts.retryForMs } : {}), ...(this.opts.retryCapMs !== undefined ? { capMs: this.opts.retryCapMs } : {}), ...(this.opts.random ? { random: this.opts.random } : {}) });
    let redirects = 0;
    let target: ServerAddress | undefined;
    let lastOwner: string | undefined;
    for (;;) {
      try {
        const conn = await this.ensure(target, rule.deadline());
        target = undefined;
        return await conn.request(command, body, opts);
      } catch (e) {
        const moved = movedTarget(e);
        const owner = moved && `${moved.host}:${moved.port}`;
        const progressed = showsProgress(e, lastOwner, owner);
        if (moved) {
          lastOwner = owner;
          target = moved;
          await this.drop();
          if (redirects < (this.opts.maxRedirects ?? 4)) {
            // Followed at once; a new owner is progress.
            redirects++;
            if (progressed) rule.progress(clock.now());
            continue;
          }
          // Redirected in a circle (the servers' views of the placement differ for a moment): pause, then follow again.
        }
        const retriable = moved !== undefined || (e instanceof ClientError && RETRIABLE_LOCAL.has(e.code)) || (e instanceof RemoteError && (e.code === UNAVAILABLE || e.code === 'SHUTTING_DOWN'));
        if (!retriable) throw e;
        const pause = rule.next(clock.now(), progressed);
        if (pause === undefined) throw e;
        if (e instanceof ClientError) await this.drop();
        redirects = 0;
        await clock.sleep(pause);
      }
    }
  }

  async close(): Promise<void> {
    await this.drop();
  }

  private async drop(): Promise<void> {
    const c = this.conn;
    this.conn = undefined;
    this.current = undefined;
    if (c) await c.close().catch(() => undefined);
  }

  private async ensure(target: ServerAddress | undefined, deadline: number, hops = 0): Promise<Connection> {
    if (this.conn && !this.conn.closed && (!target || (this.current && sameServer(this.current, target)))) return this.conn;
    await this.drop();
    const order = target ? [target, ...this.opts.servers.filter((s) => !sameServer(s, target))] : [...this.opts.servers.slice(this.next), ...this.opts.servers.slice(0, this.next)];
    const open = this.opts.connector ?? connect;
    let last: unknown;
    for (const s of order) {
      if (this.clock.now() > deadline) break;
      try {
        const { servers: _s, login: _l, retryForMs: _r, retryCapMs: _c, maxRedirects: _m, connector: _k, clock: _t, random: _x, ...rest } = this.opts;
        const conn = await open({ ...rest, host: s.host, port: s.port });
        try {
          await this.opts.login?.(conn);
        } catch (e) {
          await conn.close().catch(() => undefined);
          throw e;
        }
        this.conn = conn;
        this.current = s;
        this.next = (this.opts.servers.findIndex((x) => sameServer(x, s)) + 1) % this.opts.servers.length;
        return conn;
      } catch (e) {
        last = e;
        // a server that says "not here" at login names the right one: go there next (a few hops;
        // past them request() pauses before following again)
        const moved = movedTarget(e);
        if (moved && !sameServer(moved, s)) {
          if (hops >= MAX_LOGIN_HOPS) throw e;
          return this.ensure(moved, deadline, hops + 1);
        }
        if (e instanceof RemoteError && e.code !== UNAVAILABLE && e.code !== 'SHUTTING_DOWN') throw e;
      }
    }
    throw last ?? new ClientError('CONNECT_FAILED', 'no server reachable');
  }
}
