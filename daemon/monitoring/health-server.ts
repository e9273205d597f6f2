import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, fsyncSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { PrefixMap, parseAddress, parsePrefix } from '../../storage/bans/ban-address.js';
import { splitHostPort } from '../main/config.js';
import { normalizeIp } from '../edge/connection.js';
import { nullLogger, type Logger } from '../common/log.js';
import type { DaemonMetrics } from './metrics.js';
import type { TlsMaterial } from './tls-cert.js';

/**
 * The daemon's HTTPS endpoint for monitoring, TLS 1.2 or newer only:
 *   GET /healthz  200 while the process serves requests (liveness)
 *   GET /readyz   200 when every readiness check passes, else 503 (names only, no details)
 *   GET /metrics  Prometheus text exposition, only from an allowed CIDR or with
 *                 "Authorization: Bearer <token>" (compared in constant time)
 * Everything else is 404 (405 for a method other than GET/HEAD). Plain HTTP on the port fails the
 * TLS handshake and gets no HTTP answer. `reload()` swaps the certificate, the allow-list and the
 * token without closing the listener or any open connection.
 */
export type ReadinessCheck = () => boolean | void | Promise<boolean | void>;

export interface HealthAccess {
  /** Addresses or CIDR ranges that may read /metrics without a token. */
  readonly allowCidrs: readonly string[];
  /** Bearer token that opens /metrics from anywhere. */
  readonly token?: string | undefined;
}

export interface HealthServerOptions {
  /** HOST:PORT (port 0 picks a free one). */
  readonly listen: string;
  readonly tls: TlsMaterial;
  readonly access: HealthAccess;
  readonly metrics?: DaemonMetrics;
  /** Named readiness checks; a check fails by returning false, throwing or timing out. */
  readonly checks?: Readonly<Record<string, ReadinessCheck>>;
  readonly checkTimeoutMs?: number;
  readonly logger?: Logger;
}

export const MIN_TLS_VERSION = 'TLSv1.2' as const;

export class HealthServer {
  private tls: TlsMaterial;
  private allow = new PrefixMap<string>();
  private tokenDigest: Buffer | undefined;
  private readonly log: Logger;

  private constructor(
    private readonly server: Server,
    private readonly opts: HealthServerOptions,
  ) {
    this.tls = opts.tls;
    this.log = opts.logger ?? nullLogger();
    this.setAccess(opts.access);
  }

