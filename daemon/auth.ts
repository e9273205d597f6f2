/**
 * Logins and sessions. `auth.login {club, user, password}` binds a user of a club to the
 * connection (ctx.session, one per connection); every later club command resolves the session
 * to a Principal afresh, reading the user's row and rights from the store on each request, so a
 * disabled user, a reset password or a changed right takes effect on live sessions at once.
 * An idle session (no request for idleTimeoutMs) ends and is logged as a logout.
 *
 * Password checks: scrypt (crypto/password.ts) compared in constant time. Unknown clubs, unknown
 * users, disabled users and wrong passwords all get the same UNAUTHENTICATED error after the
 * same scrypt work (a dummy hash for unknown users; legacy SHA-512 users also pay one scrypt).
 * An imported legacy salted SHA-512 hash is stored wrapped in scrypt (crypto/legacy-password.ts),
 * verified in two layers, and replaced by a plain scrypt hash on the first login. Each failure is a 'login' violation (counted by the ban engine) and,
 * when the club exists, a `login.failed` change-log entry.
 */
import { randomBytes } from 'node:crypto';
import { signTranscript, type IdentityKey } from '../crypto/identity.js';
import { isLegacySha512, isWrappedLegacySha512, verifyLegacySha512, verifyWrappedLegacySha512 } from '../crypto/legacy-password.js';
import { hashPassword, needsRehash, verifyPassword } from '../crypto/password.js';
import { AuditLog, type AuditInput } from '../storage/audit-log.js';
import type { ClubStore } from '../storage/club-store.js';
import { StorageError, type StorageLogger } from '../storage/errors.js';
import type { Db } from '../storage/sqlcipher.js';
import type { Storage } from '../storage/storage.js';
import { getUserById, getUserByName, setLastLogin, setPasswordHash, type UserRecord } from '../storage/users.js';
import { CommandError } from './command-errors.js';
import type { CommandContext, ConnectionInfo } from './dispatcher.js';
import { roleTemplate, rightsSchema, type Grant } from './rights.js';
import { TicketStore, TICKET_PATTERN } from './tickets.js';
import type { ViolationSink } from './violations.js';

export const DEFAULT_IDLE_TIMEOUT_MS = 30 * 60_000;
export const LOGIN_FAILED_MESSAGE = 'unknown club, user or password';
const SESSION_KEY = 'auth';

export interface ClubServices {
  storage: Storage;
  violations: ViolationSink;
  /** Server identity key: signs change-log heads. Without it heads are not signed. */
  identity?: IdentityKey;
  logger?: StorageLogger;
  idleTimeoutMs?: number;
  /** scrypt cost for hashes this service writes (tests lower it; default crypto/password.ts). */
  passwordLog2N?: number;
  now?: () => number;
  /** Session tickets (auth.ticket / auth.resume); one in-memory store per services object when absent. */
  tickets?: TicketStore;
}

const ticketStores = new WeakMap<ClubServices, TicketStore>();
/** The ticket store of these services (services.tickets, else one kept per services object). */
export function ticketsOf(services: ClubServices): TicketStore {
  if (services.tickets) return services.tickets;
  let t = ticketStores.get(services);
  if (!t) {
    t = new TicketStore();
    ticketStores.set(services, t);
  }
  return t;
}

interface SessionState {
  clubId: string;
  userId: number;
  username: string;
  sessionId: string;
  credVersion: number;
  lastActive: number;
  /** Grants cached per rights version (re-read when the version in the store changes). */
  grantsCache?: { version: number; isAdmin: boolean; personId: number | null; grants: Grant[] };
}

export interface Principal {
  readonly clubId: string;
  readonly store: ClubStore;
  readonly db: Db;
  readonly user: UserRecord;
  readonly grants: readonly Grant[];
  readonly sessionId: string;
  readonly actor: { user: string; ip: string; session: string };
  readonly audit: AuditLog;
}

const audits = new WeakMap<Db, AuditLog>();

export function auditFor(services: ClubServices, store: ClubStore): AuditLog {
  let a = audits.get(store.db);
  if (!a) {
    const id = services.identity;
    const anchors = {
      anchors: services.storage,
      onAnchorError: (e: unknown) => services.logger?.warn('change-log anchor not written; the next signed head is anchored again', { club: store.clubId, error: (e as Error).name }),
    };
    a = new AuditLog(store.db, store.clubId, id ? { signer: { sign: (b) => signTranscript(id, b), fingerprint: id.fingerprint }, ...anchors } : {});
    audits.set(store.db, a);
  }
  return a;
}

