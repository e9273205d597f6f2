/**
 * A client of a cluster of servers (issue 14, PROTOCOL.md "Several servers"): a list of servers
 * that all present the one cluster identity key (one pinned fingerprint), tried in turn; a MOVED
 * error (the club is served by another server) is followed to the server it names; a connection
 * lost during a takeover is retried on the next server until `retryForMs` has passed. Mutating
 * requests carry a request key (`rk`), so a request retried after its answer was lost is applied
 * once: the server that holds the club answers the retry from its record of the key.
 */
import { randomBytes } from 'node:crypto';
import { connect, type ConnectOptions, type Connection, type RequestOptions, type Response } from './connection.js';
import { ClientError, RemoteError } from './errors.js';

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
  /** How long to keep trying across a takeover (default 30 s, the bound). */
  retryForMs?: number;
  /** Most redirects followed for one request (default 4). */
  maxRedirects?: number;
}

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
    await this.ensure(undefined, Date.now() + (this.opts.retryForMs ?? 30_000));
  }

  /**
   * Send a request, following redirects and retrying across a takeover. With `mutating`, the
   * payload gets a request key (the same for every retry of this call).
   */
  async request(command: string, payload: Record<string, unknown> = {}, opts: RequestOptions & { mutating?: boolean } = {}): Promise<Response> {
    const body = opts.mutating ? { ...payload, [REQUEST_KEY_FIELD]: newRequestKey() } : payload;
    const deadline = Date.now() + (this.opts.retryForMs ?? 30_000);
    let redirects = 0;
    let target: ServerAddress | undefined;
    for (let delay = 50; ; delay = Math.min(delay * 2, 1000)) {
      try {
        const conn = await this.ensure(target, deadline);
        target = undefined;
        return await conn.request(command, body, opts);
      } catch (e) {
        const moved = movedTarget(e);
        if (moved && redirects < (this.opts.maxRedirects ?? 4)) {
          redirects++;
          target = moved;
          await this.drop();
          continue;
        }
        const retriable = (e instanceof ClientError && ['CONNECT_FAILED', 'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'HANDSHAKE_FAILED'].includes(e.code)) || (e instanceof RemoteError && (e.code === UNAVAILABLE || e.code === 'SHUTTING_DOWN'));
        if (!retriable || Date.now() + delay > deadline) throw e;
        if (e instanceof ClientError) await this.drop();
        await new Promise((r) => setTimeout(r, delay));
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

  private async ensure(target: ServerAddress | undefined, deadline: number): Promise<Connection> {
    if (this.conn && !this.conn.closed && (!target || (this.current && sameServer(this.current, target)))) return this.conn;
    await this.drop();
    const order = target ? [target, ...this.opts.servers.filter((s) => !sameServer(s, target))] : [...this.opts.servers.slice(this.next), ...this.opts.servers.slice(0, this.next)];
    let last: unknown;
    for (const s of order) {
      if (Date.now() > deadline) break;
      try {
        const { servers: _s, login: _l, retryForMs: _r, maxRedirects: _m, ...rest } = this.opts;
        const conn = await connect({ ...rest, host: s.host, port: s.port });
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
        // a server that says "not here" at login names the right one: go there next
        const moved = movedTarget(e);
        if (moved && !sameServer(moved, s)) return this.ensure(moved, deadline);
        if (e instanceof RemoteError && e.code !== UNAVAILABLE && e.code !== 'SHUTTING_DOWN') throw e;
      }
    }
    throw last ?? new ClientError('CONNECT_FAILED', 'no server reachable');
  }
}
