/**
 * Re-encrypting a SQLite file under another page key, crash-safely: a re-keyed copy is built
 * beside the file and swapped in with rename() by the caller. Used by key rotation on a worker
 * thread (storage/server/rekey-job.ts, run by storage/backup/snapshot-pool.ts) and by the
 * migration of stores to per-purpose sub-keys (storage/club/club-store.ts).
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
 * Step 1 of a re-encryption copy: `src` leaves WAL (journal_mode=DELETE checkpoints and removes
 * its WAL, so the file alone is the whole database) and `VACUUM INTO` writes a compact copy to
 * `dst`, still under the old key (a leftover `dst` of an interrupted run is removed first).
 */
export function copyOut(src: Db, dst: string): void {
  removeSqliteFiles(dst);
  src.pragma('journal_mode=DELETE');
  src.exec(`VACUUM INTO ${sqlPath(dst)}`);
}

/**
 * Step 2: open the copy under `oldKey` in rollback-journal mode, where SQLite3MultipleCiphers
 * 2.3.5 supports `PRAGMA rekey`, and re-key it to `newKey`. Returns the open copy.
 */
export function rekeyCopy(dst: string, oldKey: Buffer, newKey: Buffer): Db {
  const copy = openEncrypted(dst, oldKey, { journalMode: 'DELETE' });
  try {
    copy.pragma(keyPragma(newKey).replace(/^key=/, 'rekey='));
  } catch (e) {
    copy.close();
    throw e;
  }
  return copy;
}

/**
 * Step 3: `edit` in one transaction on the re-keyed copy, back to WAL, close, fsync, and check
 * that `newKey` opens the file (STORE_CORRUPT otherwise; nothing is swapped then). Closes `copy`.
 */
export function finishCopy(copy: Db, dst: string, newKey: Buffer, edit: (db: Db) => void): void {
  try {
    copy.transaction(() => edit(copy))();
    copy.pragma('journal_mode=WAL');
  } finally {
    copy.close();
  }
  fsyncFile(dst);
  if (!opensWith(dst, newKey)) throw new StorageError('STORE_CORRUPT', `re-encrypted copy ${dst} does not open with the new key; nothing was swapped`);
}

/**
 * Copy the database open on `src` into `dst` and re-encrypt the copy under `newKey`, on the
 * calling thread: copyOut, rekeyCopy, finishCopy with `edit`, the step hooks in between. The
 * caller swaps the copy in with rename(). Used where the work cannot wait for a worker (the
 * legacy-layout migration inside a synchronous store open); key rotation runs the same steps on
 * a worker thread (storage/server/rekey-job.ts).
 */
export function reencryptCopy(src: Db, dst: string, oldKey: Buffer, newKey: Buffer, hooks: { onStep?: (step: string) => void }, steps: { copied: string; rekeyed: string }, edit: (db: Db) => void): void {
  copyOut(src, dst);
  hooks.onStep?.(steps.copied);
  const copy = rekeyCopy(dst, oldKey, newKey);
  try {
    hooks.onStep?.(steps.rekeyed);
  } catch (e) {
    copy.close();
    throw e;
  }
  finishCopy(copy, dst, newKey, edit);
}