/** Append one entry in its own transaction (logins, logouts, exports). */
export function appendAudit(services: ClubServices, store: ClubStore, e: AuditInput): void {
  const a = auditFor(services, store);
  store.db.transaction(() => a.append(e)).immediate();
}

let dummyHash: Promise<string> | undefined;
function dummy(log2N: number | undefined): Promise<string> {
  dummyHash ??= hashPassword(randomBytes(16).toString('hex'), log2N);
  return dummyHash;
}

/** Map storage failures of opening a club to client errors that reveal nothing about other clubs. */
export function openClubFor(services: ClubServices, clubId: string): ClubStore {
  try {
    return services.storage.openClub(clubId);
  } catch (e) {
    if (e instanceof StorageError) {
      if (e.code === 'CLUB_SUSPENDED') throw new CommandError('FORBIDDEN', 'the club is suspended');
      if (e.code === 'CLUB_NOT_FOUND' || e.code === 'INVALID_ARGUMENT' || e.code === 'CLUB_DELETED') throw new CommandError('UNAUTHENTICATED', LOGIN_FAILED_MESSAGE);
      if (e.code === 'STORE_BUSY') throw new CommandError('BUSY', 'the club is being maintained; retry shortly');
    }
    throw e;
  }
}

function effectiveGrants(u: UserRecord): Grant[] {
  if (u.isAdmin) return roleTemplate('administrator');
  const r = rightsSchema.safeParse(u.grants ?? []);
  return r.success ? r.data : [];
}

export function grantsOf(u: UserRecord): Grant[] {
  return effectiveGrants(u);
}

function getSession(ctx: CommandContext): SessionState | undefined {
  return ctx.session.get(SESSION_KEY) as SessionState | undefined;
}

/** The club a connection's session is logged in to, from its per-connection state. */
export function clubOfSession(session: Map<string, unknown>): string | undefined {
  return (session.get(SESSION_KEY) as SessionState | undefined)?.clubId;
}

export function currentClub(ctx: CommandContext): string | undefined {
  return getSession(ctx)?.clubId;
}

/**
 * The change-log detail of a login or logout: `source: 'web'` marks those of the web
 * application (daemon/web/); protocol entries keep their detail as it was (null when empty).
 */
function withSource(conn: ConnectionInfo, detail: Record<string, unknown> | null): Record<string, unknown> | null {
  if (!conn.source) return detail;
  return { ...(detail ?? {}), source: conn.source };
}

/** End the session and log it (explicit logout, idle timeout, disabled user). */
function endSession(services: ClubServices, ctx: Pick<CommandContext, 'conn' | 'session'>, s: SessionState, reason: string | null): void {
  ctx.session.delete(SESSION_KEY);
  try {
    const store = services.storage.openClub(s.clubId);
    appendAudit(services, store, { user: s.username, ip: ctx.conn.ip, session: s.sessionId, action: 'logout', entity: null, recordId: null, changes: withSource(ctx.conn, reason ? { reason } : null) });
    auditFor(services, store).signHead();
  } catch (e) {
    services.logger?.warn('logout not logged', { club: s.clubId, error: (e as Error).name });
  }
}

/**
 * A connection that ends with a session still open logs that session's logout; `reason` is the
 * logged reason (the web application passes 'idle timeout' or 'absolute timeout').
 */
export function endSessionOnClose(services: ClubServices, conn: ConnectionInfo, session: Map<string, unknown>, reason = 'connection closed'): void {
  const s = session.get(SESSION_KEY) as SessionState | undefined;
  if (s) endSession(services, { conn, session }, s, reason);
}

/**
 * The authenticated principal of this request, or UNAUTHENTICATED. Re-reads the user on every
 * call: disabled users, reset passwords and changed rights apply at once.
 */
