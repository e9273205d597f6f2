/**
 * The club session on a connection: the services club commands use, the session state, the
 * Principal a request runs as (requirePrincipal), revocation on a rights change, and the change-log
 * append with the request's source.
 */
import { createHash, randomBytes } from 'node:crypto';
import { signTranscript, type IdentityKey } from '../../crypto/identity.js';
import { hashPassword } from '../../crypto/password.js';
import { AuditLog, type AuditInput } from '../../storage/club/audit-log.js';
import type { ClubStore } from '../../storage/club/club-store.js';
import { StorageError, type StorageLogger } from '../../storage/engine/errors.js';
import type { Db } from '../../storage/engine/sqlcipher.js';
import type { Storage } from '../../storage/server/storage.js';
import type { UserRecord } from '../../storage/club/users.js';
import { currentUser } from '../../storage/club/user-cache.js';
import { CommandError } from '../edge/command-errors.js';
import type { CommandContext, ConnectionInfo } from '../edge/dispatcher.js';
import { roleTemplate, rightsSchema, type Grant } from './rights.js';
import { TicketStore } from '../edge/tickets.js';
import { currentKeyed } from '../edge/keyed-answer.js';
import type { ViolationSink } from '../bans/violations.js';

export const DEFAULT_IDLE_TIMEOUT_MS = 30 * 60_000;
export const LOGIN_FAILED_MESSAGE = 'unknown club, user or password';
export const SESSION_KEY = 'auth';

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
  /**
   * In a cluster: copy a stored document file to the club's standbys before its row is recorded
   * (daemon/cluster/setup.ts); rejects with a CommandError (UNAVAILABLE, MOVED) when they did not
   * all confirm it. Absent on a single server.
   */
  replicateDocument?: (clubId: string, file: string) => Promise<void>;
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

export interface SessionState {
  clubId: string;
  userId: number;
  username: string;
  sessionId: string;
  credVersion: number;
  lastActive: number;
  /** Grants cached per rights version (re-read when the version in the store changes). */
  grantsCache?: { version: number; isAdmin: boolean; personId: number | null; grants: Grant[] };
  /** The last request's Principal, reused while store, user record and grants are the same objects. */
  principal?: Principal;
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
    const anchors = {
      anchors: services.storage,
      onAnchorError: (e: unknown) => services.logger?.warn('change-log anchor not written; the next signed head is anchored again', { club: store.clubId, error: (e as Error).name }),
    };
    // The key is read at each signature: after an identity key rollover new heads carry the new key.
    const signer = { sign: (b: Uint8Array) => signTranscript(services.identity!, b), get fingerprint() { return services.identity!.fingerprint; } };
    a = new AuditLog(store.db, store.clubId, services.identity ? { signer, ...anchors } : {});
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
export function dummy(log2N: number | undefined): Promise<string> {
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

/**
 * A fingerprint of what every right check of `u` reads: the effective grants (with their
 * orchestra-section scopes), administrator, linked person, and the user's identity (id and
 * creation time: a later user with a reused id differs). Equal fingerprints mean every right
 * check decides the same. A stored request-key answer is replayed only while its user's
 * fingerprint is the one it was made under (daemon/cluster/gate.ts; PROTOCOL.md "Request keys").
 * 22 characters of base64url (SHA-256, 128 bits kept).
 */
export function rightsFingerprint(u: UserRecord): string {
  const facts = JSON.stringify([u.id, u.createdAt, u.isAdmin, u.personId, effectiveGrants(u)]);
  return createHash('sha256').update(facts).digest('base64url').slice(0, 22);
}

export function getSession(ctx: CommandContext): SessionState | undefined {
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
export function withSource(conn: ConnectionInfo, detail: Record<string, unknown> | null): Record<string, unknown> | null {
  if (!conn.source) return detail;
  return { ...(detail ?? {}), source: conn.source };
}

/** End the session and log it (explicit logout, idle timeout, disabled user). */
export function endSession(services: ClubServices, ctx: Pick<CommandContext, 'conn' | 'session'>, s: SessionState, reason: string | null): void {
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
 * The authenticated principal of this request, or UNAUTHENTICATED. Looks the user up as committed
 * now on every call (storage/club/user-cache.ts: from memory unless any connection committed since),
 * so disabled users, reset passwords and changed rights apply at the next request, whoever made
 * the change (this daemon, commusicctl, another process).
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
  const u = currentUser(store.db, s.userId);
  if (!u || u.disabled || u.credVersion !== s.credVersion) {
    endSession(services, ctx, s, !u ? 'user deleted' : u.disabled ? 'user disabled' : 'password changed');
    throw new CommandError('UNAUTHENTICATED', 'the session has ended; log in again');
  }
  if (u.mustChangePassword && !o.allowMustChange) throw new CommandError('FORBIDDEN', 'change your password first (users.changeOwnPassword)');
  s.lastActive = now;
  // A keyed request's answer is stored with the rights this check saw (daemon/edge/keyed-answer.ts).
  const keyed = currentKeyed();
  if (keyed) keyed.rights = rightsFingerprint(u);
  let g = s.grantsCache;
  if (!g || g.version !== u.rightsVersion || g.isAdmin !== u.isAdmin || g.personId !== u.personId) {
    g = { version: u.rightsVersion, isAdmin: u.isAdmin, personId: u.personId, grants: effectiveGrants(u) };
    s.grantsCache = g;
  }
  const last = s.principal;
  if (last && last.store === store && last.user === u && last.grants === g.grants && last.actor.ip === ctx.conn.ip) return last;
  const p: Principal = {
    clubId: s.clubId,
    store,
    db: store.db,
    user: u,
    grants: g.grants,
    sessionId: s.sessionId,
    actor: { user: u.username, ip: ctx.conn.ip, session: s.sessionId },
    audit: auditFor(services, store),
  };
  s.principal = p;
  return p;
}

/**
 * A download that revocation reaches (point 7 of issue 19): before each chunk it re-reads the
 * user of the session the download was started in. The stream ends with UNAUTHENTICATED when
 * that session ended (logout, new login on the connection), the user was deleted or disabled,
 * or their password was reset; and with FORBIDDEN when their rights changed and `allowed`
 * (given the new grants) says no. Bytes already handed to the socket are gone; nothing more is
 * sent. The look-up per chunk is the user cache's (storage/club/user-cache.ts): one version check.
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
      u = currentUser(services.storage.openClub(clubId).db, userId);
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
