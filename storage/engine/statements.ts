import type { Database } from 'better-sqlite3-multiple-ciphers';

/**
 * Prepared statements cached per database handle: preparing costs more than running a point
 * query, and the request path runs the same few statements over and over. The cache dies with
 * the handle (WeakMap) and is bounded, because some SQL is built from filters.
 */
export interface Statement {
  get(...args: unknown[]): unknown;
  all(...args: unknown[]): unknown[];
  run(...args: unknown[]): { changes: number; lastInsertRowid: number | bigint };
  iterate(...args: unknown[]): IterableIterator<unknown>;
}

const MAX_CACHED_PER_DB = 2000;
const caches = new WeakMap<object, Map<string, Statement>>();

export function cachedStatement(db: Pick<Database, 'prepare'>, sql: string): Statement {
  let m = caches.get(db);
  if (!m) caches.set(db, (m = new Map()));
  let s = m.get(sql);
  if (!s) {
    if (m.size >= MAX_CACHED_PER_DB) m.clear();
    m.set(sql, (s = db.prepare(sql) as unknown as Statement));
  }
  return s;
}

/**
 * A prepared statement in raw mode (rows as arrays) with its column names: building the row
 * object in JavaScript from the array costs about half of what better-sqlite3's own object
 * rows cost (one native property set per column). Cached like cachedStatement, separately (raw
 * mode is a property of the statement).
 */
export interface RawStatement {
  readonly statement: { get(...args: unknown[]): unknown[] | undefined };
  readonly columns: readonly string[];
}

const rawCaches = new WeakMap<object, Map<string, RawStatement>>();

export function cachedRawStatement(db: Pick<Database, 'prepare'>, sql: string): RawStatement {
  let m = rawCaches.get(db);
  if (!m) rawCaches.set(db, (m = new Map()));
  let s = m.get(sql);
  if (!s) {
    if (m.size >= MAX_CACHED_PER_DB) m.clear();
    const st = db.prepare(sql).raw(true);
    s = { statement: st as unknown as RawStatement['statement'], columns: st.columns().map((c) => c.name) };
    m.set(sql, s);
  }
  return s;
}