export function requirePrincipal(services: ClubServices, ctx: CommandContext, o: { allowMustChange?: boolean } = {}): Principal {
  const s = getSession(ctx);
  if (!s) throw new CommandError('UNAUTHENTICATED', 'log in first (auth.login)');
  const now = (services.now ?? Date.now)();
  const idle = services.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  if (now - s.lastActive > idle) {
    endSession(services, ctx, s, 'idle timeout');
    throw new CommandError('UNAUTHENTICATED', 'the session ended after inactivity; log in again');
  }
  let store: ClubStore;
  try {
    store = openClubFor(services, s.clubId);
  } catch (e) {
    ctx.session.delete(SESSION_KEY);
    throw e;
  }
  const u = getUserById(store.db, s.userId);
  if (!u || u.disabled || u.credVersion !== s.credVersion) {
    endSession(services, ctx, s, !u ? 'user deleted' : u.disabled ? 'user disabled' : 'password changed');
    throw new CommandError('UNAUTHENTICATED', 'the session has ended; log in again');
  }
  if (u.mustChangePassword && !o.allowMustChange) throw new CommandError('FORBIDDEN', 'change your password first (users.changeOwnPassword)');
  s.lastActive = now;
  let g = s.grantsCache;
  if (!g || g.version !== u.rightsVersion || g.isAdmin !== u.isAdmin || g.personId !== u.personId) {
    g = { version: u.rightsVersion, isAdmin: u.isAdmin, personId: u.personId, grants: effectiveGrants(u) };
    s.grantsCache = g;
  }
  return {
    clubId: s.clubId,
    store,
    db: store.db,
    user: u,
    grants: g.grants,
    sessionId: s.sessionId,
    actor: { user: u.username, ip: ctx.conn.ip, session: s.sessionId },
    audit: auditFor(services, store),
  };
}

/**
 * A download that revocation reaches (point 7 of issue 19): before each chunk it re-reads the
 * user of the session the download was started in. The stream ends with UNAUTHENTICATED when
 * that session ended (logout, new login on the connection), the user was deleted or disabled,
 * or their password was reset; and with FORBIDDEN when their rights changed and `allowed`
 * (given the new grants) says no. Bytes already handed to the socket are gone; nothing more is
 * sent. The re-read is one indexed row per chunk (chunks are up to 64 KiB).
 */
export function revocable(services: ClubServices, ctx: CommandContext, source: AsyncIterable<Uint8Array>, allowed: (grants: readonly Grant[], user: UserRecord) => boolean): AsyncIterable<Uint8Array> {
  const s = getSession(ctx);
  if (!s) throw new CommandError('UNAUTHENTICATED', 'log in first (auth.login)');
  const { clubId, userId, sessionId, credVersion } = s;
  let rightsSeen: { version: number; isAdmin: boolean } | undefined;
  const check = (): void => {
    const now = getSession(ctx);
    if (!now || now.sessionId !== sessionId) throw new CommandError('UNAUTHENTICATED', 'the session has ended');
    let u: UserRecord | undefined;
    try {
      u = getUserById(services.storage.openClub(clubId).db, userId);
    } catch {
      u = undefined;
    }
    if (!u || u.disabled || u.credVersion !== credVersion) throw new CommandError('UNAUTHENTICATED', 'the session has ended; log in again');
    if (!rightsSeen || rightsSeen.version !== u.rightsVersion || rightsSeen.isAdmin !== u.isAdmin) {
      if (!allowed(effectiveGrants(u), u)) throw new CommandError('FORBIDDEN', 'the right to this download was withdrawn');
      rightsSeen = { version: u.rightsVersion, isAdmin: u.isAdmin };
    }
  };
  return {
    async *[Symbol.asyncIterator]() {
      const it = source[Symbol.asyncIterator]();
      try {
        for (;;) {
          check();
          const r = await it.next();
          if (r.done) return;
          check();
          yield r.value;
        }
      } finally {
        await it.return?.();
      }
    },
  };
}

/** Update the session after the user changed their own password (it stays valid). */
export function refreshCredVersion(ctx: CommandContext, credVersion: number): void {
  const s = getSession(ctx);
  if (s) s.credVersion = credVersion;
}

export interface LoginResult {
  club: string;
  user: string;
  userId: number;
  session: string;
  mustChangePassword: boolean;
  idleTimeoutMs: number;
}

