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
 * defaults to SQLITE_TEMP_STORE=1, i.e. temporary *files*). The memory this may take is bounded
 * process-wide by `hard_heap_limit` (SQLITE_HEAP_LIMIT_BYTES); a sort or temporary table that
 * would pass it fails with SQLITE_NOMEM, which `isOutOfMemory` recognises and callers turn into
 * a typed RESULT_TOO_LARGE error, never a spill to disk.
 */
import Database from 'better-sqlite3-multiple-ciphers';
import { StorageError } from './errors.js';

export type Db = Database.Database;

/**
 * Process-wide bound on the memory SQLite may allocate (page caches, in-memory images, and the
 * in-memory temporary storage that `temp_store=MEMORY` puts sorts and temporary tables in):
 * 1 GiB. Past it an allocation fails with SQLITE_NOMEM (sqlite3_hard_heap_limit64).
 */
export const SQLITE_HEAP_LIMIT_BYTES = 1024 * 1024 * 1024;
let heapLimit = SQLITE_HEAP_LIMIT_BYTES;

/** Change the process-wide SQLite heap bound (bytes, >= 16 MiB); applies to every connection at once. Tests lower it. */
export function setSqliteHeapLimit(bytes: number, db?: Db): void {
  if (!Number.isSafeInteger(bytes) || bytes < 1 << 24) throw new StorageError('INVALID_ARGUMENT', 'the SQLite heap limit is at least 16 MiB');
  heapLimit = bytes;
  if (db) db.pragma(`hard_heap_limit=${heapLimit}`);
}

/**
 * The one place a SQLite connection is made (file path or in-memory image). Sets, before any
 * statement: temp_store=MEMORY (no plaintext temporary files), trusted_schema=OFF (schema
 * objects such as views and triggers inside a file cannot call functions with side effects),
 * and the process-wide hard heap limit. Throws what better-sqlite3 throws.
 */
export function openDatabase(source: string | Buffer, opts: { fileMustExist?: boolean; readonly?: boolean } = {}): Db {
  const db = typeof source === 'string' ? new Database(source, { fileMustExist: opts.fileMustExist ?? false, readonly: opts.readonly ?? false }) : new Database(source);
  try {
    db.pragma('temp_store=MEMORY');
    db.pragma('trusted_schema=OFF');
    db.pragma(`hard_heap_limit=${heapLimit}`);
  } catch (e) {
    db.close();
    throw e;
  }
  return db;
}

/** True when `err` is SQLite running out of its bounded memory (SQLITE_NOMEM), e.g. a sort past the heap limit. */
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
