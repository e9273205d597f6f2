/**
 * Stored answers of request keys (PROTOCOL.md "Request keys") for club commands whose change is
 * the club's row in server.db, not its store: `backup.setPassphrase` (the passphrase's public
 * key, the mail addresses). The answer goes into server.db's `club_request_keys` in the same
 * transaction as the row's change, so the two commit together or not at all (the club store's
 * `request_answers`, storage/club/request-keys.ts, cannot share a transaction with server.db).
 *
 * In a cluster the row reaches the other members in its registry record (cluster/registry.ts),
 * and these answers travel in the same record, so a retry on the club's next primary finds the
 * answer beside the change. Bounds: answers up to MAX_ROW_ANSWER_BYTES, at most MAX_ROW_ANSWERS
 * per club (the newest), kept REQUEST_KEY_TTL_MS; one-time passwords are never stored.
 *
 * The answer carries the rights fingerprint of its user (storage/club/request-keys.ts), which
 * includes the user's creation time: a new user who got a deleted user's id finds the deleted
 * user's answer stale, and the command runs again under the new user's own rights.
 */
import type { Db } from '../engine/sqlcipher.js';
import { cachedStatement } from '../engine/statements.js';
import { encodeAnswer, REQUEST_KEY_TTL_MS, storedAnswerOf, type AnswerBinding, type AnswerRow, type StoredAnswer } from '../club/request-keys.js';

/** Largest stored answer of a row command (bytes): they travel in every registry record of the club. */
export const MAX_ROW_ANSWER_BYTES = 4096;
/** Answers kept per club (the newest): bounds the registry record (16 x 4 KiB). */
export const MAX_ROW_ANSWERS = 16;

/** One stored answer as the registry record carries it. */
export interface RowAnswer {
  rk: string;
  command: string;
  /** encodeAnswer's bytes (the user's id and the payload). */
  answer: Buffer;
  /** Milliseconds since the epoch. */
  at: number;
}

const RK = /^[A-Za-z0-9_-]{16,64}$/;

function prune(server: Db, club: string, now: number): void {
  server.prepare('DELETE FROM club_request_keys WHERE club_id = ? AND at < ?').run(club, now - REQUEST_KEY_TTL_MS);
  server.prepare('DELETE FROM club_request_keys WHERE club_id = ? AND rk NOT IN (SELECT rk FROM club_request_keys WHERE club_id = ? ORDER BY at DESC, rk LIMIT ?)').run(club, club, MAX_ROW_ANSWERS);
}

/**
 * Store the answer of `rk` for `club` in the caller's server.db transaction (the one that holds
 * the row's change). Returns false (nothing written) when the answer cannot be encoded or is over
 * MAX_ROW_ANSWER_BYTES. A failing statement throws, and the caller's transaction fails with it.
 * @param now milliseconds since the epoch
 */
export function putRowAnswer(server: Db, club: string, rk: string, command: string, b: AnswerBinding, payload: unknown, now: number): boolean {
  const bytes = encodeAnswer(b, payload, MAX_ROW_ANSWER_BYTES);
  if (!bytes) return false;
  server.prepare('INSERT OR REPLACE INTO club_request_keys (club_id, rk, command, answer, at) VALUES (?, ?, ?, ?, ?)').run(club, rk, command, bytes, now);
  prune(server, club, now);
  return true;
}

/** The stored row of `rk` for `club`, if any (read by storage/club/request-keys.ts storedAnswerOf). */
export function rowAnswerRow(server: Db, club: string, rk: string): AnswerRow | undefined {
  return cachedStatement(server, 'SELECT command, answer, at FROM club_request_keys WHERE club_id = ? AND rk = ?').get(club, rk) as AnswerRow | undefined;
}

/** The stored answer of `rk` for `club`, by storage/club/request-keys.ts storedAnswerOf's rule. */
export function lookupRowAnswer(server: Db, club: string, rk: string, command: string, b: AnswerBinding): StoredAnswer {
  const row = rowAnswerRow(server, club, rk);
  return row ? storedAnswerOf(row, command, b) : { kind: 'none' };
}

/** The club's stored answers, newest first (what its registry record carries). */
export function listRowAnswers(server: Db, club: string): RowAnswer[] {
  return server.prepare('SELECT rk, command, answer, at FROM club_request_keys WHERE club_id = ? ORDER BY at DESC, rk LIMIT ?').all(club, MAX_ROW_ANSWERS) as RowAnswer[];
}

/**
 * Take the answers another member stored for `club` (from its registry record): kept beside this
 * member's own, an answer already here for the same key left as it is; malformed ones skipped.
 * @param now milliseconds since the epoch (what is older than REQUEST_KEY_TTL_MS is dropped)
 */
export function importRowAnswers(server: Db, club: string, answers: readonly RowAnswer[], now: number): void {
  const insert = server.prepare('INSERT OR IGNORE INTO club_request_keys (club_id, rk, command, answer, at) VALUES (?, ?, ?, ?, ?)');
  server.transaction(() => {
    for (const a of answers.slice(0, MAX_ROW_ANSWERS)) {
      if (!RK.test(a.rk) || typeof a.command !== 'string' || a.command.length > 64 || !Buffer.isBuffer(a.answer) || a.answer.length > MAX_ROW_ANSWER_BYTES || !Number.isSafeInteger(a.at)) continue;
      insert.run(club, a.rk, a.command, a.answer, a.at);
    }
    prune(server, club, now);
  })();
}
