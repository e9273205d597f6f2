/**
 * The web application for club members (seed section 1: "login to the web application, secured
 * and encrypted by an SSL certificate"; section 5.3: the club's log shown in the applications):
 * one HTTPS listener (fastify), on the same users, rights, change log and ban engine as the
 * client protocol. Every club read and write goes through the club command handlers in-process
 * (daemon/club/club-commands.ts via the Dispatcher), so rights, register scope, violations and
 * change-log entries are exactly the protocol's. The feature plug-ins register their routes:
 * auth-routes.ts (login, password change, logout), persons-routes.ts, log-routes.ts,
 * self-routes.ts (own record, GDPR Art. 15 export), admin-routes.ts (users and rights),
 * backup-routes.ts (backup passphrase and mailed-backup addresses).
 *
 * Security measures (docs/WEB.md "Security"): TLS 1.2+ only and HSTS; `__Host-` session cookie,
 * Secure, HttpOnly, SameSite=Strict; CSRF tokens on every form; a CSP without any script;
 * no club data in URLs (filters travel in POST bodies; paths carry row ids only); every answer
 * `Cache-Control: no-store`; a banned address is refused at the TCP connection and again per
 * request; failed logins are 'login' violations as over the protocol.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import helmet from '@fastify/helmet';
import cookie from '@fastify/cookie';
import formbody from '@fastify/formbody';
import type { Socket } from 'node:net';
import type { IdentityKey } from '../../crypto/identity.js';
import { endSessionOnClose, type ClubServices } from '../club/auth.js';
import { CommandError } from '../edge/command-errors.js';
import { normalizeIp } from '../edge/connection.js';
import type { CommandContext, ConnectionInfo, Dispatcher } from '../edge/dispatcher.js';
import type { Logger } from '../common/log.js';
import { effectiveScope, type Grant } from '../club/rights.js';
import type { TlsMaterial } from '../monitoring/tls-cert.js';
import { html, type SafeHtml } from './html.js';
import { pickLang, t, type Lang } from './i18n.js';
import { notice, page, STYLESHEET, type Nav } from './layout.js';
import { SESSION_COOKIE, SessionStore, sameSecret, type WebSession } from './sessions.js';
import { authRoutes } from './auth-routes.js';
import { personsRoutes } from './persons-routes.js';
import { logRoutes } from './log-routes.js';
import { selfRoutes } from './self-routes.js';
import { adminRoutes } from './admin-routes.js';
import { backupRoutes } from './backup-routes.js';
import { clearSessionCookie, type WebUser } from './common.js';
import { isHeldWrite } from '../../storage/engine/errors.js';

export { COOKIE_OPTIONS, clearSessionCookie, noRightPage, type WebUser } from './common.js';

export const WEB_MIN_TLS = 'TLSv1.2' as const;
/** Form bodies are small; anything larger is refused before parsing (bytes). */
export const WEB_BODY_LIMIT = 16 * 1024;
/** HSTS max-age: two years (OWASP HTTP Strict Transport Security Cheat Sheet). */
export const HSTS_MAX_AGE_S = 63_072_000;

export interface WebDeps {
  readonly dispatcher: Dispatcher;
  readonly services: ClubServices;
  readonly tls: TlsMaterial;
  readonly identity?: IdentityKey;
  readonly logger: Logger;
  /** The ban table's verdict for an address (the same engine as the protocol's). */
  readonly isBanned: (ip: string) => boolean;
  readonly idleTimeoutMs: number;
  readonly absoluteTimeoutMs: number;
  readonly maxSessions: number;
  readonly now?: () => number;
}

declare module 'fastify' {
  interface FastifyRequest {
    lang: Lang;
    clientIp: string;
    webSession: WebSession | undefined;
  }
  interface FastifyInstance {
    web: WebRuntime;
  }
}

/** The shared helpers every feature plug-in uses (decorated on the root instance as `web`). */
export class WebRuntime {
  constructor(
    readonly deps: WebDeps,
    readonly sessions: SessionStore,
  ) {}

  /** The connection identity of a request for the command handlers. */
  conn(req: FastifyRequest, s: WebSession | undefined, connId = 0): ConnectionInfo {
    return { id: s?.connId ?? connId, ip: req.clientIp, port: req.socket.remotePort ?? 0, source: 'web' };
  }

  /**
   * Run one club command in-process, as the protocol would for this session: the same schema
   * check, the same handler, the same rights and violations. Throws CommandError.
   */
  async call(req: FastifyRequest, commands: Map<string, unknown>, command: string, payload: unknown, s?: WebSession): Promise<{ payload: any }> {
    const prepared = this.deps.dispatcher.prepare(command, payload, false);
    const ctx: CommandContext = { conn: this.conn(req, s), signal: new AbortController().signal, session: commands };
    const r = await prepared.spec.handler(prepared.payload, ctx);
    return { payload: r.payload };
  }

