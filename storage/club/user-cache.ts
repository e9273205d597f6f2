/**
 * The users of a club store held in memory for the request path (issue 13): a request asks
 * "is this user still enabled, with this password generation, and which rights" without reading
 * the user's row again, and the answer is still that of the database as committed.
 *
 * Invalidation rule: the cache of one connection (Db) is dropped as a whole when
 *  - `PRAGMA data_version` of that connection changed: another connection committed to the file
 *    (another process, e.g. `commusicctl` offline, or a second handle in this process;
 *    https://sqlite.org/pragma.html#pragma_data_version), or
 *  - `total_changes()` of that connection changed: this connection wrote something (any table,
 *    foreign-key actions included: https://sqlite.org/c3ref/total_changes.html), e.g. a user or
 *    rights change made by a command of this daemon.
 * Both are read by one prepared statement per lookup: one SQLite step without I/O, cheaper than
 * the join and the JSON parse of the user row it replaces. A reopened store (eviction, restore,
 * key rotation) is a new Db and starts empty. The cached records are shared: callers must not
 * change them.
 */
import type { Db } from '../engine/sqlcipher.js';
import { getUserById, type UserRecord } from './users.js';

/** Most users held per store; past it the cache starts over (a club has a few hundred users at most). */
export const MAX_CACHED_USERS = 4096;

const VERSION_SQL = 'SELECT data_version, total_changes() FROM pragma_data_version';

interface UserCache {
  dataVersion: number;
  changes: number;
  readonly byId: Map<number, UserRecord | null>;
}

const caches = new WeakMap<Db, UserCache>();

interface RawStatement {
  raw(on: boolean): RawStatement;
  get(...args: unknown[]): unknown;
}

const rawStatements = new WeakMap<Db, RawStatement>();

/** The [data_version, total_changes()] of this connection now. */
function versions(db: Db): [number, number] {
  let s = rawStatements.get(db);
  if (!s) {
    s = (db.prepare(VERSION_SQL) as unknown as RawStatement).raw(true);
    rawStatements.set(db, s);
  }
  return s.get() as [number, number];
}

/**
 * The user `id` of this store as committed now (undefined: no such user), from memory unless a
 * commit since the last lookup may have changed it (see the invalidation rule above).
 */
export function currentUser(db: Db, id: number): UserRecord | undefined {
  const [dataVersion, changes] = versions(db);
  let c = caches.get(db);
  if (!c) {
    c = { dataVersion, changes, byId: new Map() };
    caches.set(db, c);
  } else if (c.dataVersion !== dataVersion || c.changes !== changes) {
    c.dataVersion = dataVersion;
    c.changes = changes;
    c.byId.clear();
  }
  const hit = c.byId.get(id);
  if (hit !== undefined) return hit ?? undefined;
  const u = getUserById(db, id);
  if (c.byId.size >= MAX_CACHED_USERS) c.byId.clear();
  c.byId.set(id, u ?? null);
  return u;
}
