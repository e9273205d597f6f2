/**
 * Changeset capture for a club store (issue 14, "No acknowledged write lost").
 *
 * The SQLite inside better-sqlite3-multiple-ciphers 12.x has neither the session extension nor
 * the pre-update hook, so changes are captured by triggers: every table of the club store gets
 * AFTER INSERT/UPDATE/DELETE triggers that write (table, rowid) into `_cluster_capture`, inside the
 * same transaction as the change and therefore in the same encrypted file, durable together.
 *
 * `drainCapture` turns the captured rows into a logical changeset: for each touched row, the row
 * as it is now (an upsert with every column) or its deletion. Reading the current image instead of
 * logging the values inside the trigger keeps the triggers independent of the columns (a schema
 * migration adding a column needs no new trigger) and coalesces several changes of one row in one
 * transaction. The caller drains right after a transaction, in the same synchronous run (no other
 * write to the store can come between: better-sqlite3 is synchronous), appends the changeset to
 * the club's log, and only after the append acknowledges the captured rows (`ackCapture`). Rows
 * still in the table after a crash mean the store is ahead of the log: it must be rebuilt from
 * the log or a snapshot before it serves again (`pendingCapture`).
 *
 * `applyChangeset` is the standby side: deletes first, then upserts, foreign keys deferred to the
 * commit, the capture rows the apply itself causes removed, and the applied log position stored in
 * `_cluster_state`, all in one transaction, so a replica is always at a whole entry.
 *
 * Capture sequence numbers never repeat (AUTOINCREMENT): acknowledged rows are deleted, and a
 * reused number would hide a later change from a drain that resumes after it.
 *
 * Tables created later (a migration, a table made on first use) are picked up when the schema
 * version changes: triggers are added and the new table's rows go out in full once. A replica
 * creates a shipped schema object only when it is exactly (type, name, SQL text) one this release
 * makes itself (cluster/store-schema.ts `modelObjects`): a changeset never runs SQL of a member's choosing.
 */
import { decode, encode } from 'cborg';
import { SCHEMA_VERSION } from '../storage/club/schema.js';
import type { Db } from '../storage/engine/sqlcipher.js';
import { modelObjects } from './store-schema.js';
import { ClusterError } from './errors.js';

export const CAPTURE_TABLE = '_cluster_capture';
export const STATE_TABLE = '_cluster_state';
const CHANGESET_VERSION = 1;

/** One row change: a deletion, or the full row after the change. */
export type RowOp = { op: 'd'; table: string; rowid: number } | { op: 'u'; table: string; rowid: number; columns: string[]; values: unknown[] };

/** A schema object made on first use (not by a migration), shipped so the replica has it too. */
export interface SchemaObject {
  type: 'table' | 'index' | 'trigger';
  name: string;
  sql: string;
}

export interface Changeset {
  /** Store schema version (PRAGMA user_version) the rows were captured under. */
  schema: number;
  /** Tables (with their indexes and triggers) created since the last changeset. */
  ddl?: SchemaObject[];
  ops: RowOp[];
}

const DDL = /^CREATE (TABLE|INDEX|UNIQUE INDEX|TRIGGER) /;

function schemaObjectsOf(db: Db, table: string): SchemaObject[] {
  const rows = db
    .prepare(`SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL AND name NOT LIKE '\\_cluster\\_%' ESCAPE '\\' ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, name`)
    .all(table) as SchemaObject[];
  return rows.filter((r) => DDL.test(r.sql));
}

