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
import { isLegacySha512, isWrappedLegacySha512, verifyLegacySha512, verifyWrappedLegacySha512 } from '../../crypto/legacy-password.js';
import { hashPassword, needsRehash, verifyPassword, type HashJobOptions } from '../../crypto/password.js';
import type { ClubStore } from '../../storage/club/club-store.js';
import { getUserById, getUserByName, setLastLogin, setPasswordHash } from '../../storage/club/users.js';
import { CommandError } from '../edge/command-errors.js';
import type { CommandContext } from '../edge/dispatcher.js';
import { TICKET_PATTERN } from '../edge/tickets.js';
import { isHashQueueError, withPasswordWork } from './password-work.js';
import { ClubServices, DEFAULT_IDLE_TIMEOUT_MS, LOGIN_FAILED_MESSAGE, SESSION_KEY, SessionState, appendAudit, auditFor, dummy, endSession, getSession, openClubFor, requirePrincipal, ticketsOf, withSource } from './session.js';

export { DEFAULT_IDLE_TIMEOUT_MS, LOGIN_FAILED_MESSAGE, ticketsOf, auditFor, appendAudit, openClubFor, grantsOf, currentClub, endSessionOnClose, requirePrincipal, revocable, refreshCredVersion, type ClubServices, type Principal } from './session.js';

export interface LoginResult {
  club: string;
  user: string;
  userId: number;
  session: string;
  mustChangePassword: boolean;
  idleTimeoutMs: number;
}

/**
 * `auth.login`: one per connection at a time (withPasswordWork: a second is BUSY, not a
 * violation); its scrypt waits in the fair hash queue under the client's address and is dropped
 * when the request is aborted (connection closed, source banned): no failure is counted then.
 */
export function login(services: ClubServices, ctx: CommandContext, p: { club: string; user: string; password: string }): Promise<LoginResult> {
  return withPasswordWork(ctx, (opts) => loginWith(services, ctx, p, opts));
}

async function loginWith(services: ClubServices, ctx: CommandContext, p: { club: string; user: string; password: string }, opts: HashJobOptions): Promise<LoginResult> {
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
    await verifyPassword(p.password, d, opts);
    return fail('unknown club');
  }
  const u = getUserByName(store.db, p.user);
  let ok = false;
  let legacy = false;
  if (!u) {
    await verifyPassword(p.password, d, opts);
  } else if (isWrappedLegacySha512(u.passwordHash)) {
    legacy = true;
    ok = await verifyWrappedLegacySha512(p.password, u.passwordHash, opts);
  } else if (isLegacySha512(u.passwordHash)) {
    legacy = true;
    ok = verifyLegacySha512(p.password, u.passwordHash);
    await verifyPassword(p.password, d, opts);
  } else {
    try {
      ok = await verifyPassword(p.password, u.passwordHash, opts);
    } catch (e) {
      if (isHashQueueError(e)) throw e;
      await verifyPassword(p.password, d, opts);
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
    rehashed = await hashPassword(p.password, services.passwordLog2N, opts);
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
 * `auth.ticket {}`: a session ticket for the logged-in user (daemon/edge/tickets.ts). Refused while
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