  static async start(opts: HealthServerOptions): Promise<HealthServer> {
    const server = createServer({
      key: opts.tls.key,
      cert: opts.tls.cert,
      minVersion: MIN_TLS_VERSION,
      handshakeTimeout: 10_000,
      requestTimeout: 15_000,
      headersTimeout: 10_000,
      keepAliveTimeout: 5_000,
      maxHeaderSize: 8 * 1024,
    });
    server.maxConnections = 256;
    server.maxHeadersCount = 50;
    const hs = new HealthServer(server, opts);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      hs.handle(req, res).catch(() => {
        if (!res.headersSent) send(res, 500, 'internal error\n');
        else res.destroy();
      });
    });
    // A client that speaks plain HTTP, an old TLS version or garbage: drop it quietly.
    server.on('tlsClientError', (_err, socket) => socket.destroy());
    server.on('clientError', (_err, socket) => socket.destroy());
    const { host, port } = splitHostPort(opts.listen);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (e: NodeJS.ErrnoException) => hs.log.error('health endpoint error', { code: e.code }));
    const a = hs.address();
    hs.log.info('health endpoint listening', { host: a.host, port: a.port, certFingerprint: opts.tls.fingerprint256, selfSigned: opts.tls.selfSigned });
    return hs;
  }

  address(): { host: string; port: number } {
    const a = this.server.address();
    if (!a || typeof a === 'string') throw new Error('not listening');
    return { host: a.address, port: a.port };
  }

  get certificate(): TlsMaterial {
    return this.tls;
  }

  /**
   * Swap certificate and/or access rules. New TLS handshakes use the new certificate; open
   * connections keep theirs until they close.
   */
  reload(update: { tls?: TlsMaterial; access?: HealthAccess }): void {
    if (update.access) this.setAccess(update.access);
    if (update.tls) {
      this.server.setSecureContext({ key: update.tls.key, cert: update.tls.cert, minVersion: MIN_TLS_VERSION });
      this.tls = update.tls;
      this.log.info('health certificate reloaded', { certFingerprint: update.tls.fingerprint256, selfSigned: update.tls.selfSigned });
    }
  }

  /** Stop listening and close every connection of the endpoint. */
  async close(): Promise<void> {
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeAllConnections();
    await closed;
  }

  private setAccess(access: HealthAccess): void {
    const allow = new PrefixMap<string>();
    for (const c of access.allowCidrs) allow.set(parsePrefix(c), c);
    this.allow = allow;
    this.tokenDigest = access.token ? digest(access.token) : undefined;
  }

  /** Whether this peer may read /metrics. */
  private authorised(req: IncomingMessage): 'ok' | 'no-token' | 'bad-token' {
    const ip = normalizeIp(req.socket.remoteAddress ?? '');
    const parsed = ip ? parseAddress(ip) : undefined;
    if (parsed && this.allow.match(parsed) !== undefined) return 'ok';
    const h = req.headers.authorization;
    if (!this.tokenDigest || typeof h !== 'string') return 'no-token';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    if (!m) return 'bad-token';
    // Digest first so the comparison takes the same time whatever the length of the guess.
    return timingSafeEqual(digest(m[1]!), this.tokenDigest) ? 'ok' : 'bad-token';
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    const known = path === '/healthz' || path === '/readyz' || path === '/metrics';
    if (!known) return send(res, 404, 'not found\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return send(res, 405, 'method not allowed\n');
    }
    if (path === '/healthz') return send(res, 200, 'ok\n');
    if (path === '/readyz') {
      const checks = await this.runChecks();
      const ready = Object.values(checks).every((v) => v === 'ok');
      return send(res, ready ? 200 : 503, `${JSON.stringify({ status: ready ? 'ready' : 'not ready', checks })}\n`, 'application/json');
    }
    const auth = this.authorised(req);
    if (auth !== 'ok') {
      const ip = normalizeIp(req.socket.remoteAddress ?? '');
      this.log.warn('metrics request refused', { ip, reason: auth });
      if (this.tokenDigest) {
        res.setHeader('WWW-Authenticate', auth === 'bad-token' ? 'Bearer error="invalid_token"' : 'Bearer');
        return send(res, 401, 'unauthorised\n');
      }
      return send(res, 403, 'forbidden\n');
    }
    if (!this.opts.metrics) return send(res, 404, 'not found\n');
    const { body, contentType } = await this.opts.metrics.render();
    return send(res, 200, body, contentType);
  }

  private async runChecks(): Promise<Record<string, 'ok' | 'fail'>> {
    const out: Record<string, 'ok' | 'fail'> = {};
    const timeoutMs = this.opts.checkTimeoutMs ?? 2_000;
    await Promise.all(
      Object.entries(this.opts.checks ?? {}).map(async ([name, check]) => {
        let timer: NodeJS.Timeout | undefined;
        try {
          const r = await Promise.race([
            Promise.resolve().then(check),
            new Promise<false>((resolve) => {
              timer = setTimeout(() => resolve(false), timeoutMs);
            }),
          ]);
          out[name] = r === false ? 'fail' : 'ok';
        } catch (e) {
          out[name] = 'fail';
          this.log.warn('readiness check failed', { check: name, code: (e as { code?: string }).code ?? (e as Error)?.name });
        } finally {
          if (timer) clearTimeout(timer);
        }
        if (out[name] === 'fail') this.log.warn('not ready', { check: name });
      }),
    );
    return out;
  }
}

function send(res: ServerResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8'): void {
  res.statusCode = status;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

/** Readiness: the data folder accepts a small durable write. */
export function diskWritableCheck(dir: string): ReadinessCheck {
  return () => {
    const p = join(dir, `.readyz-${process.pid}-${randomBytes(4).toString('hex')}`);
    const fd = openSync(p, 'wx', 0o600);
    try {
      writeSync(fd, 'ok');
      fsyncSync(fd);
    } finally {
      closeSync(fd);
      unlinkSync(p);
    }
    return true;
  };
}
