/**
 * Restoring rows, never SQL: an archive's store image is read as data only. Its schema must be
 * exactly the schema this server's own migrations produce for the image's schema version (same
 * objects, same SQL text); the target store gets its schema from those migrations, and only the
 * rows are copied across, through prepared INSERTs into STRICT tables whose types and CHECK
 * constraints validate every value, followed by a foreign-key check. An image carrying any other
 * table, index, trigger or view, or changed SQL (e.g. an appended `ATTACH DATABASE ...`), is
 * refused with SCHEMA_MISMATCH (issue 10, docs/BACKUPS.md "Restore").
 */
import { ensureAuditTables } from '../club/audit-log.js';
import { BackupError } from './backup-errors.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../club/schema.js';
import { migrate, openDatabase, type Db } from '../engine/sqlcipher.js';
import { ensureUserTables } from '../club/users.js';

interface SchemaObject {
  type: string;
  name: string;
  tbl_name: string;
  sql: string | null;
}

/**
 * Objects an archive made by an earlier release may hold that are not club data: the first
 * release's table of stored request-key answers (`request_keys`, made on first use on cluster
 * members; archives made since leave such tables out, storage/backup/archive-writer.ts). Tolerated
 * only with exactly this SQL, and their rows are never copied: a retry's stored answer is
 * bookkeeping for one day, not something to restore. Anything else outside the model is refused.
 */
export const LEGACY_BOOKKEEPING = `CREATE TABLE request_keys (
    rk TEXT PRIMARY KEY CHECK (length(rk) BETWEEN 16 AND 64),
    command TEXT NOT NULL CHECK (length(command) <= 64),
    answer BLOB NOT NULL CHECK (length(answer) <= 65536),
    at INTEGER NOT NULL
  ) STRICT;`;

let legacyCache: Map<string, SchemaObject> | undefined;

/** The legacy bookkeeping objects as SQLite records them, keyed by type:name (autoindexes included). */
function legacyObjects(): Map<string, SchemaObject> {
  if (legacyCache) return legacyCache;
  const db = openDatabase(':memory:');
  try {
    db.exec(LEGACY_BOOKKEEPING);
    legacyCache = new Map(schemaObjects(db).map((o) => [`${o.type}:${o.name}`, o]));
  } finally {
    db.close();
  }
  return legacyCache;
}

/** Tables the code creates on first use outside the numbered migrations (each call idempotent). */
const LAZY_SCHEMA: ReadonlyArray<(db: Db) => void> = [ensureAuditTables, ensureUserTables];

function migrationsUpTo(version: number): typeof MIGRATIONS {
  return MIGRATIONS.filter((m) => m.version <= version);
}

/** Bring a fresh database to the schema of `version` (migrations up to it, then the lazily created tables). */
export function applyModelSchema(db: Db, version: number): void {
  migrate(db, migrationsUpTo(version), 'restore target');
  for (const f of LAZY_SCHEMA) f(db);
}

const refCache = new Map<number, Map<string, SchemaObject>>();

function schemaObjects(db: Db): SchemaObject[] {
  return db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").all() as SchemaObject[];
}

/** The schema our migrations produce for `version`, keyed by type:name. */
function referenceSchema(version: number): Map<string, SchemaObject> {
  let ref = refCache.get(version);
  if (ref) return ref;
  const db = openDatabase(':memory:');
  try {
    applyModelSchema(db, version);
    ref = new Map(schemaObjects(db).map((o) => [`${o.type}:${o.name}`, o]));
  } finally {
    db.close();
  }
  refCache.set(version, ref);
  return ref;
}

/**
 * Check an image's schema against the model. Returns the image's schema version and its tables
 * (the legacy bookkeeping tables above left out, so their rows are not copied).
 * Throws BackupError SCHEMA_MISMATCH naming the first object that differs, or SCHEMA_TOO_NEW.
 */