const q = (ident: string) => '"' + ident.replace(/"/g, '""') + '"';
const IDENT = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

/** User tables of a store (not SQLite's own, not ours). */
function userTables(db: Db): string[] {
  const rows = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cluster\\_%' ESCAPE '\\' ORDER BY name`).all() as Array<{ name: string }>;
  return rows.map((r) => r.name).filter((n) => IDENT.test(n));
}

function triggerNames(table: string): string[] {
  return ['i', 'u', 'd'].map((k) => `_cluster_cap_${table}_${k}`);
}

const schemaSeen = new WeakMap<Db, number>();

/**
 * Create the capture and state tables and the triggers on every table that lacks them.
 * Returns the tables that got triggers now (their rows are not in any earlier changeset).
 */
export function installCapture(db: Db): string[] {
  db.exec(`CREATE TABLE IF NOT EXISTS ${CAPTURE_TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, rid INTEGER NOT NULL) STRICT`);
  db.exec(`CREATE TABLE IF NOT EXISTS ${STATE_TABLE} (k TEXT PRIMARY KEY, v TEXT NOT NULL) STRICT`);
  const have = new Set((db.prepare(`SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_cluster\\_cap\\_%' ESCAPE '\\'`).all() as Array<{ name: string }>).map((r) => r.name));
  const added: string[] = [];
  for (const t of userTables(db)) {
    const [ti, tu, td] = triggerNames(t) as [string, string, string];
    if (have.has(ti) && have.has(tu) && have.has(td)) continue;
    const lit = `'${t}'`;
    db.exec(`CREATE TRIGGER IF NOT EXISTS ${q(ti)} AFTER INSERT ON ${q(t)} BEGIN INSERT INTO ${CAPTURE_TABLE}(tbl, rid) VALUES (${lit}, NEW.rowid); END`);
    db.exec(`CREATE TRIGGER IF NOT EXISTS ${q(tu)} AFTER UPDATE ON ${q(t)} BEGIN INSERT INTO ${CAPTURE_TABLE}(tbl, rid) VALUES (${lit}, OLD.rowid); INSERT INTO ${CAPTURE_TABLE}(tbl, rid) SELECT ${lit}, NEW.rowid WHERE NEW.rowid IS NOT OLD.rowid; END`);
    db.exec(`CREATE TRIGGER IF NOT EXISTS ${q(td)} AFTER DELETE ON ${q(t)} BEGIN INSERT INTO ${CAPTURE_TABLE}(tbl, rid) VALUES (${lit}, OLD.rowid); END`);
    added.push(t);
  }
  schemaSeen.set(db, db.pragma('schema_version', { simple: true }) as number);
  return added;
}

const GUARD_TRIGGER = '_cluster_guard';
/** Message of the SQLite error a refused write raises (isNotServedWrite recognises it). */
export const NOT_SERVED_MESSAGE = 'this club is not served by this server (it moved while the command waited); the write was refused';
const guarded = new WeakSet<Db>();
const applying = new WeakSet<Db>();

/**
 * Refuse every local write to a club store that is not the club's serving primary here (fail
 * closed): a command that passed the ownership gate and then waited (a password hash, an upload,
 * a grouped write) while the club moved away must not leave rows in what is now a replica.
 * A TEMP trigger on this connection (never stored in the file, so tools opening the store
 * without the cluster are unaffected) runs before each insert into the capture table, which
 * every change of a user table makes through its capture trigger; when `mayWrite()` is false
 * and no log entry is being applied (`applyEntry`), its function throws ClusterError NOT_OWNER
 * (NOT_SERVED_MESSAGE), SQLite aborts the statement and the caller's transaction (or write-group
 * savepoint) fails with that error (not a constraint error: handlers pass it on unchanged). Installed once per connection; needs the capture table (installCapture).
 */
export function guardWrites(db: Db, mayWrite: () => boolean): void {
  if (guarded.has(db)) return;
  if (!db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(CAPTURE_TABLE)) return;
  db.function('cluster_guard', { deterministic: false, varargs: false }, () => {
    if (applying.has(db) || mayWrite()) return 1;
    throw new ClusterError('NOT_OWNER', NOT_SERVED_MESSAGE);
  });
  db.exec(`CREATE TEMP TRIGGER IF NOT EXISTS ${GUARD_TRIGGER} BEFORE INSERT ON main.${CAPTURE_TABLE} BEGIN SELECT cluster_guard(); END`);
  guarded.add(db);
}

/** Whether `e` is the error of a write guardWrites refused. */
export function isNotServedWrite(e: unknown): boolean {
  return e instanceof ClusterError && e.message === NOT_SERVED_MESSAGE;
}

/** Captured rows not yet acknowledged (after a crash: the store is ahead of the log). */
export function pendingCapture(db: Db): number {
  return (db.prepare(`SELECT count(*) AS n FROM ${CAPTURE_TABLE}`).get() as { n: number }).n;
}

function rowImage(db: Db, table: string, rowid: number): RowOp {
  const row = db.prepare(`SELECT * FROM ${q(table)} WHERE rowid = ?`).get(rowid) as Record<string, unknown> | undefined;
  if (!row) return { op: 'd', table, rowid };
  const columns = Object.keys(row);
  return { op: 'u', table, rowid, columns, values: columns.map((c) => row[c]) };
}

/**
 * The changeset of everything captured after capture seq `after` (0: everything), or undefined
 * when nothing was. `upto` is the last capture seq included: pass it to `ackCapture` once the
 * changeset is in the log, and as `after` to the next drain.
 */
export function drainCapture(db: Db, after = 0): { changeset: Changeset; upto: number } | undefined {
  const newTables = schemaSeen.get(db) === (db.pragma('schema_version', { simple: true }) as number) ? [] : installCapture(db);
  const rows = db.prepare(`SELECT seq, tbl, rid FROM ${CAPTURE_TABLE} WHERE seq > ? ORDER BY seq`).all(after) as Array<{ seq: number; tbl: string; rid: number }>;
  if (rows.length === 0 && newTables.length === 0) return undefined;
  const seen = new Set<string>();
  const ops: RowOp[] = [];
  let upto = after;
  for (const r of rows) {
    upto = r.seq;
    const k = `${r.tbl}\u0000${r.rid}`;
    if (seen.has(k)) continue;
    seen.add(k);
    ops.push(rowImage(db, r.tbl, r.rid));
  }
  for (const t of newTables) {
    for (const { rowid } of db.prepare(`SELECT rowid AS rowid FROM ${q(t)}`).all() as Array<{ rowid: number }>) {
      const k = `${t}\u0000${rowid}`;
      if (!seen.has(k)) {
        seen.add(k);
        ops.push(rowImage(db, t, rowid));
      }
    }
  }
  // The schema objects of every table this connection ships rows of for the first time go along
  // (applied only where missing). Tying them to "tables whose triggers this drain installed" lost
  // them whenever another caller of installCapture (a snapshot served, a role change) saw a table
  // made on first use before the drain did: replicas then refused every later entry naming it.
  const shipped = ddlShipped.get(db) ?? new Set<string>();
  ddlShipped.set(db, shipped);
  const fresh = [...new Set([...newTables, ...ops.map((o) => o.table)])].filter((t) => !shipped.has(t));
  const ddl = fresh.flatMap((t) => schemaObjectsOf(db, t));
  for (const t of fresh) shipped.add(t);
  return { changeset: { schema: db.pragma('user_version', { simple: true }) as number, ...(ddl.length ? { ddl } : {}), ops }, upto };
}

/** Per connection, the tables whose schema objects a changeset has carried (drainCapture). */
const ddlShipped = new WeakMap<Db, Set<string>>();

/** Forget captured rows up to `upto` (they are in the log). */
export function ackCapture(db: Db, upto: number): void {
  db.prepare(`DELETE FROM ${CAPTURE_TABLE} WHERE seq <= ?`).run(upto);
}

export function encodeChangeset(c: Changeset): Uint8Array {
  return encode({ v: CHANGESET_VERSION, schema: c.schema, ddl: (c.ddl ?? []).map((d) => [d.type, d.name, d.sql]), ops: c.ops.map((o) => (o.op === 'd' ? ['d', o.table, o.rowid] : ['u', o.table, o.rowid, o.columns, o.values])) });
}

/** @throws ClusterError LOG_CORRUPT on a malformed changeset. */
export function decodeChangeset(bytes: Uint8Array): Changeset {
  let v: { v?: unknown; schema?: unknown; ddl?: unknown; ops?: unknown };
  try {
    v = decode(bytes) as typeof v;
  } catch (e) {
    throw new ClusterError('LOG_CORRUPT', 'changeset is not CBOR', { cause: e });
  }
  if (v.v !== CHANGESET_VERSION || !Number.isSafeInteger(v.schema) || !Array.isArray(v.ops)) throw new ClusterError('LOG_CORRUPT', 'changeset has an invalid shape');
  const ddl: SchemaObject[] = [];
  for (const d of Array.isArray(v.ddl) ? (v.ddl as unknown[]) : []) {
    if (!Array.isArray(d) || !['table', 'index', 'trigger'].includes(d[0]) || typeof d[1] !== 'string' || !IDENT.test(d[1]) || typeof d[2] !== 'string' || !DDL.test(d[2]) || d[2].length > 8192) {
      throw new ClusterError('LOG_CORRUPT', 'changeset schema object has an invalid shape');
    }
    ddl.push({ type: d[0] as SchemaObject['type'], name: d[1], sql: d[2] });
  }
  const ops: RowOp[] = [];
  for (const o of v.ops as unknown[]) {
    if (!Array.isArray(o) || typeof o[1] !== 'string' || !IDENT.test(o[1]) || !Number.isSafeInteger(o[2])) throw new ClusterError('LOG_CORRUPT', 'changeset row has an invalid shape');
    if (o[0] === 'd' && o.length === 3) ops.push({ op: 'd', table: o[1], rowid: o[2] as number });
    else if (o[0] === 'u' && o.length === 5 && Array.isArray(o[3]) && Array.isArray(o[4]) && o[3].length === o[4].length && o[3].every((c: unknown) => typeof c === 'string' && IDENT.test(c))) {
      ops.push({ op: 'u', table: o[1], rowid: o[2] as number, columns: o[3] as string[], values: o[4] as unknown[] });
    } else throw new ClusterError('LOG_CORRUPT', 'changeset row has an invalid shape');
  }
  return { schema: v.schema as number, ...(ddl.length ? { ddl } : {}), ops };
}

/** Where a replica stands in its club's log. */
export interface ReplicaPosition {
  seq: number;
  digest: string;
}

export function readPosition(db: Db): ReplicaPosition {
  const rows = db.prepare(`SELECT k, v FROM ${STATE_TABLE} WHERE k IN ('seq', 'digest')`).all() as Array<{ k: string; v: string }>;
  const m = new Map(rows.map((r) => [r.k, r.v]));
  return { seq: Number(m.get('seq') ?? 0), digest: m.get('digest') ?? '' };
}

/**
 * Apply the changesets of one log entry to a replica and record its position, in one transaction.
 * An entry at or below the replica's position is skipped (idempotent).
 * @throws ClusterError LOG_CORRUPT when a changeset names an unknown table or column or was
 *   captured under a newer schema than the replica's (upgrade standbys first).
 */
export function applyEntry(db: Db, entry: { seq: number; digest: string; items: Uint8Array[] }): boolean {
  const pos = readPosition(db);
  if (entry.seq <= pos.seq) return false;
  const schema = db.pragma('user_version', { simple: true }) as number;
  const tables = new Map<string, Set<string>>();
  const columnsOf = (t: string): Set<string> => {
    let c = tables.get(t);
    if (!c) {
      c = new Set((db.prepare(`SELECT name FROM pragma_table_info(?)`).all(t) as Array<{ name: string }>).map((r) => r.name));
      if (c.size === 0 || t.startsWith('_cluster_')) throw new ClusterError('LOG_CORRUPT', `changeset names unknown table ${t}`);
      tables.set(t, c);
    }
    return c;
  };
  const changesets = entry.items.map(decodeChangeset);
  applying.add(db);
  try {
    applyInTransaction(db, entry, changesets, schema, columnsOf);
  } finally {
    applying.delete(db);
  }
  return true;
}

function applyInTransaction(db: Db, entry: { seq: number; digest: string }, changesets: Changeset[], schema: number, columnsOf: (t: string) => Set<string>): void {
  db.transaction(() => {
    db.pragma('defer_foreign_keys=ON');
    const before = (db.prepare(`SELECT coalesce(max(seq), 0) AS m FROM ${CAPTURE_TABLE}`).get() as { m: number }).m;
    for (const cs of changesets) {
      if (cs.schema > schema) throw new ClusterError('LOG_CORRUPT', `changeset of schema ${cs.schema} reached a replica at schema ${schema}: upgrade the standbys first`);
      for (const d of cs.ddl ?? []) {
        const exists = db.prepare(`SELECT 1 FROM sqlite_master WHERE name = ?`).get(d.name);
        if (exists) continue;
        // Only this release's own objects, exact text: db.exec would run any statement appended.
        if (modelObjects(SCHEMA_VERSION).get(`${d.type}:${d.name}`) !== d.sql) throw new ClusterError('LOG_CORRUPT', `changeset ships ${d.type} ${d.name}, which is not part of this server's club schema`);
        db.exec(d.sql);
      }
      if (cs.ddl?.length) installCapture(db);
      for (const o of cs.ops) {
        if (o.op !== 'd') continue;
        columnsOf(o.table);
        db.prepare(`DELETE FROM ${q(o.table)} WHERE rowid = ?`).run(o.rowid);
      }
      for (const o of cs.ops) {
        if (o.op !== 'u') continue;
        const cols = columnsOf(o.table);
        for (const c of o.columns) if (!cols.has(c)) throw new ClusterError('LOG_CORRUPT', `changeset names unknown column ${o.table}.${c}`);
        const existing = db.prepare(`SELECT * FROM ${q(o.table)} WHERE rowid = ?`).get(o.rowid) as Record<string, unknown> | undefined;
        const values = o.values.map((v) => (v instanceof Uint8Array && !Buffer.isBuffer(v) ? Buffer.from(v.buffer, v.byteOffset, v.byteLength) : v));
        if (!existing) {
          db.prepare(`INSERT INTO ${q(o.table)} (rowid, ${o.columns.map(q).join(', ')}) VALUES (?, ${o.columns.map(() => '?').join(', ')})`).run(o.rowid, ...values);
          continue;
        }
        const changed = o.columns.filter((c, i) => !sameValue(existing[c], values[i]));
        if (changed.length === 0) continue;
        db.prepare(`UPDATE ${q(o.table)} SET ${changed.map((c) => `${q(c)} = ?`).join(', ')} WHERE rowid = ?`).run(...changed.map((c) => values[o.columns.indexOf(c)]), o.rowid);
      }
    }
    db.prepare(`DELETE FROM ${CAPTURE_TABLE} WHERE seq > ?`).run(before);
    const put = db.prepare(`INSERT INTO ${STATE_TABLE}(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`);
    put.run('seq', String(entry.seq));
    put.run('digest', entry.digest);
  })();
}

function sameValue(a: unknown, b: unknown): boolean {
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return a.equals(b);
  return a === b;
}

/**
 * The whole store as changesets (schema objects first, then every row), each encoded below
 * `maxBytes`: what a new primary writes as the first entries of an empty log, so that a standby
 * starting from sequence 1 builds the same store. Also acknowledges everything captured so far.
 */
export function fullImage(db: Db, maxBytes: number): Uint8Array[] {
  installCapture(db);
  const schema = db.pragma('user_version', { simple: true }) as number;
  const tablesNow = userTables(db);
  const ddl = tablesNow.flatMap((t) => schemaObjectsOf(db, t));
  const out: Uint8Array[] = [];
  let ops: RowOp[] = [];
  let bytes = 0;
  let first = true;
  const flush = () => {
    out.push(encodeChangeset({ schema, ...(first && ddl.length ? { ddl } : {}), ops }));
    first = false;
    ops = [];
    bytes = 0;
  };
  bytes = encodeChangeset({ schema, ddl, ops: [] }).length;
  for (const t of tablesNow) {
    for (const { rowid } of db.prepare(`SELECT rowid AS rowid FROM ${q(t)} ORDER BY rowid`).all() as Array<{ rowid: number }>) {
      const op = rowImage(db, t, rowid);
      const size = encodeChangeset({ schema, ops: [op] }).length;
      if (size + 64 > maxBytes) throw new ClusterError('ENTRY_TOO_LARGE', `a row of ${t} does not fit in one log entry`);
      if (ops.length > 0 && bytes + size > maxBytes) flush();
      ops.push(op);
      bytes += size;
    }
  }
  if (ops.length > 0 || first) flush();
  const max = (db.prepare(`SELECT coalesce(max(seq), 0) AS m FROM ${CAPTURE_TABLE}`).get() as { m: number }).m;
  ackCapture(db, max);
  return out;
}

/** Record a store's position in its club's log (the primary does so when it hands the club over). */
export function writePosition(db: Db, pos: ReplicaPosition): void {
  const put = db.prepare(`INSERT INTO ${STATE_TABLE}(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`);
  db.transaction(() => {
    put.run('seq', String(pos.seq));
    put.run('digest', pos.digest);
  })();
}
