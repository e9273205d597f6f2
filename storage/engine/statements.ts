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
