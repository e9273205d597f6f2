/**
 * Stored answers of request keys (PROTOCOL.md "Request keys", issue 14): one row per key in the
 * club's own store, so the answer is replicated with the club and survives a takeover.
 *
 * `putAnswer` writes no transaction of its own: it is called inside the transaction (or write
 * group savepoint) that holds the command's changes, so the change and its answer commit together
 * or not at all (no window where a retry would find the change applied but no answer, and one
 * commit instead of two). The table is created on first use (cluster/capture.ts ships it to the
 * standbys as a table made on first use).
 *
 * Each row names its user (`user_id`): a user's answers are bounded (MAX_REQUEST_KEYS_PER_USER,
 * MAX_ANSWER_BYTES_PER_USER; the user's oldest go first) and deleted with the user
 * (storage/club/users.ts deleteUser), so a new user who gets a deleted user's id (the `users`
 * table reuses the id of a deleted newest row) never finds that user's answers. The answer also
 * carries the fingerprint of the user's rights when it was made (`rights`): a lookup with other
 * rights finds it stale, and the command runs again under the rights in force (PROTOCOL.md
 * "Request keys"). The table of the first release (`request_keys`, rows without a user column)
 * is emptied at the first answer stored here.
 */
import { createHash, randomBytes } from 'node:crypto';
import { decode, encode } from 'cborg';
import type { Db } from '../engine/sqlcipher.js';

/** Stored answers larger than this are not kept (the retry then runs the command again). */
export const MAX_STORED_ANSWER_BYTES = 64 * 1024;
/** Request keys are kept this long, and at most MAX_REQUEST_KEYS per club. */
export const REQUEST_KEY_TTL_MS = 24 * 3600 * 1000;
export const MAX_REQUEST_KEYS = 10_000;
/** Stored answers kept per user of a club (the user's newest); an older one is dropped for a new one. */
export const MAX_REQUEST_KEYS_PER_USER = 200;
/** Bytes of stored answers kept per user of a club (the user's newest). */
export const MAX_ANSWER_BYTES_PER_USER = 2 * 1024 * 1024;

/** Answer fields never stored with a request key (a retried answer comes without them). */
const SECRET_ANSWER_FIELDS = ['oneTimePassword'];

const ensured = new WeakSet<Db>();
const noLegacy = new WeakSet<Db>();

/** Create the `request_answers` table (and its index) if this store has none yet. */
export function ensureRequestKeys(db: Db): void {
  if (ensured.has(db)) return;
  db.exec(`CREATE TABLE IF NOT EXISTS request_answers (
    rk TEXT PRIMARY KEY CHECK (length(rk) BETWEEN 16 AND 64),
    user_id INTEGER,
    command TEXT NOT NULL CHECK (length(command) <= 64),
    answer BLOB NOT NULL CHECK (length(answer) <= ${MAX_STORED_ANSWER_BYTES}),
    at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX IF NOT EXISTS request_answers_user ON request_answers (user_id, at)`);
  // Remembered only outside a transaction: one that rolls back takes the new table with it.
  if (!db.inTransaction) ensured.add(db);
}

/**
 * What a lookup found: nothing; the stored answer; a stored answer made under other rights
 * (`stale`: the command runs again); or a key used for another command or user.
 */
export type StoredAnswer = { kind: 'none' } | { kind: 'answer'; payload: unknown } | { kind: 'stale' } | { kind: 'conflict' };

/**
 * What a stored answer is bound to: the user who sent the request (undefined: none), the
 * fingerprint of that user's rights the command ran under (daemon/club/session.ts
 * rightsFingerprint) and the fingerprint of the request's payload (requestFingerprint).
 */
export interface AnswerBinding {
  userId: number | undefined;
  rights: string;
  request: string;
}

/** A stored answer's row as read back (this table's or server.db's `club_request_keys`). */
export interface AnswerRow {
  command: string;
  answer: Uint8Array;
  /** When it was stored (milliseconds since the epoch); older than REQUEST_KEY_TTL_MS: never replayed. */
  at: number;
}

/** The stored row of `rk`, if any; storedAnswerOf tells what it is for a request. */
export function answerRow(db: Db, rk: string): AnswerRow | undefined {
  ensureRequestKeys(db);
  return db.prepare('SELECT command, answer, at FROM request_answers WHERE rk = ?').get(rk) as AnswerRow | undefined;
}

/**
 * A stored row read back for `command` and binding `b` (the user, their rights fingerprint now,
 * this request's payload fingerprint). A key is bound to the command and the user who used it
 * first: another command or another user (or a row from before the user binding) is a conflict,
 * never the answer, which was made under that user's rights. An answer made for another payload
 * (the same key with other fields, a `club` field among them) or under other rights than the
 * user's now (or stored without those fingerprints) is `stale`: the command runs again, and its
 * handler checks what it checks.
 */
