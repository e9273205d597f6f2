/**
 * Re-encrypting a SQLite file under another page key, crash-safely: a re-keyed copy is built
 * beside the file and swapped in with rename() by the caller. Used by key rotation
 * (storage/server/key-rotation.ts) and by the migration of stores to per-purpose sub-keys
 * (storage/club/club-store.ts).
 */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { StorageError } from './errors.js';
import { keyPragma, openEncrypted, type Db } from './sqlcipher.js';

/** Remove a database file and its -wal, -shm, -journal companions (missing ones are fine). */
export function removeSqliteFiles(path: string): void {
  for (const suffix of ['', '-wal', '-shm', '-journal']) {
    try {
      unlinkSync(path + suffix);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

/**
 * Swap a finished re-keyed copy `tmp` in as `path`. The old file's -wal/-shm are removed first:
 * they belong to the old page key, and SQLite would replay a -wal onto the new file. The rename is
 * made durable by an fsync of the folder. Errors: the fs error of the failing step.
 */
export function swapInSqliteFile(tmp: string, path: string): void {
  for (const suffix of ['-wal', '-shm']) {
    try {
      unlinkSync(path + suffix);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

/** fsync a file's content by path (fsync applies to the file, whichever descriptor asks). */
export function fsyncFile(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function sqlPath(p: string): string {
  return "'" + p.replace(/'/g, "''") + "'";
}

/** Does `key` open the encrypted database at `path`? (A wrong key writes nothing.) */
export function opensWith(path: string, key: Buffer): boolean {
  try {
    openEncrypted(path, key, { journalMode: 'keep' }).close();
    return true;
  } catch (e) {
    if (e instanceof StorageError && e.code === 'WRONG_DATA_KEY') return false;
    throw e;
  }
}

/**
 * Copy the database open on `src` into `dst` and re-encrypt the copy under `newKey`:
 * `src` leaves WAL (journal_mode=DELETE checkpoints and removes its WAL, so the file alone is the
 * whole database), `VACUUM INTO` writes a compact copy under the old key, and `PRAGMA rekey`
 * re-encrypts the copy, which is in rollback-journal mode, where SQLite3MultipleCiphers 2.3.5
 * supports rekey. `edit` runs in one transaction on the re-keyed copy. The copy is switched
 * back to WAL and fsynced; the caller swaps it in with rename().
 */
export function reencryptCopy(src: Db, dst: string, oldKey: Buffer, newKey: Buffer, hooks: { onStep?: (step: string) => void }, steps: { copied: string; rekeyed: string }, edit: (db: Db) => void): void {
  removeSqliteFiles(dst);
  src.pragma('journal_mode=DELETE');
  src.exec(`VACUUM INTO ${sqlPath(dst)}`);
  hooks.onStep?.(steps.copied);
  const copy = openEncrypted(dst, oldKey, { journalMode: 'DELETE' });
  try {
    copy.pragma(keyPragma(newKey).replace(/^key=/, 'rekey='));
    hooks.onStep?.(steps.rekeyed);
    copy.transaction(() => edit(copy))();
    copy.pragma('journal_mode=WAL');
  } finally {
    copy.close();
  }
  fsyncFile(dst);
  if (!opensWith(dst, newKey)) throw new StorageError('STORE_CORRUPT', `re-encrypted copy ${dst} does not open with the new key; nothing was swapped`);
}

