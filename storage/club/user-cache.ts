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
 * Both are read by two prepared statements per lookup (no I/O: the WAL index is shared memory),
 * together cheaper than the join and the JSON parse of the user row they replace. A reopened store (eviction, restore,
 * key rotation) is a new Db and starts empty. The cached records are shared: callers must not
 * change them.
 *
 * Inside an open transaction of the connection the cache is neither read nor filled: the row is
 * read as that transaction sees it. `total_changes()` counts a write that is later rolled back,
 * and a rollback does not undo the count; a row read after such a write and kept would outlive
 * the rollback (a user disabled or made administrator by a change that never committed) until
 * the next write. No caller looks a user up inside a transaction today (the session checks run
 * before a command's transaction and between the chunks of a stream); this keeps it so.
 */
import type { Db } from '../engine/sqlcipher.js';
import { getUserById, type UserRecord } from './users.js';

/** Most users held per store; past it the cache starts over (a club has a few hundred users at most). */
export const MAX_CACHED_USERS = 4096;

interface UserCache {
  dataVersion: number;
  changes: number;
  readonly byId: Map<number, UserRecord | null>;
}

const caches = new WeakMap<Db, UserCache>();

interface PluckStatement {
  pluck(on: boolean): PluckStatement;
  get(...args: unknown[]): unknown;
}

/**
 * The two version statements of a connection, prepared once. Two plucked statements measured
 * 2.4 us together here against 3.6-4.4 us for one `SELECT ... FROM pragma_data_version` (a
 * virtual table) and 5.6-8.1 us for reading the user row (a microbenchmark on the 2-core machine,
 * docs/BENCHMARKS.md, issue 13 section).
 */
const statements = new WeakMap<Db, { dataVersion: PluckStatement; changes: PluckStatement }>();

function versionStatements(db: Db): { dataVersion: PluckStatement; changes: PluckStatement } {
  let s = statements.get(db);
  if (!s) {
    s = {
      dataVersion: (db.prepare('PRAGMA data_version') as unknown as PluckStatement).pluck(true),
      changes: (db.prepare('SELECT total_changes()') as unknown as PluckStatement).pluck(true),
    };
    statements.set(db, s);
  }
  return s;
}

/**
 * The user `id` of this store as committed now (undefined: no such user), from memory unless a
 * commit since the last lookup may have changed it (see the invalidation rule above).
 */
export function currentUser(db: Db, id: number): UserRecord | undefined {
  if (db.inTransaction) return getUserById(db, id);
  const v = versionStatements(db);
  const dataVersion = v.dataVersion.get() as number;
  const changes = v.changes.get() as number;
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
