/**
 * Key rotation, crash-safe in steps: the master key (server.db and every club key wrapped under it),
 * one club's key (its store and documents re-encrypted), the recovery after a leaked master key, and
 * the resumption of a rotation a crash interrupted.
 */
import { existsSync, renameSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { createMasterKey, loadMasterKey, masterKeyFromBytes, type MasterKey } from '../../crypto/master-key.js';
import { clubPageKey, newDataKey, unwrapKey, wrapKey } from '../../crypto/wrap.js';
import { clubDbPath, clubDir, openClubStore, CLUB_DB_FILE } from '../club/club-store.js';
import { StorageError } from '../engine/errors.js';
import { ServerDb, serverDbKey, serverDbPath } from './server-db.js';
import { openEncrypted } from '../engine/sqlcipher.js';
import { opensWith, reencryptCopy, removeSqliteFiles, swapInSqliteFile } from '../engine/rekey.js';
import { rotateArchiveKey } from '../backup/archive-keys.js';
import { reencryptDocuments } from '../club/documents.js';
import { nextKeyPath, unwrapClubKey, type Storage } from './storage.js';
import { StepHooks, deleteClub } from './provisioning.js';

// ---- rotation -------------------------------------------------------------------------------

export interface RotateMasterOptions extends StepHooks {
  /** Passphrase for the new key file. Default: the current passphrase (if any). */
  newPassphrase?: string | Buffer;
  /** Current passphrase (needed to re-read a half-written next key file on resume). */
  passphrase?: string | Buffer;
  scryptLog2N?: number;
}

/**
 * `keys rotate-master`: a new master key; every club's data key is re-wrapped and the server
 * database re-encrypted; club stores and documents are not touched.
 *
 * Steps (each durable before the next; see docs/STORAGE.md):
 *  1. write keys/master.key.next (new key; a resumed run reuses it);
 *  2. build server.db.next: copy of server.db re-encrypted under the new key, every wrapped
 *     club key re-wrapped, in one transaction;
 *  3. rename server.db.next -> server.db   (commit point: from here the new key is the key);
 *  4. rename master.key.next -> master.key.
 * Killed before 3: server.db and master.key are the old ones, the daemon runs as before, and the
 * next run redoes 2 from the kept next key. Killed between 3 and 4: openStorage (and the next
 * run) sees that only master.key.next opens server.db and finishes step 4.
 */
export async function rotateMaster(st: Storage, o: RotateMasterOptions = {}): Promise<{ oldKeyId: string; newKeyId: string; clubs: number }> {
  const keyPath = st.keyFilePath;
  const nextPath = nextKeyPath(keyPath);
  const passOpts = (p: string | Buffer | undefined) => (p !== undefined ? { passphrase: p } : {});
  const newPass = o.newPassphrase ?? o.passphrase;
  if (st.master.passphraseProtected && newPass === undefined) {
    throw new StorageError('INVALID_ARGUMENT', 'the master key is passphrase-protected; give the passphrase (and optionally a new one) to rotate it');
  }
  let next: MasterKey;
  if (existsSync(nextPath)) {
    next = await loadMasterKey(nextPath, passOpts(newPass));
  } else {
    next = await createMasterKey(nextPath, { ...passOpts(newPass), ...(o.scryptLog2N !== undefined ? { scryptLog2N: o.scryptLog2N } : {}) });
  }
  o.onStep?.('next-key-written');
  const oldKeyId = st.master.id;
  const dbPath = serverDbPath(st.dataDir);
  const dbNext = dbPath + '.next';
  const oldDbKey = serverDbKey(st.master.key);
  const newDbKey = serverDbKey(next.key);
  let clubs = 0;
  try {
    const old = st.master;
    reencryptCopy(st.server.db, dbNext, oldDbKey, newDbKey, o, { copied: 'server-copied', rekeyed: 'server-rekeyed' }, (db) => {
      const rows = db.prepare('SELECT id, wrapped_key, key_version, pending_wrapped_key, pending_key_version FROM clubs').all() as Array<{
        id: string; wrapped_key: Buffer | null; key_version: number; pending_wrapped_key: Buffer | null; pending_key_version: number | null;
      }>;
      const upd = db.prepare('UPDATE clubs SET wrapped_key = ?, pending_wrapped_key = ? WHERE id = ?');
      for (const r of rows) {
        const rewrap = (w: Buffer | null, v: number | null): Buffer | null => {
          if (!w || v === null) return null;
          const k = unwrapClubKey(old, r.id, w, v);
          const out = wrapKey(next.key, k, { purpose: 'club-data-key', clubId: r.id, keyVersion: v });
          k.fill(0);
          return out;
        };
        upd.run(rewrap(r.wrapped_key, r.key_version), rewrap(r.pending_wrapped_key, r.pending_key_version), r.id);
        clubs++;
      }
      db.prepare(`INSERT INTO meta (k, v) VALUES ('masterRotated', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v`).run(new Date().toISOString());
    });
    o.onStep?.('keys-rewrapped');
    st.server.close();
    renameSync(dbNext, dbPath);
    fsyncDir(st.dataDir);
    o.onStep?.('server-swapped');
    renameSync(nextPath, keyPath);
    fsyncDir(dirname(keyPath));
    o.onStep?.('key-swapped');
    st.server = ServerDb.open(dbPath, next.key);
    st.master = masterKeyFromBytes(Buffer.from(next.key), keyPath, next.passphraseProtected);
    st.masterRotationPending = false;
    old.destroy();
  } catch (e) {
    // Before the commit point the old server db is still valid: reopen it so the daemon carries on.
    if (!st.server.db.open) {
      try {
        st.server = ServerDb.open(dbPath, st.master.key);
      } catch {
        st.server = ServerDb.open(dbPath, next.key);
      }
    }
    throw e;
  } finally {
    oldDbKey.fill(0);
    newDbKey.fill(0);
    next.destroy();
  }
  return { oldKeyId, newKeyId: st.master.id, clubs };
}

/**
 * `keys rotate-club ID`: a new data key for one club; its store is re-encrypted into a new file
 * and every document key re-wrapped, then the new file is swapped in atomically.
 *
 * Steps (see docs/STORAGE.md):
 *  1. the new key is stored wrapped as the club's *pending* key (server db);
 *  2. club.db leaves WAL, is copied with VACUUM INTO to club.db.rotating, the copy is re-keyed to
 *     the new key and its document keys re-wrapped (one transaction), back to WAL, fsync;
 *  3. rename club.db.rotating -> club.db   (commit point);
 *  4. the pending key becomes the current key; the old wrapped key is gone.
 * The store opens at every point: the cache tries the current, then the pending key. Resumed
 * after a kill: if the old key still opens club.db, step 2 is redone; otherwise only step 4.
 */
export async function rotateClub(st: Storage, id: string, hooks: StepHooks = {}): Promise<{ id: string; keyVersion: number; documents: number }> {
  const release = st.cache.lock(id);
  let documents = 0;
  try {
    let row = st.server.mustGetClub(id);
    if (row.status === 'deleting' || !row.wrappedKey) throw new StorageError('CLUB_DELETED', `club ${id} is being deleted`);
    if (!row.pendingWrappedKey) {
      const k = newDataKey();
      st.server.setPendingKey(id, wrapKey(st.master.key, k, { purpose: 'club-data-key', clubId: id, keyVersion: row.keyVersion + 1 }), row.keyVersion + 1);
      k.fill(0);
      row = st.server.mustGetClub(id);
    }
    hooks.onStep?.('pending-key-stored');
    const oldKey = unwrapClubKey(st.master, id, row.wrappedKey!, row.keyVersion);
    const newKey = unwrapClubKey(st.master, id, row.pendingWrappedKey!, row.pendingKeyVersion!);
    const oldPage = clubPageKey(oldKey);
    const newPage = clubPageKey(newKey);
    try {
      const path = clubDbPath(st.dataDir, id);
      const tmp = join(clubDir(st.dataDir, id), CLUB_DB_FILE + '.rotating');
      // A store still in the legacy layout (pages under the data key itself) is migrated first.
      if (row.storeState === 'created' && existsSync(path) && !opensWith(path, oldPage) && opensWith(path, oldKey)) {
        openClubStore({ dataDir: st.dataDir, clubId: id, keys: [{ key: oldKey, version: row.keyVersion }], create: false }).close();
      }
      if (row.storeState === 'created' && existsSync(path) && opensWith(path, oldPage)) {
        const src = openEncrypted(path, oldPage);
        try {
          reencryptCopy(src, tmp, oldPage, newPage, hooks, { copied: 'store-copied', rekeyed: 'store-rekeyed' }, (db) => {
            const docs = db.prepare('SELECT id, file, wrappedKey FROM documents').all() as Array<{ id: number; file: string; wrappedKey: Buffer }>;
            const upd = db.prepare('UPDATE documents SET wrappedKey = ? WHERE id = ?');
            for (const d of docs) {
              const ctx = { purpose: 'document-key' as const, clubId: id, docFile: d.file };
              const dk = unwrapKey(oldKey, d.wrappedKey, ctx);
              upd.run(wrapKey(newKey, dk, ctx), d.id);
              dk.fill(0);
              documents++;
            }
          });
        } finally {
          src.close();
        }
        hooks.onStep?.('documents-rewrapped');
        // club.db left WAL in reencryptCopy and is closed, so a -wal/-shm here is empty residue;
        // it must not survive next to the new file (SQLite would replay it onto the new file).
        swapInSqliteFile(tmp, path);
        hooks.onStep?.('store-swapped');
      } else if (row.storeState === 'created' && existsSync(path) && !opensWith(path, newPage)) {
        throw new StorageError('WRONG_DATA_KEY', `neither the current nor the pending data key opens ${path}; restore the store from a backup`);
      } else {
        removeSqliteFiles(tmp);
      }
      st.server.promotePendingKey(id);
      hooks.onStep?.('key-promoted');
      return { id, keyVersion: row.pendingKeyVersion!, documents };
    } finally {
      oldKey.fill(0);
      newKey.fill(0);
      oldPage.fill(0);
      newPage.fill(0);
    }
  } finally {
    release();
  }
}

export interface LeakRecoveryResult {
  clubs: Array<{ id: string; keyVersion: number; documents: number }>;
  archiveKey: { oldKeyId: string; newKeyId: string };
  master: { oldKeyId: string; newKeyId: string };
}

/**
 * `keys rotate-master --rekey-clubs`: the procedure for "the master key (or server.db with it)
 * leaked". Afterwards the old master key, the old club data keys and the old archive key open
 * nothing current:
 *  1. every club (not being deleted) gets a new data key: its store is re-encrypted (rotateClub)
 *     and every document re-encrypted under a new document key and file (reencryptDocuments),
 *     so an old club key unwraps no current document key and opens no current page;
 *  2. a new server archive key; the old one is kept for reading old archives only;
 *  3. a new master key, which re-encrypts server.db (rotateMaster).
 * Each step is resumable like the operation it reuses; running the command again after a kill
 * repeats whatever did not finish (a club rotated twice is merely rotated twice).
 */
export async function recoverFromMasterLeak(st: Storage, o: RotateMasterOptions & { now?: Date; wrapMaster?: <T>(fn: () => Promise<T>) => Promise<T> } = {}): Promise<LeakRecoveryResult> {
  const clubs: LeakRecoveryResult['clubs'] = [];
  for (const r of st.server.listClubs()) {
    if (r.status === 'deleting') continue;
    const rot = await rotateClub(st, r.id);
    const documents = r.storeState === 'created' ? await reencryptDocuments(st, r.id) : 0;
    clubs.push({ id: r.id, keyVersion: rot.keyVersion, documents });
  }
  const a = rotateArchiveKey(st, o.now);
  const doMaster = () => rotateMaster(st, o);
  const m = await (o.wrapMaster ? o.wrapMaster(doMaster) : doMaster());
  return { clubs, archiveKey: { oldKeyId: a.oldKeyId, newKeyId: a.newKeyId }, master: { oldKeyId: m.oldKeyId, newKeyId: m.newKeyId } };
}

/** Finish every interrupted rotation and deletion (daemon start, or `keys resume`). */
export async function resumeInterruptedRotations(st: Storage, o: RotateMasterOptions = {}): Promise<{ master: boolean; clubs: string[]; deleted: string[] }> {
  let master = false;
  if (st.masterRotationPending) {
    await rotateMaster(st, o);
    master = true;
  }
  const clubs: string[] = [];
  const deleted: string[] = [];
  for (const r of st.server.listClubs()) {
    if (r.status === 'deleting') {
      await deleteClub(st, r.id);
      deleted.push(r.id);
    } else if (r.pendingWrappedKey) {
      await rotateClub(st, r.id);
      clubs.push(r.id);
    }
  }
  return { master, clubs, deleted };
}