export function checkImageSchema(img: Db): { version: number; tables: string[] } {
  const version = img.pragma('user_version', { simple: true }) as number;
  if (!Number.isSafeInteger(version) || version < 1) throw new BackupError('SCHEMA_MISMATCH', `store image has schema version ${version}; not a club store`);
  if (version > SCHEMA_VERSION) throw new BackupError('SCHEMA_MISMATCH', `store image has schema version ${version}, this server knows up to ${SCHEMA_VERSION}; upgrade the server before restoring it`);
  const ref = referenceSchema(version);
  const tables: string[] = [];
  for (const o of schemaObjects(img)) {
    const legacy = legacyObjects().get(`${o.type}:${o.name}`);
    if (legacy && !ref.has(`${o.type}:${o.name}`) && legacy.sql === o.sql && legacy.tbl_name === o.tbl_name) continue;
    const want = ref.get(`${o.type}:${o.name}`);
    if (!want || want.sql !== o.sql || want.tbl_name !== o.tbl_name) {
      throw new BackupError('SCHEMA_MISMATCH', `store image holds ${o.type} ${JSON.stringify(o.name.slice(0, 80))} ${want ? 'with SQL that differs from' : 'which is not part of'} this server's schema version ${version}; an archive supplies rows only, so it is refused`);
    }
    if (o.type === 'table') tables.push(o.name);
  }
  for (const seq of img.prepare("SELECT name FROM sqlite_master WHERE name LIKE 'sqlite_%' AND type = 'table'").all() as Array<{ name: string }>) {
    if (seq.name !== 'sqlite_sequence' && !seq.name.startsWith('sqlite_stat')) throw new BackupError('SCHEMA_MISMATCH', `store image holds an unexpected internal table ${seq.name}`);
  }
  return { version, tables };
}

function quote(ident: string): string {
  return '"' + ident.replace(/"/g, '""') + '"';
}

/**
 * Copy the rows of `tables` (already checked by checkImageSchema) from the image into `dst`,
 * whose schema applyModelSchema made at the image's version. Column names come from the
 * target's schema. `skip` names tables whose rows come from elsewhere (the live change log).
 * Then the rest of the migrations run, and the foreign keys are checked.
 */
export function copyImageRows(img: Db, dst: Db, tables: readonly string[], skip: ReadonlySet<string> = new Set()): void {
  dst.pragma('foreign_keys=OFF');
  dst.transaction(() => {
    for (const t of tables) {
      if (skip.has(t)) continue;
      const cols = (dst.pragma(`table_info(${quote(t)})`) as Array<{ name: string }>).map((c) => quote(c.name));
      if (!cols.length) throw new BackupError('SCHEMA_MISMATCH', `table ${t} of the image is not in the target schema`);
      const sel = img.prepare(`SELECT ${cols.join(', ')} FROM main.${quote(t)} ORDER BY rowid`).raw(true).safeIntegers(true);
      const ins = dst.prepare(`INSERT INTO main.${quote(t)} (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`);
      try {
        for (const row of sel.iterate() as IterableIterator<unknown[]>) ins.run(...row);
      } catch (e) {
        if (e instanceof BackupError) throw e;
        throw new BackupError('SCHEMA_MISMATCH', `a row of table ${t} in the archive does not fit this server's model: ${(e as Error).message}`);
      }
    }
    const hasSeq = img.prepare("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").get();
    const dstSeq = dst.prepare("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").get();
    if (hasSeq && dstSeq) {
      const ins = dst.prepare('INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)');
      for (const r of img.prepare('SELECT name, seq FROM sqlite_sequence').raw(true).safeIntegers(true).iterate() as IterableIterator<[string, bigint]>) {
        if (tables.includes(r[0]) && !skip.has(r[0])) ins.run(r[0], r[1]);
      }
    }
  })();
  migrate(dst, MIGRATIONS, 'restored store');
  dst.pragma('foreign_keys=ON');
  const bad = dst.pragma('foreign_key_check') as unknown[];
  if (bad.length) throw new BackupError('SCHEMA_MISMATCH', `the archive's rows break ${bad.length} foreign key reference(s); refused`);
}
