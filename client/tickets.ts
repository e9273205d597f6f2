/**
 * The client's cache of session tickets (daemon/edge/tickets.ts issues them): one file per server
 * key, club and user, mode 0600 in a folder of mode 0700: $COMMUSIC_TICKET_DIR, else
 * $XDG_RUNTIME_DIR/commusic (tmpfs, gone at logout of the desktop session), else
 * ~/.commusic/tickets. A ticket is bound to the server key: the file name is derived from the
 * fingerprint and the file records it; loadTicket() returns a ticket only for the fingerprint
 * the connection has verified, so a ticket is never sent to a server with another key.
 */
import { createHash } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { normalizeFingerprint } from '../crypto/identity.js';

export interface StoredTicket {
  fingerprint: string;
  club: string;
  user: string;
  ticket: string;
  /** ISO times as the daemon reported them. */
  idleExpiresAt: string;
  expiresAt: string;
  /** The ticket's idle time in ms (auth.ticket's idleTimeoutMs): a resume extends it by this. */
  idleMs: number;
}

/** The folder tickets are kept in (see the module comment for the order). */
export function ticketDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['COMMUSIC_TICKET_DIR']) return env['COMMUSIC_TICKET_DIR'];
  if (env['XDG_RUNTIME_DIR']) return join(env['XDG_RUNTIME_DIR'], 'commusic');
  return join(homedir(), '.commusic', 'tickets');
}

/** The ticket file for a server key, club and user (names hashed: no user text in file names). */
export function ticketFile(dir: string, fingerprint: string, club: string, user: string): string {
  const h = createHash('sha256').update(`${normalizeFingerprint(fingerprint) ?? fingerprint}\0${club}\0${user}`, 'utf8').digest('hex');
  return join(dir, `${h.slice(0, 40)}.ticket`);
}

/**
 * The cached ticket for this verified server fingerprint, club and user, or undefined: none,
 * expired by its absolute or idle time, recorded for another fingerprint, club or user, or a
 * file that is not a regular file of mode 0600 owned by this user (then it is not trusted).
 */
export function loadTicket(dir: string, fingerprint: string, club: string, user: string, now = Date.now()): StoredTicket | undefined {
  const want = normalizeFingerprint(fingerprint);
  if (!want) return undefined;
  const file = ticketFile(dir, fingerprint, club, user);
  try {
    const st = lstatSync(file);
    if (!st.isFile() || (st.mode & 0o777) !== 0o600 || (typeof process.getuid === 'function' && st.uid !== process.getuid())) return undefined;
    if (st.size > 4096) return undefined;
    const t = JSON.parse(readFileSync(file, 'utf8')) as StoredTicket;
    if (typeof t.ticket !== 'string' || typeof t.fingerprint !== 'string') return undefined;
    if (normalizeFingerprint(t.fingerprint) !== want || t.club !== club || t.user !== user) return undefined;
    if (!(Date.parse(t.expiresAt) > now) || !(Date.parse(t.idleExpiresAt) > now)) {
      rmSync(file, { force: true });
      return undefined;
    }
    return t;
  } catch {
    return undefined;
  }
}

/** Writes the ticket file (mode 0600, folder 0700) atomically. */
export function saveTicket(dir: string, t: StoredTicket): string {
  const fp = normalizeFingerprint(t.fingerprint);
  if (!fp) throw new Error('not a server key fingerprint');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const file = ticketFile(dir, t.fingerprint, t.club, t.user);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify({ ...t, fingerprint: fp })}\n`, { mode: 0o600, flag: 'wx' });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
  return file;
}

/** Removes the ticket file of this server key, club and user (nothing when there is none). */
export function removeTicket(dir: string, fingerprint: string, club: string, user: string): void {
  rmSync(ticketFile(dir, fingerprint, club, user), { force: true });
}

/** Keeps a used ticket's idle expiry in step with the daemon (it was refreshed by the resume). */
export function touchTicket(dir: string, t: StoredTicket, now = Date.now()): void {
  saveTicket(dir, { ...t, idleExpiresAt: new Date(Math.min(now + t.idleMs, Date.parse(t.expiresAt))).toISOString() });
}
