/**
 * Session tickets: a short-lived credential a logged-in user may ask for (`auth.ticket`) so a
 * run of separate client invocations is one password entry, not one per command. The ticket is
 * 32 random bytes (base64url) handed to the client once; the daemon keeps only its SHA-256 with
 * the club, user and the user's credential version at issue time, in memory (a restart revokes
 * every ticket). A ticket ends after IDLE_MS without a resume, ABSOLUTE_MS after issue, when
 * revoked (`auth.logout {revokeTicket: true}`), and as soon as the user's credVersion changes
 * (password change or reset, disable; storage/club/users.ts bumps it). Bounded: at most MAX_PER_USER
 * per user (the oldest goes) and MAX_TICKETS in all (the oldest goes).
 */
import { createHash, randomBytes } from 'node:crypto';

export const TICKET_IDLE_MS = 15 * 60_000;
export const TICKET_ABSOLUTE_MS = 8 * 3_600_000;
const MAX_PER_USER = 16;
const MAX_TICKETS = 10_000;
/** base64url of 32 bytes. */
export const TICKET_PATTERN = /^[A-Za-z0-9_-]{43}$/;

export interface TicketGrant {
  clubId: string;
  userId: number;
  credVersion: number;
}

interface Entry extends TicketGrant {
  issuedAt: number;
  lastUsed: number;
}

function digest(ticket: string): string {
  return createHash('sha256').update(ticket, 'utf8').digest('hex');
}

export class TicketStore {
  private readonly byHash = new Map<string, Entry>();

  constructor(
    private readonly idleMs = TICKET_IDLE_MS,
    private readonly absoluteMs = TICKET_ABSOLUTE_MS,
  ) {}

  /** A new ticket for the grant; returns the ticket text (shown once) and its expiry times (ms since epoch). */
  issue(g: TicketGrant, now: number): { ticket: string; idleExpiresAt: number; expiresAt: number } {
    this.prune(now);
    const mine = [...this.byHash.entries()].filter(([, e]) => e.clubId === g.clubId && e.userId === g.userId).sort((a, b) => a[1].issuedAt - b[1].issuedAt);
    while (mine.length >= MAX_PER_USER) this.byHash.delete(mine.shift()![0]);
    while (this.byHash.size >= MAX_TICKETS) this.byHash.delete(this.byHash.keys().next().value!);
    const ticket = randomBytes(32).toString('base64url');
    this.byHash.set(digest(ticket), { ...g, issuedAt: now, lastUsed: now });
    return { ticket, idleExpiresAt: now + this.idleMs, expiresAt: now + this.absoluteMs };
  }

  /**
   * The grant of a live ticket for this club, refreshing its idle time; undefined for an
   * unknown, expired or other club's ticket (an expired one is dropped). The lookup is by the
   * SHA-256 of the ticket, so the comparison never touches the secret itself.
   */
  use(clubId: string, ticket: string, now: number): TicketGrant | undefined {
    const h = digest(ticket);
    const e = this.byHash.get(h);
    if (!e) return undefined;
    if (now - e.lastUsed > this.idleMs || now - e.issuedAt > this.absoluteMs) {
      this.byHash.delete(h);
      return undefined;
    }
    if (e.clubId !== clubId) return undefined;
    e.lastUsed = now;
    return { clubId: e.clubId, userId: e.userId, credVersion: e.credVersion };
  }

  /** Drop one ticket (a resume that failed the user checks). */
  drop(ticket: string): void {
    this.byHash.delete(digest(ticket));
  }

  /** Revoke every ticket of a user of a club; returns how many. */
  revokeUser(clubId: string, userId: number): number {
    let n = 0;
    for (const [h, e] of this.byHash) {
      if (e.clubId === clubId && e.userId === userId) {
        this.byHash.delete(h);
        n++;
      }
    }
    return n;
  }

  get size(): number {
    return this.byHash.size;
  }

  private prune(now: number): void {
    for (const [h, e] of this.byHash) if (now - e.lastUsed > this.idleMs || now - e.issuedAt > this.absoluteMs) this.byHash.delete(h);
  }
}
