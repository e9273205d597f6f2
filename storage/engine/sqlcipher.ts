/**
 * Opening SQLite files page-encrypted with SQLite3MultipleCiphers' `sqlcipher` scheme
 * (AES-256-CBC pages with HMAC-SHA512, SQLCipher 4 layout: `legacy=4`). The 32-byte key is
 * given raw (`x'..'`), so no PBKDF2 runs on open: the keys are already random 256-bit keys.
 *
 * Every connection: WAL, synchronous=FULL (a write is durable when the call returns),
 * foreign_keys=ON, a busy timeout. The key is checked before anything is written: a wrong key
 * fails on the first read of page 1 with SQLITE_NOTADB and leaves the file untouched.
 *
 * Every connection this server opens (club stores, server.db, bans.db, in-memory archive images,
 * restore and rotation copies) goes through `openDatabase` here, which sets
 * `temp_store=MEMORY`: the engine's temporary tables, sort spill files, statement journals and
 * VACUUM work stay in memory and never reach an unencrypted `etilqs_*` file (the SQLite build
 * defaults to SQLITE_TEMP_STORE=1, i.e. temporary *files*). With temporary storage in memory
 * the sorter never flushes to a file, so the memory a sort takes is the size of what it sorts.
 * That is bounded by the queries, not by SQLite: every query our code runs on club data has a
 * LIMIT of at most MAX_EXPORT_ROWS (100,000) rows over fields with model length limits
 * (docs/STORAGE.md "Temporary storage"). SQLite's own heap limits (hard_heap_limit) are not
 * used: this build has SQLITE_DEFAULT_MEMSTATUS=0, under which they are not enforced. When an
 * allocation fails anyway, SQLite answers SQLITE_NOMEM, `isOutOfMemory` recognises it, and the
 * command layer answers TOO_LARGE; nothing is spilled to disk.
 */
import Database from 'better-sqlite3-multiple-ciphers';
import { StorageError } from './errors.js';

export type Db = Database.Database;

/**
 * The one place a SQLite connection is made (file path or in-memory image). Sets, before any
 * statement: temp_store=MEMORY (no plaintext temporary files) and trusted_schema=OFF (schema
 * objects such as views and triggers inside a file cannot call functions with side effects).
 * Throws what better-sqlite3 throws.
 */
export function openDatabase(source: string | Buffer, opts: { fileMustExist?: boolean; readonly?: boolean } = {}): Db {
  const db = typeof source === 'string' ? new Database(source, { fileMustExist: opts.fileMustExist ?? false, readonly: opts.readonly ?? false }) : new Database(source);
  try {
    db.pragma('temp_store=MEMORY');
    db.pragma('trusted_schema=OFF');
  } catch (e) {
    db.close();
    throw e;
  }
  return db;
}

/** True when `err` is SQLite failing to allocate memory (SQLITE_NOMEM), e.g. a sort larger than the process can hold. */
export function isOutOfMemory(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === 'SQLITE_NOMEM' || /out of memory/i.test(String((err as Error | null)?.message ?? ''));
}

export interface OpenOptions {
  /** Create the file when missing (default false). */
  create?: boolean;
  readonly?: boolean;
  /** Journal mode to set (default WAL). Rotation uses DELETE on copies it rekeys; 'keep' leaves it. */
  journalMode?: 'WAL' | 'DELETE' | 'keep';
}

export function keyPragma(key: Buffer): string {
  if (key.length !== 32) throw new StorageError('INVALID_ARGUMENT', 'database keys are 32 bytes');
  return `key="x'${key.toString('hex')}'"`;
}

/** Apply cipher settings and key to a fresh connection (before any read). */
export function applyCipher(db: Db, key: Buffer): void {
  db.pragma("cipher='sqlcipher'");
  db.pragma('legacy=4');
  db.pragma(keyPragma(key));
}

/** True when `err` is SQLite saying the bytes are not a database under this key. */
export function isNotADb(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'SQLITE_NOTADB' || /file is not a database/i.test(String((err as Error).message));
}

/**
 * Open an encrypted database. Throws WRONG_DATA_KEY when the key does not open it,
 * STORE_NOT_FOUND when it is missing and `create` is false.
 */
export function openEncrypted(path: string, key: Buffer, opts: OpenOptions = {}): Db {
  let db: Db;
  try {
    db = openDatabase(path, { fileMustExist: !opts.create, readonly: opts.readonly ?? false });
  } catch (e) {
    if ((e as { code?: string }).code === 'SQLITE_CANTOPEN') throw new StorageError('STORE_NOT_FOUND', `database ${path} does not exist`, { cause: e });
    throw e;
  }
  try {
    applyCipher(db, key);
    db.prepare('SELECT count(*) FROM sqlite_master').get();
  } catch (e) {
    db.close();
    if (isNotADb(e)) throw new StorageError('WRONG_DATA_KEY', `the key does not open ${path} (wrong key, or the file is damaged)`, { cause: e });
    throw e;
  }
  try {
    if (!opts.readonly) {
      if (opts.journalMode !== 'keep') db.pragma(`journal_mode=${opts.journalMode ?? 'WAL'}`);
      db.pragma('synchronous=FULL');
    }
    db.pragma('foreign_keys=ON');
    db.pragma('busy_timeout=5000');
  } catch (e) {
    db.close();
    throw e;
  }
  return db;
}

/** Run numbered migrations in order, each in its own transaction together with user_version. */
export function migrate(db: Db, migrations: ReadonlyArray<{ version: number; statements: readonly string[] }>, what: string): { from: number; to: number } {
  const from = db.pragma('user_version', { simple: true }) as number;
  const top = migrations.length ? migrations[migrations.length - 1]!.version : 0;
  if (from > top) {
    throw new StorageError('SCHEMA_TOO_NEW', `${what} has schema version ${from}, this server knows up to ${top}; upgrade the server before opening it`);
  }
  for (const m of migrations) {
    if (m.version <= from) continue;
    db.transaction(() => {
      for (const s of m.statements) db.exec(s);
      db.pragma(`user_version=${m.version}`);
    })();
  }
  return { from, to: Math.max(from, top) };
}
