/**
 * The answer of a keyed request is stored in the same transaction as its changes
 * (PROTOCOL.md "Request keys"; storage/club/request-keys.ts).
 *
 * The cluster's gate (daemon/cluster/gate.ts) runs a keyed command's handler inside `runKeyed`.
 * A handler that writes builds its answer inside its write transaction and passes it through
 * `keepAnswer(db, result)` there: with a request key in force the answer is written beside the
 * change and commits (or rolls back) with it; without one `keepAnswer` only returns the result.
 * Grouped writes (daemon/club/command-guard.ts `grouped`) do this for their work's result.
 * A command whose change is the club's row in server.db (`backup.setPassphrase`) passes its
 * answer through `keepRowAnswer(server, club, result)` inside the server.db transaction of that
 * change (storage/server/row-answers.ts). A keyed command that kept none (it changed nothing: a
 * read) has no stored answer: its retry runs it again, with every check of its handler.
 *
 * The request is found through AsyncLocalStorage: a handler's own code runs in its request's
 * context. Code that runs later for several requests (a write group's commit) takes the context
 * when the work is queued (`currentKeyed`) and hands it to `keepAnswerFor`.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Db } from '../../storage/engine/sqlcipher.js';
import { putAnswer, type AnswerBinding } from '../../storage/club/request-keys.js';
import { putRowAnswer } from '../../storage/server/row-answers.js';
import { CommandError } from './command-errors.js';
import type { CommandResult } from './dispatcher.js';

/** One keyed request in flight. */
export interface KeyedRequest {
  readonly rk: string;
  readonly command: string;
  readonly userId: number | undefined;
  /**
   * The rights fingerprint of the user as the handler's last session check saw them
   * (daemon/club/session.ts requirePrincipal sets it, rightsFingerprint), stored with the
   * answer; '' until a check ran (such an answer is never replayed).
   */
  rights: string;
  /** The fingerprint of the request's payload (storage/club/request-keys.ts requestFingerprint). */
  readonly request: string;
  /** Milliseconds since the epoch, the stored row's time. */
  readonly now: () => number;
  /** Set once the answer was written inside a transaction of the command. */
  kept: boolean;
}

/** What the answer of `k` is bound to when it is stored. */
function bindingOf(k: KeyedRequest): AnswerBinding {
  return { userId: k.userId, rights: k.rights, request: k.request };
}

const keyed = new AsyncLocalStorage<KeyedRequest | undefined>();

/** Run `fn` as the request `k` (undefined: a request without a key). */
export function runKeyed<T>(k: KeyedRequest | undefined, fn: () => T): T {
  return keyed.run(k, fn);
}

/** The keyed request whose code is running now, if any. */
export function currentKeyed(): KeyedRequest | undefined {
  return keyed.getStore();
}

/**
 * Inside the transaction that holds the command's changes: store `result` as the answer of the
 * request key `k` (if any; downloads are never stored) and return `result`. A failed write of the
 * answer throws, so the transaction fails with it and nothing of the command commits.
 */
export function keepAnswerFor<T extends CommandResult>(k: KeyedRequest | undefined, db: Db, result: T): T {
  if (!k || result.download) return result;
  if (!db.inTransaction) throw new CommandError('INTERNAL', 'internal error: an answer kept outside its transaction');
  if (putAnswer(db, k.rk, k.command, bindingOf(k), result.payload, k.now())) k.kept = true;
  return result;
}

/** keepAnswerFor for the request whose code is running now. */
export function keepAnswer<T extends CommandResult>(db: Db, result: T): T {
  return keepAnswerFor(currentKeyed(), db, result);
}

/**
 * keepAnswer for a change of the club's row in server.db: inside the server.db transaction that
 * holds it, store `result` as the answer of the running request's key (if any) in server.db
 * (storage/server/row-answers.ts), and return `result`. A failed write throws, so the change
 * fails with it.
 */
export function keepRowAnswer<T extends CommandResult>(server: Db, club: string, result: T): T {
  const k = currentKeyed();
  if (!k || result.download) return result;
  if (!server.inTransaction) throw new CommandError('INTERNAL', 'internal error: an answer kept outside its transaction');
  if (putRowAnswer(server, club, k.rk, k.command, bindingOf(k), result.payload, k.now())) k.kept = true;
  return result;
}