export function storedAnswerOf(row: AnswerRow, command: string, b: AnswerBinding): StoredAnswer {
  const stored = decode(row.answer) as { u?: unknown; p?: unknown; r?: unknown; q?: unknown } | null;
  if (row.command !== command || stored === null || typeof stored !== 'object' || stored.u !== (b.userId ?? null)) return { kind: 'conflict' };
  if (typeof stored.r !== 'string' || stored.r !== b.rights || stored.q !== b.request) return { kind: 'stale' };
  return { kind: 'answer', payload: stored.p };
}

/**
 * The fingerprint of a request's payload (its schema-checked fields, without `rk`): SHA-256 of
 * its CBOR (cborg sorts map keys), 22 characters of base64url. A payload that cannot be encoded
 * gets a random value, which no stored answer matches.
 */
export function requestFingerprint(payload: unknown): string {
  let bytes: Uint8Array;
  try {
    bytes = encode(payload ?? null);
  } catch {
    bytes = randomBytes(32);
  }
  return createHash('sha256').update(bytes).digest('base64url').slice(0, 22);
}

/**
 * The bytes stored for an answer: its binding (user id, rights fingerprint, request fingerprint)
 * and the payload less one-time passwords, CBOR. Undefined when it cannot be encoded or is larger
 * than `maxBytes`.
 */
export function encodeAnswer(b: AnswerBinding, payload: unknown, maxBytes = MAX_STORED_ANSWER_BYTES): Buffer | undefined {
  let bytes: Uint8Array;
  try {
    const kept = payload !== null && typeof payload === 'object' && !Array.isArray(payload)
      ? Object.fromEntries(Object.entries(payload as Record<string, unknown>).filter(([k]) => !SECRET_ANSWER_FIELDS.includes(k)))
      : payload;
    bytes = encode({ u: b.userId ?? null, r: b.rights, q: b.request, p: kept ?? null });
  } catch {
    return undefined;
  }
  return bytes.length > maxBytes ? undefined : Buffer.from(bytes);
}

/** Delete every stored answer of user `userId`, in the caller's transaction (the user's deletion). */
export function deleteAnswersOf(db: Db, userId: number): void {
  ensureRequestKeys(db);
  db.prepare('DELETE FROM request_answers WHERE user_id = ?').run(userId);
}

/**
 * Empty the first release's table (answers bound to no user column), in the caller's
 * transaction. Checked at every store while that table exists (a rolled-back emptying is done
 * again); a store without it is remembered (no code makes it any more).
 */
function emptyLegacyTable(db: Db): void {
  if (noLegacy.has(db)) return;
  if (db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'request_keys'`).get()) db.prepare('DELETE FROM request_keys').run();
  else noLegacy.add(db);
}

/**
 * Store the answer of `rk` in the caller's transaction, and drop keys older than
 * REQUEST_KEY_TTL_MS, the user's oldest past MAX_REQUEST_KEYS_PER_USER or
 * MAX_ANSWER_BYTES_PER_USER, and the club's oldest past MAX_REQUEST_KEYS. One-time passwords are
 * left out of the stored answer. Returns false (nothing written) when the answer cannot be
 * encoded or is larger than MAX_STORED_ANSWER_BYTES. A failing statement throws: the caller's
 * transaction then fails with it, change included.
 * @param b whose answer it is: the user, their rights fingerprint, the request's fingerprint
 * @param now milliseconds since the epoch
 */
export function putAnswer(db: Db, rk: string, command: string, b: AnswerBinding, payload: unknown, now: number): boolean {
  const bytes = encodeAnswer(b, payload);
  if (!bytes) return false;
  ensureRequestKeys(db);
  emptyLegacyTable(db);
  const user = b.userId ?? null;
  db.prepare('INSERT OR REPLACE INTO request_answers (rk, user_id, command, answer, at) VALUES (?, ?, ?, ?, ?)').run(rk, user, command, bytes, now);
  db.prepare('DELETE FROM request_answers WHERE at < ?').run(now - REQUEST_KEY_TTL_MS);
  // The user's newest answers that fit both per-user bounds stay (the one just stored always fits).
  const mine = db.prepare('SELECT rk, length(answer) AS size FROM request_answers WHERE user_id IS ? ORDER BY at DESC, rk = ? DESC, rowid DESC').all(user, rk) as Array<{ rk: string; size: number }>;
  let bytesKept = 0;
  const drop = db.prepare('DELETE FROM request_answers WHERE rk = ?');
  mine.forEach((r, i) => {
    bytesKept += r.size;
    if (i >= MAX_REQUEST_KEYS_PER_USER || (i > 0 && bytesKept > MAX_ANSWER_BYTES_PER_USER)) drop.run(r.rk);
  });
  const n = (db.prepare('SELECT count(*) AS n FROM request_answers').get() as { n: number }).n;
  if (n > MAX_REQUEST_KEYS) db.prepare('DELETE FROM request_answers WHERE rk IN (SELECT rk FROM request_answers ORDER BY at LIMIT ?)').run(n - MAX_REQUEST_KEYS);
  return true;
}
