/**
 * Password work on a connection (every command that runs scrypt: auth.login, users.create,
 * users.resetPassword, users.changeOwnPassword). Two bounds against one client slowing
 * everyone's logins (security review, "one connection can block logins for the whole server"):
 *  - ONE password check in flight per connection: a second command that would hash while one
 *    is running is refused at once with BUSY (not queued: a pipelined flood costs the server
 *    nothing and the client learns to wait for its answer). BUSY is not a violation.
 *  - the hash queue (crypto/hash-queue.ts) takes jobs round-robin between source addresses
 *    (IPv6: per /64),
 *    refuses a source's fifth waiting job (BUSY), and drops a job when its request is aborted:
 *    the connection closed, was closed because its source got banned, the client cancelled or
 *    the request timed out. A hash already running finishes, but its result is discarded: no
 *    login, no failed-login violation, no change-log entry.
 */
import { CryptoError } from '../../crypto/errors.js';
import type { HashJobOptions } from '../../crypto/password.js';
import { formatPrefix, parseAddress, prefixOf } from '../../storage/bans/ban-address.js';
import { CommandError } from '../edge/command-errors.js';
import type { CommandContext } from '../edge/dispatcher.js';

/** The per-connection flag (ctx.session) set while a password check runs. */
const PASSWORD_WORK_KEY = 'club.passwordWork';

/** A refused or cancelled hash as the client sees it; anything else unchanged. */
export function hashQueueError(e: unknown): unknown {
  if (e instanceof CryptoError && e.code === 'HASH_BUSY') return new CommandError('BUSY', 'too many password checks from this address are waiting; retry shortly');
  if (e instanceof CryptoError && e.code === 'HASH_CANCELLED') return new CommandError('CANCELLED', 'the password check was cancelled');
  return e;
}

/** True for the hash queue's own refusals (to be passed on, never taken for a wrong password). */
export function isHashQueueError(e: unknown): boolean {
  return e instanceof CryptoError && (e.code === 'HASH_BUSY' || e.code === 'HASH_CANCELLED');
}

/**
 * The hash queue's fairness key for a client address: an IPv4 address itself, an IPv6 address's
 * /64 (one host or customer network holds a whole /64, as the ban engine counts it).
 */
export function hashSourceOf(ip: string): string {
  const a = parseAddress(ip);
  if (!a || a.family === 4) return ip;
  return formatPrefix(prefixOf(a, 64));
}

/**
 * Runs `work` as this connection's one password check. BUSY at once if another is in flight on
 * the connection; `work` gets the hash-queue options (source address, the request's signal).
 * Hash-queue errors come out as CommandError BUSY / CANCELLED.
 */
export async function withPasswordWork<T>(ctx: CommandContext, work: (opts: HashJobOptions) => Promise<T>): Promise<T> {
  if (ctx.session.get(PASSWORD_WORK_KEY) === true) throw new CommandError('BUSY', 'a password check is already in progress on this connection; wait for its answer');
  ctx.session.set(PASSWORD_WORK_KEY, true);
  try {
    return await work({ source: hashSourceOf(ctx.conn.ip), signal: ctx.signal });
  } catch (e) {
    throw hashQueueError(e);
  } finally {
    ctx.session.delete(PASSWORD_WORK_KEY);
  }
}
