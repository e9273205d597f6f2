/**
 * The schema a club store may hold, as this release makes it, for what other members send: a
 * changeset's shipped schema objects (cluster/capture.ts applyEntry) and a snapshot's image
 * (cluster/snapshot.ts). What a member sends is data; its SQL is only ever the text this
 * release would run itself, never text of the sender's choosing (db.exec runs every statement
 * of a string; a trigger or view in a snapshot runs later on this server's writes and reads).
 */
import { applyModelSchema, LEGACY_BOOKKEEPING } from '../storage/backup/restore-schema.js';
import { ensureRequestKeys } from '../storage/club/request-keys.js';
import { openDatabase, type Db } from '../storage/engine/sqlcipher.js';

/** One object of sqlite_master. */
export interface StoreObject {
  type: string;
  name: string;
  sql: string | null;
}

const cache = new Map<string, Map<string, string>>();

/**
 * The schema objects this release makes in a club store at schema `version` (the migrations up
 * to it, the tables made on first use: audit, users, request-key answers; the first release's
 * `request_keys` table a store may still hold), keyed `type:name` to their SQL text as SQLite
 * records it. `extra` adds what else runs on such a store (the capture objects, cluster/capture.ts
 * installCapture), keyed apart by `tag`.
 */
export function modelObjects(version: number, tag = '', extra?: (db: Db) => void): Map<string, string> {
  const k = `${version}:${tag}`;
  let m = cache.get(k);
  if (m) return m;
  const db = openDatabase(':memory:');
  try {
    applyModelSchema(db, version);
    ensureRequestKeys(db);
    db.exec(LEGACY_BOOKKEEPING);
    extra?.(db);
    const rows = db.prepare(`SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL`).all() as StoreObject[];
    m = new Map(rows.map((o) => [`${o.type}:${o.name}`, o.sql!]));
  } finally {
    db.close();
  }
  cache.set(k, m);
  return m;
}

/**
 * The first object of a store image that is not exactly one of `allowed` (type, name and SQL
 * text), or undefined when there is none. SQLite's own objects pass: sqlite_sequence, the
 * sqlite_stat tables and the automatic indexes (no SQL); any other name starting `sqlite_` does not.
 */
export function foreignObject(db: Db, allowed: ReadonlyMap<string, string>): StoreObject | undefined {
  for (const o of db.prepare('SELECT type, name, sql FROM sqlite_master').all() as StoreObject[]) {
    if (o.name.startsWith('sqlite_')) {
      if (o.type === 'table' && (o.name === 'sqlite_sequence' || o.name.startsWith('sqlite_stat'))) continue;
      if (o.type === 'index' && o.sql === null && o.name.startsWith('sqlite_autoindex_')) continue;
      return o;
    }
    if (allowed.get(`${o.type}:${o.name}`) !== o.sql) return o;
  }
  return undefined;
}
