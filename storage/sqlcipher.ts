/**
 * Opening SQLite files page-encrypted with SQLite3MultipleCiphers' `sqlcipher` scheme
 * (AES-256-CBC pages with HMAC-SHA512, SQLCipher 4 layout: `legacy=4`). The 32-byte key is
 * given raw (`x'..'`), so no PBKDF2 runs on open: the keys are already random 256-bit keys.
 *
 * Every connection: WAL, synchronous=FULL (a write is durable when the call returns),
 * foreign_keys=ON, a busy timeout. The key is checked before anything is written: a wrong key
 * fails on the first read of page 1 with SQLITE_NOTADB and leaves the file untouched.
 */
import Database from 'better-sqlite3-multiple-ciphers';
import { StorageError } from './errors.js';

export type Db = Database.Database;

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
    db = new Database(path, { fileMustExist: !opts.create, readonly: opts.readonly ?? false });
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