export async function login(services: ClubServices, ctx: CommandContext, p: { club: string; user: string; password: string }): Promise<LoginResult> {
  const prev = getSession(ctx);
  if (prev) endSession(services, ctx, prev, 'new login on the connection');
  const fail = (reason: string, store?: ClubStore): never => {
    services.violations.report({ ip: ctx.conn.ip, kind: 'login', detail: 'failed login', time: Date.now(), club: p.club.slice(0, 64), user: p.user.slice(0, 64), command: 'auth.login' });
    if (store) {
      try {
        appendAudit(services, store, { user: p.user.slice(0, 64), ip: ctx.conn.ip, session: null, action: 'login.failed', entity: null, recordId: null, changes: withSource(ctx.conn, { reason }) });
      } catch (e) {
        services.logger?.warn('failed login not logged', { error: (e as Error).name });
      }
    }
    throw new CommandError('UNAUTHENTICATED', LOGIN_FAILED_MESSAGE);
  };
  const d = await dummy(services.passwordLog2N);
  let store: ClubStore | undefined;
  try {
    store = openClubFor(services, p.club);
  } catch (e) {
    if (!(e instanceof CommandError && e.code === 'UNAUTHENTICATED')) throw e;
  }
  if (!store) {
    await verifyPassword(p.password, d);
    return fail('unknown club');
  }
  const u = getUserByName(store.db, p.user);
  let ok = false;
  let legacy = false;
  if (!u) {
    await verifyPassword(p.password, d);
  } else if (isWrappedLegacySha512(u.passwordHash)) {
    legacy = true;
    ok = await verifyWrappedLegacySha512(p.password, u.passwordHash);
  } else if (isLegacySha512(u.passwordHash)) {
    legacy = true;
    ok = verifyLegacySha512(p.password, u.passwordHash);
    await verifyPassword(p.password, d);
  } else {
    try {
      ok = await verifyPassword(p.password, u.passwordHash);
    } catch {
      await verifyPassword(p.password, d);
      ok = false;
    }
  }
  store = openClubFor(services, p.club); // re-get after await (the cache may have evicted it)
  if (!u) return fail('unknown user', store);
  const fresh = getUserById(store.db, u.id);
  if (!ok) return fail('wrong password', store);
  if (!fresh || fresh.disabled) return fail('user disabled', store);
  let rehashed: string | undefined;
  if (legacy || (services.passwordLog2N === undefined && needsRehashSafe(fresh.passwordHash))) {
    rehashed = await hashPassword(p.password, services.passwordLog2N);
    store = openClubFor(services, p.club);
  }
  const sessionId = randomBytes(12).toString('hex');
  const now = new Date((services.now ?? Date.now)());
  const db = store.db;
  const audit = auditFor(services, store);
  db.transaction(() => {
    if (rehashed) setPasswordHash(db, u.id, rehashed, fresh.mustChangePassword, false);
    setLastLogin(db, u.id, now.toISOString());
    audit.append({ user: u.username, ip: ctx.conn.ip, session: sessionId, action: 'login', entity: null, recordId: null, changes: withSource(ctx.conn, rehashed ? { passwordHash: { old: '[redacted]', new: '[redacted]' }, rehashed: legacy ? 'legacy sha512 -> scrypt' : 'scrypt parameters raised' } : null) });
  }).immediate();
  const after = getUserById(db, u.id)!;
  ctx.authenticated?.();
  ctx.session.set(SESSION_KEY, { clubId: p.club, userId: u.id, username: u.username, sessionId, credVersion: after.credVersion, lastActive: now.getTime() } satisfies SessionState);
  return { club: p.club, user: u.username, userId: u.id, session: sessionId, mustChangePassword: after.mustChangePassword, idleTimeoutMs: services.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS };
}

function needsRehashSafe(h: string): boolean {
  try {
    return needsRehash(h);
  } catch {
    return false;
  }
}

/**
 * `auth.logout {revokeTicket?}`: ends the session; with `revokeTicket: true` every session
 * ticket of the session's user in this club is revoked first (a client's `commusic logout`).
 */
export function logout(services: ClubServices, ctx: CommandContext, p: { revokeTicket?: boolean | undefined } = {}): { loggedOut: boolean; ticketsRevoked?: number } {
  const s = getSession(ctx);
  if (!s) return { loggedOut: false };
  const revoked = p.revokeTicket ? ticketsOf(services).revokeUser(s.clubId, s.userId) : undefined;
  endSession(services, ctx, s, null);
  return { loggedOut: true, ...(revoked !== undefined ? { ticketsRevoked: revoked } : {}) };
}