  /**
   * The logged-in user of a request, read afresh (auth.whoami: a disabled user, a reset password
   * or changed rights apply at once). Without a live session: redirects to the login page and
   * returns undefined. While a password change is due, every page but that one redirects there.
   */
  async user(req: FastifyRequest, reply: FastifyReply, o: { allowMustChange?: boolean } = {}): Promise<WebUser | undefined> {
    const s = req.webSession;
    if (!s) {
      void reply.redirect('/login', 303);
      return undefined;
    }
    let who: { club: string; user: Record<string, unknown>; admin: boolean; grants: Grant[] };
    try {
      who = (await this.call(req, s.commands, 'auth.whoami', {}, s)).payload;
    } catch (e) {
      if (e instanceof CommandError && e.code === 'UNAUTHENTICATED') {
        this.sessions.delete(s);
        clearSessionCookie(reply);
        void reply.redirect('/login', 303);
        return undefined;
      }
      throw e;
    }
    s.mustChangePassword = who.user.mustChangePassword === true;
    if (s.mustChangePassword && !o.allowMustChange) {
      void reply.redirect('/password', 303);
      return undefined;
    }
    const club = (area: Parameters<typeof effectiveScope>[1]) => effectiveScope(who.grants, area, 'read')?.kind === 'club';
    const nav: Nav = {
      user: String(who.user.username ?? s.user),
      club: s.club,
      csrf: s.csrf,
      persons: effectiveScope(who.grants, 'persons', 'read') !== undefined,
      changeLog: club('changeLog'),
      users: club('users'),
      backup: who.admin && club('backups'),
      mustChange: s.mustChangePassword,
    };
    return { session: s, grants: who.grants, admin: who.admin, user: who.user, nav };
  }

  /** Whether a POSTed form carries this session's CSRF token (constant-time compare). */
  csrfOk(s: WebSession, body: unknown): boolean {
    const token = (body as Record<string, unknown> | undefined)?._csrf;
    return typeof token === 'string' && sameSecret(token, s.csrf);
  }

  /** Answer a page. */
  send(reply: FastifyReply, lang: Lang, title: string, body: SafeHtml, nav?: Nav, status = 200): FastifyReply {
    return reply.code(status).type('text/html; charset=utf-8').send(page(lang, title, body, nav));
  }

  /** Answer a command error as a page: 403, 404, 400, 503, or 500 without details. */
  fail(req: FastifyRequest, reply: FastifyReply, e: unknown, nav?: Nav): FastifyReply {
    const lang = req.lang;
    if (e instanceof CommandError) {
      const map: Record<string, [number, Parameters<typeof t>[1]]> = {
        FORBIDDEN: [403, 'noRight'],
        NOT_FOUND: [404, 'notFound'],
        BAD_REQUEST: [400, 'badRequest'],
        BUSY: [503, 'tryLater'],
      };
      const m = map[e.code];
      if (m) return this.send(reply, lang, t(lang, m[1]), notice('error', t(lang, m[1])), nav, m[0]);
    }
    // A change to server.db while a master key rotation copies it: nothing written, try later.
    if (isHeldWrite(e)) return this.send(reply, lang, t(lang, 'tryLater'), notice('error', t(lang, 'tryLater')), nav, 503);
    this.deps.logger.error('web request failed', { error: (e as Error)?.name, code: (e as { code?: string })?.code });
    return this.send(reply, lang, t(lang, 'error'), notice('error', t(lang, 'error')), nav, 500);
  }

  /** Refuse a form without a valid CSRF token: 403, nothing done (OWASP CSRF Prevention). */
  csrfRefused(req: FastifyRequest, reply: FastifyReply): FastifyReply {
    return this.send(reply, req.lang, t(req.lang, 'csrf'), html`${notice('error', t(req.lang, 'csrf'))}<p><a href="/">${t(req.lang, 'title')}</a></p>`, undefined, 403);
  }
}

export interface WebApp {
  readonly app: FastifyInstance;
  readonly sessions: SessionStore;
  /** Bound address (port 0 picks one). */
  address(): { host: string; port: number };
  /** The certificate new connections get. */
  readonly certificate: TlsMaterial;
  /** Swap the certificate for new connections (SIGHUP); open connections keep theirs. */
  reloadTls(tls: TlsMaterial): void;
  close(): Promise<void>;
}

