/**
 * Users of a club and their rights, in the club's store. The `users` table is declared in
 * storage/club/model.ts; a user's rights (a JSON list of grants, validated by daemon/club/rights.ts, since
 * storage does not know the rights vocabulary) live in `user_grants`, together with two
 * counters a live session compares on every request:
 *  - `rightsVersion`: bumped when the grants change;
 *  - `credVersion`: bumped on password reset/change and disable, so other sessions end at once.
 * `user_grants` is created on first use (idempotent), next to the derived schema.
 *
 * Every mutating function here is synchronous and runs inside the caller's transaction, which
 * also appends the change-log entry.
 */
import { parseLegacySha512, wrapLegacySha512 } from '../../crypto/legacy-password.js';
import type { Db } from '../engine/sqlcipher.js';
import { StorageError } from '../engine/errors.js';
import { cachedStatement } from '../engine/statements.js';
import { deleteAnswersOf } from './request-keys.js';

export interface UserRecord {
  id: number;
  username: string;
  displayName: string | null;
  personId: number | null;
  passwordHash: string;
  mustChangePassword: boolean;
  isAdmin: boolean;
  disabled: boolean;
  lastLogin: string | null;
  createdAt: string;
  role: string | null;
  /** Raw grants JSON as stored (null: none stored; administrators get all rights by isAdmin). */
  grants: unknown;
  rightsVersion: number;
  credVersion: number;
}

/** Public view: never the hash. */
export type UserView = Omit<UserRecord, 'passwordHash' | 'grants' | 'rightsVersion' | 'credVersion'>;

export function ensureUserTables(db: Db): void {
  db.exec(`CREATE TABLE IF NOT EXISTS user_grants (
    userId INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    role TEXT CHECK (role IS NULL OR length(role) <= 40),
    grants TEXT NOT NULL DEFAULT '[]' CHECK (length(grants) <= 200000),
    rightsVersion INTEGER NOT NULL DEFAULT 1,
    credVersion INTEGER NOT NULL DEFAULT 1
  ) STRICT`);
}

const SELECT = `SELECT u.id, u.username, u.displayName, u.personId, u.passwordHash, u.mustChangePassword, u.isAdmin, u.disabled, u.lastLogin, u.createdAt,
  g.role, g.grants, coalesce(g.rightsVersion, 0) AS rightsVersion, coalesce(g.credVersion, 0) AS credVersion
  FROM users u LEFT JOIN user_grants g ON g.userId = u.id`;

interface Raw {
  id: number;
  username: string;
  displayName: string | null;
  personId: number | null;
  passwordHash: string;
  mustChangePassword: number;
  isAdmin: number;
  disabled: number;
  lastLogin: string | null;
  createdAt: string;
  role: string | null;
  grants: string | null;
  rightsVersion: number;
  credVersion: number;
}

function fromRaw(r: Raw): UserRecord {
  let grants: unknown = null;
  if (r.grants !== null) {
    try {
      grants = JSON.parse(r.grants);
    } catch {
      grants = [];
    }
  }
  return {
    id: r.id,
    username: r.username,
    displayName: r.displayName,
    personId: r.personId,
    passwordHash: r.passwordHash,
    mustChangePassword: r.mustChangePassword === 1,
    isAdmin: r.isAdmin === 1,
    disabled: r.disabled === 1,
    lastLogin: r.lastLogin,
    createdAt: r.createdAt,
    role: r.role,
    grants,
    rightsVersion: r.rightsVersion,
    credVersion: r.credVersion,
  };
}

export function userView(u: UserRecord): UserView {
  const { passwordHash: _h, grants: _g, rightsVersion: _r, credVersion: _c, ...v } = u;
  return v;
}

const stmt = cachedStatement;

export function getUserByName(db: Db, username: string): UserRecord | undefined {
  ensureUserTablesOnce(db);
  const r = stmt(db, `${SELECT} WHERE u.username = ?`).get(username) as Raw | undefined;
  return r && fromRaw(r);
}

export function getUserById(db: Db, id: number): UserRecord | undefined {
  ensureUserTablesOnce(db);
  const r = stmt(db, `${SELECT} WHERE u.id = ?`).get(id) as Raw | undefined;
  return r && fromRaw(r);
}

export function listUsers(db: Db): UserRecord[] {
  ensureUserTablesOnce(db);
  return (stmt(db, `${SELECT} ORDER BY u.username`).all() as Raw[]).map(fromRaw);
}

const ensured = new WeakSet<Db>();
/**
 * ensureUserTables once per connection. Remembered only outside a transaction: a table created
 * inside one that rolls back is gone again, and a memory of it would make every later query of
 * this connection fail with "no such table" (tests/audit-sign-rollback.test.ts).
 */
export function ensureUserTablesOnce(db: Db): void {
  if (ensured.has(db)) return;
  ensureUserTables(db);
  if (!db.inTransaction) ensured.add(db);
}

export interface NewUser {
  username: string;
  displayName?: string | null;
  personId?: number | null;
  passwordHash: string;
  mustChangePassword: boolean;
  isAdmin?: boolean;
  role?: string | null;
  grants: unknown;
}