export interface TicketResult {
  ticket: string;
  /** ISO times: the ticket ends at idleExpiresAt unless resumed before, and at expiresAt in any case. */
  idleExpiresAt: string;
  expiresAt: string;
  idleTimeoutMs: number;
}

/**
 * `auth.ticket {}`: a session ticket for the logged-in user (daemon/tickets.ts). Refused while
 * the password must be changed (FORBIDDEN, as every other command then).
 */
export function issueTicket(services: ClubServices, ctx: CommandContext): TicketResult {
  const pr = requirePrincipal(services, ctx);
  const now = (services.now ?? Date.now)();
  const t = ticketsOf(services).issue({ clubId: pr.clubId, userId: pr.user.id, credVersion: pr.user.credVersion }, now);
  return { ticket: t.ticket, idleExpiresAt: new Date(t.idleExpiresAt).toISOString(), expiresAt: new Date(t.expiresAt).toISOString(), idleTimeoutMs: t.idleExpiresAt - now };
}

/**
 * `auth.resume {club, ticket}`: logs the connection in with a session ticket instead of a
 * password. The same checks as auth.login (club active, user enabled, no pending password
 * change) plus the user's credential version at issue (a password change, reset or disable
 * since then ends the ticket). Every failure is the login failure: UNAUTHENTICATED "unknown
 * club, user or password", a 'login' violation for the ban engine and, when the club exists, a
 * `login.failed` change-log entry. Success is logged as a `login` with `{source: 'ticket'}`.
 */
export function resume(services: ClubServices, ctx: CommandContext, p: { club: string; ticket: string }): LoginResult {
  const prev = getSession(ctx);
  if (prev) endSession(services, ctx, prev, 'new login on the connection');
  const tickets = ticketsOf(services);
  const fail = (reason: string, store?: ClubStore, user = ''): never => {
    services.violations.report({ ip: ctx.conn.ip, kind: 'login', detail: 'failed ticket login', time: Date.now(), club: p.club.slice(0, 64), user: user.slice(0, 64), command: 'auth.resume' });
    if (store) {
      try {
        appendAudit(services, store, { user: user.slice(0, 64), ip: ctx.conn.ip, session: null, action: 'login.failed', entity: null, recordId: null, changes: { reason, source: 'ticket' } });
      } catch (e) {
        services.logger?.warn('failed login not logged', { error: (e as Error).name });
      }
    }
    throw new CommandError('UNAUTHENTICATED', LOGIN_FAILED_MESSAGE);
  };
  let store: ClubStore | undefined;
  try {
    store = openClubFor(services, p.club);
  } catch (e) {
    if (!(e instanceof CommandError && e.code === 'UNAUTHENTICATED')) throw e;
  }
  if (!store) return fail('unknown club');
  const now = (services.now ?? Date.now)();
  const grant = TICKET_PATTERN.test(p.ticket) ? tickets.use(p.club, p.ticket, now) : undefined;
  if (!grant) return fail('unknown or expired ticket', store);
  const u = getUserById(store.db, grant.userId);
  if (!u) {
    tickets.drop(p.ticket);
    return fail('unknown user', store);
  }
  if (u.disabled || u.credVersion !== grant.credVersion || u.mustChangePassword) {
    tickets.drop(p.ticket);
    return fail(u.disabled ? 'user disabled' : 'ticket revoked by a password change', store, u.username);
  }
  const sessionId = randomBytes(12).toString('hex');
  const db = store.db;
  const audit = auditFor(services, store);
  db.transaction(() => {
    setLastLogin(db, u.id, new Date(now).toISOString());
    audit.append({ user: u.username, ip: ctx.conn.ip, session: sessionId, action: 'login', entity: null, recordId: null, changes: { source: 'ticket' } });
  }).immediate();
  ctx.authenticated?.();
  ctx.session.set(SESSION_KEY, { clubId: p.club, userId: u.id, username: u.username, sessionId, credVersion: u.credVersion, lastActive: now } satisfies SessionState);
  return { club: p.club, user: u.username, userId: u.id, session: sessionId, mustChangePassword: false, idleTimeoutMs: services.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS };
}
