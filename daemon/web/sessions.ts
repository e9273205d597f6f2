import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Web sessions, as the OWASP Session Management Cheat Sheet says: a 256-bit random id made at
 * login (never before: no fixation), kept only in an `__Host-` cookie, looked up by its SHA-256
 * (the table holds no usable id); idle and absolute timeouts checked on every use; a bounded
 * table. Each session carries its synchronizer CSRF token (OWASP CSRF Prevention Cheat Sheet)
 * and the per-connection command state of the club commands (daemon/club/auth.ts keeps the logged-in
 * user there, as it does for a protocol connection).
 *
 * Before login there is no session: the login form is protected by a signed double-submit
 * token (HMAC of a random pre-session cookie under a per-process key), so no table entry can be
 * created by an anonymous visitor.
 */
export const SESSION_COOKIE = '__Host-cm_session';
export const PRE_COOKIE = '__Host-cm_pre';
const ID_BYTES = 32;

export interface WebSession {
  /** SHA-256 of the cookie value (hex): the table key. */
  readonly key: string;
  readonly csrf: string;
  readonly created: number;
  lastSeen: number;
  /** Connection-like identity for the command handlers (ids from their own range). */
  readonly connId: number;
  /** The command handlers' per-connection state (daemon/club/auth.ts stores the login there). */
  readonly commands: Map<string, unknown>;
  readonly club: string;
  readonly user: string;
  mustChangePassword: boolean;
  /** The address of the session's latest request (the logout entry of a timeout names it). */
  ip: string;
}

export type EndReason = 'idle timeout' | 'absolute timeout' | 'session table full' | 'server stopped';

export interface SessionStoreOptions {
  idleTimeoutMs: number;
  absoluteTimeoutMs: number;
  maxSessions: number;
  /** Called once when a session ends by itself (timeouts, eviction), to log the logout. */
  onEnd(s: WebSession, reason: EndReason): void;
  now?: () => number;
}

function digest(id: string): string {
  return createHash('sha256').update(id, 'utf8').digest('hex');
}

/** Constant-time comparison of two strings (different lengths compare unequal). */
export function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

export class SessionStore {
  private readonly table = new Map<string, WebSession>();
  private nextConn = 2_000_000_000;
  private readonly preKey = randomBytes(32);
  private readonly now: () => number;

  constructor(private readonly opts: SessionStoreOptions) {
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.table.size;
  }

  /** A new session after a successful login; returns the cookie value (shown to nobody else). */
  create(init: { club: string; user: string; ip: string; commands: Map<string, unknown>; mustChangePassword: boolean }): { id: string; session: WebSession } {
    this.sweep();
    if (this.table.size >= this.opts.maxSessions) {
      let oldest: WebSession | undefined;
      for (const s of this.table.values()) if (!oldest || s.lastSeen < oldest.lastSeen) oldest = s;
      if (oldest) this.end(oldest, 'session table full');
    }
    const id = randomBytes(ID_BYTES).toString('base64url');
    const now = this.now();
    const session: WebSession = { key: digest(id), csrf: randomBytes(ID_BYTES).toString('base64url'), created: now, lastSeen: now, connId: this.nextConn++, commands: init.commands, club: init.club, user: init.user, ip: init.ip, mustChangePassword: init.mustChangePassword };
    this.table.set(session.key, session);
    return { id, session };
  }

  /**
   * The live session of a cookie value, or undefined. A session past its idle or absolute
   * timeout ends here (onEnd is called) and is undefined. `touch` false reads it without
   * extending the idle time.
   */
  get(id: string | undefined, touch = true): WebSession | undefined {
    if (!id || id.length > 64) return undefined;
    const s = this.table.get(digest(id));
    if (!s) return undefined;
    const now = this.now();
    if (now - s.created > this.opts.absoluteTimeoutMs) {
      this.end(s, 'absolute timeout');
      return undefined;
    }
    if (now - s.lastSeen > this.opts.idleTimeoutMs) {
      this.end(s, 'idle timeout');
      return undefined;
    }
    if (touch) s.lastSeen = now;
    return s;
  }

  /** Forget a session without calling onEnd (logout logs itself). */
  delete(s: WebSession): void {
    this.table.delete(s.key);
  }

  /** End every session past a timeout (run periodically and before each create). */
  sweep(): void {
    const now = this.now();
    for (const s of [...this.table.values()]) {
      if (now - s.created > this.opts.absoluteTimeoutMs) this.end(s, 'absolute timeout');
      else if (now - s.lastSeen > this.opts.idleTimeoutMs) this.end(s, 'idle timeout');
    }
  }

  /** End all sessions (shutdown): each is logged like a timeout would be. */
  endAll(reason: EndReason): void {
    for (const s of [...this.table.values()]) this.end(s, reason);
  }

  private end(s: WebSession, reason: EndReason): void {
    if (!this.table.delete(s.key)) return;
    this.opts.onEnd(s, reason);
  }

  /** A fresh pre-session value for the login form's cookie. */
  newPre(): string {
    return randomBytes(ID_BYTES).toString('base64url');
  }

  /** The login form's CSRF token bound to a pre-session cookie value. */
  preToken(pre: string): string {
    return createHmac('sha256', this.preKey).update(pre, 'utf8').digest('base64url');
  }

  /** Whether a login form's token belongs to its pre-session cookie (constant time). */
  checkPre(pre: string | undefined, token: string | undefined): boolean {
    if (!pre || !token || pre.length > 64 || token.length > 64) return false;
    return sameSecret(this.preToken(pre), token);
  }
}