export function insertUser(db: Db, u: NewUser): number {
  ensureUserTablesOnce(db);
  if (getUserByName(db, u.username)) throw new StorageError('CLUB_EXISTS', `user ${u.username} exists`);
  const r = stmt(db, 'INSERT INTO users (username, displayName, personId, passwordHash, mustChangePassword, isAdmin, disabled) VALUES (?, ?, ?, ?, ?, ?, 0) RETURNING id').get(
    u.username,
    u.displayName ?? null,
    u.personId ?? null,
    u.passwordHash,
    u.mustChangePassword ? 1 : 0,
    u.isAdmin ? 1 : 0,
  ) as { id: number };
  stmt(db, 'INSERT INTO user_grants (userId, role, grants) VALUES (?, ?, ?)').run(r.id, u.role ?? null, JSON.stringify(u.grants ?? []));
  return r.id;
}

function ensureGrantRow(db: Db, id: number): void {
  stmt(db, 'INSERT INTO user_grants (userId) VALUES (?) ON CONFLICT (userId) DO NOTHING').run(id);
}

export function updateUserProfile(db: Db, id: number, patch: { displayName?: string | null; personId?: number | null }): void {
  if (patch.displayName !== undefined) stmt(db, `UPDATE users SET displayName = ?, updatedAt = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?`).run(patch.displayName, id);
  if (patch.personId !== undefined) {
    stmt(db, `UPDATE users SET personId = ?, updatedAt = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?`).run(patch.personId, id);
    bumpRights(db, id);
  }
}

export function setGrants(db: Db, id: number, role: string | null, grants: unknown, isAdmin?: boolean): void {
  ensureUserTablesOnce(db);
  ensureGrantRow(db, id);
  stmt(db, 'UPDATE user_grants SET role = ?, grants = ?, rightsVersion = rightsVersion + 1 WHERE userId = ?').run(role, JSON.stringify(grants), id);
  if (isAdmin !== undefined) stmt(db, 'UPDATE users SET isAdmin = ? WHERE id = ?').run(isAdmin ? 1 : 0, id);
}

function bumpRights(db: Db, id: number): void {
  ensureGrantRow(db, id);
  stmt(db, 'UPDATE user_grants SET rightsVersion = rightsVersion + 1 WHERE userId = ?').run(id);
}

/** New hash; `endSessions` bumps credVersion so every other live session of the user ends. */
export function setPasswordHash(db: Db, id: number, hash: string, mustChange: boolean, endSessions: boolean): void {
  ensureUserTablesOnce(db);
  stmt(db, `UPDATE users SET passwordHash = ?, mustChangePassword = ?, updatedAt = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?`).run(hash, mustChange ? 1 : 0, id);
  if (endSessions) {
    ensureGrantRow(db, id);
    stmt(db, 'UPDATE user_grants SET credVersion = credVersion + 1 WHERE userId = ?').run(id);
  }
}

export function setDisabled(db: Db, id: number, disabled: boolean): void {
  ensureUserTablesOnce(db);
  stmt(db, `UPDATE users SET disabled = ?, updatedAt = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?`).run(disabled ? 1 : 0, id);
  ensureGrantRow(db, id);
  stmt(db, 'UPDATE user_grants SET credVersion = credVersion + 1 WHERE userId = ?').run(id);
}

export function setLastLogin(db: Db, id: number, time: string): void {
  stmt(db, 'UPDATE users SET lastLogin = ? WHERE id = ?').run(time, id);
}

/**
 * Delete user `id`, their grants and their stored request-key answers (a later user may get the
 * same id: the table reuses the id of a deleted newest row), in the caller's transaction.
 */
export function deleteUser(db: Db, id: number): void {
  ensureUserTablesOnce(db);
  deleteAnswersOf(db, id);
  stmt(db, 'DELETE FROM user_grants WHERE userId = ?').run(id);
  stmt(db, 'DELETE FROM users WHERE id = ?').run(id);
}

/** Enabled administrators (the last one may not be disabled, demoted or deleted). */
export function countActiveAdmins(db: Db): number {
  return (stmt(db, 'SELECT count(*) AS n FROM users WHERE isAdmin = 1 AND disabled = 0').get() as { n: number }).n;
}

/**
 * Stores written before legacy imports were wrapped may hold bare `sha512$` hashes (fast to crack,
 * and copied into every archive). Wrap each in scrypt (crypto/legacy-password.ts), so the next
 * login verifies in two layers. Runs in the background after a store opens (Storage.openClub);
 * `db()` is called again after every await (the store may have been closed and reopened) and a row
 * is only replaced if it still holds the same bare hash. Returns how many hashes were wrapped.
 */
export async function wrapBareLegacyHashes(db: () => Db, log2N?: number): Promise<number> {
  const rows = db().prepare(`SELECT id, passwordHash FROM users WHERE passwordHash LIKE 'sha512$%'`).all() as Array<{ id: number; passwordHash: string }>;
  let n = 0;
  for (const r of rows) {
    const norm = parseLegacySha512(r.passwordHash);
    if (!norm) continue;
    const wrapped = await wrapLegacySha512(norm, log2N);
    n += db().prepare('UPDATE users SET passwordHash = ? WHERE id = ? AND passwordHash = ?').run(wrapped, r.id, r.passwordHash).changes;
  }
  return n;
}
