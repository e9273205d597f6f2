/**
 * Stored answers of request keys (PROTOCOL.md "Request keys", issue 14): one row per key in the
 * club's own store, so the answer is replicated with the club and survives a takeover.
 *
 * `putAnswer` writes no transaction of its own: it is called inside the transaction (or write
 * group savepoint) that holds the command's changes, so the change and its answer commit together
 * or not at all (no window where a retry would find the change applied but no answer, and one
 * commit instead of two). The table is created on first use (cluster/capture.ts ships it to the
 * standbys as a table made on first use).
 */
import { decode, encode } from 'cborg';
import type { Db } from '../engine/sqlcipher.js';

/** Stored answers larger than this are not kept (the retry then runs the command again). */
export const MAX_STORED_ANSWER_BYTES = 64 * 1024;
/** Request keys are kept this long, and at most MAX_REQUEST_KEYS per club. */
export const REQUEST_KEY_TTL_MS = 24 * 3600 * 1000;
export const MAX_REQUEST_KEYS = 10_000;

/** Answer fields never stored with a request key (a retried answer comes without them). */
const SECRET_ANSWER_FIELDS = ['oneTimePassword'];

const ensured = new WeakSet<Db>();

/** Create the `request_keys` table if this store has none yet. */
export function ensureRequestKeys(db: Db): void {
  if (ensured.has(db)) return;
  db.exec(`CREATE TABLE IF NOT EXISTS request_keys (
    rk TEXT PRIMARY KEY CHECK (length(rk) BETWEEN 16 AND 64),
    command TEXT NOT NULL CHECK (length(command) <= 64),
    answer BLOB NOT NULL CHECK (length(answer) <= ${MAX_STORED_ANSWER_BYTES}),
    at INTEGER NOT NULL
  ) STRICT`);
  // Remembered only outside a transaction: one that rolls back takes the new table with it.
  if (!db.inTransaction) ensured.add(db);
}

/** What a lookup found: nothing, the stored answer, or a key used for another command or user. */
export type StoredAnswer = { kind: 'none' } | { kind: 'answer'; payload: unknown } | { kind: 'conflict' };

/**
 * The stored answer of `rk`, if any. A key is bound to the command and the user who used it
 * first: another command, another user (or a row from before the binding) is a conflict, never
 * the answer, which was made under that user's rights.
 */
export function lookupAnswer(db: Db, rk: string, command: string, userId: number | undefined): StoredAnswer {
  ensureRequestKeys(db);
  const row = db.prepare('SELECT command, answer FROM request_keys WHERE rk = ?').get(rk) as { command: string; answer: Buffer } | undefined;
  return row ? storedAnswerOf(row, command, userId) : { kind: 'none' };
}

/** A stored row read back for `command` by `userId`: the answer, or a conflict (lookupAnswer's rule). */
export function storedAnswerOf(row: { command: string; answer: Uint8Array }, command: string, userId: number | undefined): StoredAnswer {
  const stored = decode(row.answer) as { u?: unknown; p?: unknown } | null;
  if (row.command !== command || stored === null || typeof stored !== 'object' || stored.u !== (userId ?? null)) return { kind: 'conflict' };
  return { kind: 'answer', payload: stored.p };
}

/**
 * The bytes stored for an answer: the user's id and the payload less one-time passwords, CBOR.
 * Undefined when it cannot be encoded or is larger than `maxBytes`.
 */
export function encodeAnswer(userId: number | undefined, payload: unknown, maxBytes = MAX_STORED_ANSWER_BYTES): Buffer | undefined {
  let bytes: Uint8Array;
  try {
    const kept = payload !== null && typeof payload === 'object' && !Array.isArray(payload)
      ? Object.fromEntries(Object.entries(payload as Record<string, unknown>).filter(([k]) => !SECRET_ANSWER_FIELDS.includes(k)))
      : payload;
    bytes = encode({ u: userId ?? null, p: kept ?? null });
  } catch {
    return undefined;
  }
  return bytes.length > maxBytes ? undefined : Buffer.from(bytes);
}

/**
 * Store the answer of `rk` in the caller's transaction, and drop keys older than
 * REQUEST_KEY_TTL_MS or past MAX_REQUEST_KEYS. One-time passwords are left out of the stored
 * answer. Returns false (nothing written) when the answer cannot be encoded or is larger than
 * MAX_STORED_ANSWER_BYTES. A failing statement throws: the caller's transaction then fails with
 * it, change included.
 * @param now milliseconds since the epoch
 */
export function putAnswer(db: Db, rk: string, command: string, userId: number | undefined, payload: unknown, now: number): boolean {
  const bytes = encodeAnswer(userId, payload);
  if (!bytes) return false;
  ensureRequestKeys(db);
  db.prepare('INSERT OR REPLACE INTO request_keys (rk, command, answer, at) VALUES (?, ?, ?, ?)').run(rk, command, bytes, now);
  db.prepare('DELETE FROM request_keys WHERE at < ?').run(now - REQUEST_KEY_TTL_MS);
  const n = (db.prepare('SELECT count(*) AS n FROM request_keys').get() as { n: number }).n;
  if (n > MAX_REQUEST_KEYS) db.prepare('DELETE FROM request_keys WHERE rk IN (SELECT rk FROM request_keys ORDER BY at LIMIT ?)').run(n - MAX_REQUEST_KEYS);
  return true;
}