/** Build and start the web application on HOST:PORT. Throws on a busy address (EADDRINUSE). */
export async function startWebApp(deps: WebDeps, listen: { host: string; port: number }): Promise<WebApp> {
  const sessions = new SessionStore({
    idleTimeoutMs: deps.idleTimeoutMs,
    absoluteTimeoutMs: deps.absoluteTimeoutMs,
    maxSessions: deps.maxSessions,
    ...(deps.now ? { now: deps.now } : {}),
    onEnd: (s, reason) => endSessionOnClose(deps.services, { id: s.connId, ip: s.ip, port: 0, source: 'web' }, s.commands, reason),
  });
  const app = Fastify({
    https: { key: deps.tls.key, cert: deps.tls.cert, minVersion: WEB_MIN_TLS },
    logger: false,
    trustProxy: false,
    bodyLimit: WEB_BODY_LIMIT,
    connectionTimeout: 30_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 5_000,
    maxParamLength: 40,
    return503OnClosing: true,
  });
  app.server.maxConnections = 1024;
  app.server.maxHeadersCount = 60;
  // A banned source gets no TLS handshake at all (as on the client port), and no answer later.
  app.server.on('connection', (socket: Socket) => {
    if (deps.isBanned(normalizeIp(socket.remoteAddress ?? ''))) socket.destroy();
  });
  app.server.on('tlsClientError', (_e: Error, socket: Socket) => socket.destroy());
  const runtime = new WebRuntime(deps, sessions);
  app.decorate('web', runtime);
  app.decorateRequest('lang', 'de');
  app.decorateRequest('clientIp', '');
  app.decorateRequest('webSession', undefined);

  await app.register(helmet, {
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'none'"],
        scriptSrc: ["'none'"],
        styleSrc: ["'self'"],
        imgSrc: ["'self'"],
        formAction: ["'self'"],
        frameAncestors: ["'none'"],
        baseUri: ["'none'"],
        upgradeInsecureRequests: [],
      },
    },
    strictTransportSecurity: { maxAge: HSTS_MAX_AGE_S, includeSubDomains: true },
    referrerPolicy: { policy: 'no-referrer' },
    crossOriginResourcePolicy: { policy: 'same-origin' },
    crossOriginOpenerPolicy: { policy: 'same-origin' },
  });
  await app.register(cookie);
  // Forms only: no JSON or text bodies (anything else is 415 before a route runs).
  app.removeAllContentTypeParsers();
  await app.register(formbody, { bodyLimit: WEB_BODY_LIMIT });

  app.addHook('onRequest', async (req, reply) => {
    req.clientIp = normalizeIp(req.socket.remoteAddress ?? '');
    if (deps.isBanned(req.clientIp)) {
      req.socket.destroy();
      return reply;
    }
    req.lang = pickLang(req.headers['accept-language']);
    req.webSession = sessions.get(req.cookies[SESSION_COOKIE]);
    if (req.webSession) req.webSession.ip = req.clientIp;
    // A form sent from another site is refused before it reaches a route (Fetch Metadata,
    // OWASP CSRF Prevention "Fetch Metadata headers"); the token check follows in the route.
    if (req.method === 'POST' && req.headers['sec-fetch-site'] === 'cross-site') return runtime.csrfRefused(req, reply);
    return undefined;
  });
  app.addHook('onSend', async (_req, reply, payload) => {
    void reply.header('Cache-Control', 'no-store');
    void reply.header('Pragma', 'no-cache');
    return payload;
  });
  app.setNotFoundHandler((req, reply) => runtime.send(reply, req.lang, t(req.lang, 'notFound'), notice('error', t(req.lang, 'notFound')), undefined, 404));
  app.setErrorHandler((e, req, reply) => {
    const status = (e as { statusCode?: number }).statusCode;
    if (status && status >= 400 && status < 500) return runtime.send(reply, req.lang, t(req.lang, 'badRequest'), notice('error', t(req.lang, 'badRequest')), undefined, status);
    return runtime.fail(req, reply, e);
  });

  app.get('/static/app.css', async (_req, reply) => reply.type('text/css; charset=utf-8').send(STYLESHEET));
  app.get('/', async (req, reply) => reply.redirect(req.webSession ? '/persons' : '/login', 303));
  await app.register(authRoutes);
  await app.register(personsRoutes);
  await app.register(logRoutes);
  await app.register(selfRoutes);
  await app.register(adminRoutes);
  await app.register(backupRoutes);

  await app.listen({ host: listen.host, port: listen.port });
  const sweep = setInterval(() => sessions.sweep(), 60_000);
  sweep.unref();
  let closed: Promise<void> | undefined;
  let certificate = deps.tls;
  return {
    app,
    sessions,
    get certificate() {
      return certificate;
    },
    reloadTls(tls: TlsMaterial) {
      (app.server as import('node:https').Server).setSecureContext({ key: tls.key, cert: tls.cert, minVersion: WEB_MIN_TLS });
      certificate = tls;
      deps.logger.info('web certificate reloaded', { certFingerprint: tls.fingerprint256, selfSigned: tls.selfSigned });
    },
    address() {
      const a = app.server.address();
      return typeof a === 'object' && a ? { host: a.address, port: a.port } : { host: listen.host, port: listen.port };
    },
    close() {
      closed ??= (async () => {
        clearInterval(sweep);
        await app.close();
        sessions.endAll('server stopped');
      })();
      return closed;
    },
  };
}
