/**
 * Key rotation, crash-safe in steps: the master key (server.db and every club key wrapped under it),
 * one club's key (its store and documents re-encrypted), the recovery after a leaked master key, and
 * the resumption of a rotation a crash interrupted.
 *
 * The re-encryption copy of a file (VACUUM INTO, rekey, the edit, fsync, the check that the new
 * key opens it) runs on a storage worker thread with its own connections (rekey-job.ts, through
 * the daemon's SnapshotPool `workers`; without one, a pool of one worker for the call), so the
 * event loop keeps serving other clubs and handshakes meanwhile. What keeps writers off the file
 * being copied: a club is locked in the store cache (its store closed, every open refused with
 * STORE_BUSY) from before the copy until after the swap; server.db refuses writes on its
 * connection (PRAGMA query_only) from before the copy until the swap (holdServerWrites).
 * One rotation runs at a time per storage (a second one is refused with ROTATION_IN_PROGRESS).
 */
import { existsSync, renameSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { createMasterKey, loadMasterKey, masterKeyFromBytes, type MasterKey } from '../../crypto/master-key.js';
import { newDataKey, wrapKey } from '../../crypto/wrap.js';
import { clubDbPath, clubDir, CLUB_DB_FILE } from '../club/club-store.js';
import { StorageError } from '../engine/errors.js';
import { ServerDb, serverDbKey, serverDbPath } from './server-db.js';
import { removeSqliteFiles, swapInSqliteFile } from '../engine/rekey.js';
import { rotateArchiveKey } from '../backup/archive-keys.js';
import { SnapshotPool } from '../backup/snapshot-pool.js';
import { reencryptDocuments } from '../club/documents.js';
import { nextKeyPath, unwrapClubKey, type Storage } from './storage.js';
import { StepHooks, deleteClub } from './provisioning.js';

// ---- rotation -------------------------------------------------------------------------------

/**
 * Where a rotation runs its re-encryption copies: the daemon passes its storage workers (one
 * bounded pool shared with backups and snapshots); without them a pool of one worker is started
 * for the call and stopped after it (offline commusicctl, the resumption at start).
 *
 * `onStep` hooks (StepHooks) run on the calling thread at every step; the steps of the copy
 * (store-copied, store-rekeyed, server-copied, server-rekeyed) are reported by the worker, which
 * waits until the hook returned (a promise is awaited), so a kill -9 inside a hook leaves the
 * files exactly as at that step.
 */
export interface RotationOptions extends StepHooks {
  workers?: SnapshotPool;
}

/** Storages with a rotation under way (one at a time: they replace server.db and lock clubs). */
const rotating = new WeakSet<Storage>();

/** Run `fn` as the only rotation of `st`, on `o.workers` or on a pool of its own. */
async function exclusive<T>(st: Storage, o: RotationOptions, fn: (workers: SnapshotPool) => Promise<T>): Promise<T> {
  if (rotating.has(st)) throw new StorageError('ROTATION_IN_PROGRESS', 'another key rotation is running on this server; run this one when it has finished');
  rotating.add(st);
  const own = o.workers ? undefined : new SnapshotPool();
  try {
    return await fn(o.workers ?? own!);
  } finally {
    rotating.delete(st);
    await own?.close();
  }
}

/**
 * Refuse writes on server.db's connection while its copy is made on a worker (PRAGMA
 * query_only: a write fails at once with SQLITE_READONLY, which the daemon answers BUSY;
 * isHeldWrite in storage/engine/errors.ts), after leaving WAL so the file alone is the whole
 * database. Reads go on. The returned function lifts the hold (back to WAL) if the connection is
 * still open; after the swap the old connection is closed and the new one has no hold.
 */
function holdServerWrites(st: Storage): () => void {
  const db = st.server.db;
  db.pragma('journal_mode=DELETE');
  db.pragma('query_only=ON');
  return () => {
    if (!db.open) return;
    db.pragma('query_only=OFF');
    db.pragma('journal_mode=WAL');
  };
}

export interface RotateMasterOptions extends RotationOptions {
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
  return exclusive(st, o, (workers) => rotateMasterOn(st, workers, o));
}

async function rotateMasterOn(st: Storage, workers: SnapshotPool, o: RotateMasterOptions): Promise<{ oldKeyId: string; newKeyId: string; clubs: number }> {
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
  let release: (() => void) | undefined;
  try {
    const old = st.master;
    release = holdServerWrites(st);
    const r = await workers.rekey(
      { kind: 'server', path: dbPath, tmp: dbNext, oldKey: oldDbKey, newKey: newDbKey, oldMaster: old.key, newMaster: next.key, oldMasterId: old.id, rotatedAt: new Date().toISOString() },
      (step) => o.onStep?.(step),
    );
    if (r.state !== 'copied') throw new StorageError('STORE_CORRUPT', 'the copy of server.db was not made');
    clubs = r.count;
    // From here to the new connection nothing awaits: no request sees server.db closed.
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
    // Before the commit point the old server db is still valid: lift the hold, or reopen it, so
    // the daemon carries on.
    if (st.server.db.open) {
      try {
        release?.();
      } catch (lift) {
        st.logger.warn('server.db write hold not lifted after a failed master rotation; restart the daemon', { error: (lift as { code?: string }).code ?? (lift as Error).name });
      }
    } else {
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
export async function rotateClub(st: Storage, id: string, hooks: RotationOptions = {}): Promise<{ id: string; keyVersion: number; documents: number }> {
  return exclusive(st, hooks, (workers) => rotateClubOn(st, id, workers, hooks));
}

async function rotateClubOn(st: Storage, id: string, workers: SnapshotPool, hooks: StepHooks): Promise<{ id: string; keyVersion: number; documents: number }> {
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
    try {
      const path = clubDbPath(st.dataDir, id);
      const tmp = join(clubDir(st.dataDir, id), CLUB_DB_FILE + '.rotating');
      let copied = false;
      if (row.storeState === 'created' && existsSync(path)) {
        // On a worker: the legacy-layout migration if needed, the copy re-keyed to the new page
        // key with every document key re-wrapped; or 'swapped' when the new key opens club.db.
        const r = await workers.rekey({ kind: 'club', dataDir: st.dataDir, clubId: id, path, tmp, oldKey, newKey, oldVersion: row.keyVersion }, (step) => hooks.onStep?.(step));
        if (r.state === 'copied') {
          documents = r.count;
          copied = true;
        }
      }
      if (copied) {
        hooks.onStep?.('documents-rewrapped');
        // club.db left WAL on the worker and is closed, so a -wal/-shm here is empty residue;
        // it must not survive next to the new file (SQLite would replay it onto the new file).
        swapInSqliteFile(tmp, path);
        hooks.onStep?.('store-swapped');
      } else {
        removeSqliteFiles(tmp);
      }
      st.server.promotePendingKey(id);
      hooks.onStep?.('key-promoted');
      return { id, keyVersion: row.pendingKeyVersion!, documents };
    } finally {
      oldKey.fill(0);
      newKey.fill(0);
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
  return exclusive(st, o, async (workers) => {
    const clubs: LeakRecoveryResult['clubs'] = [];
    for (const r of st.server.listClubs()) {
      if (r.status === 'deleting') continue;
      const rot = await rotateClubOn(st, r.id, workers, {});
      const documents = r.storeState === 'created' ? await reencryptDocuments(st, r.id) : 0;
      clubs.push({ id: r.id, keyVersion: rot.keyVersion, documents });
    }
    const a = rotateArchiveKey(st, o.now);
    const doMaster = () => rotateMasterOn(st, workers, o);
    const m = await (o.wrapMaster ? o.wrapMaster(doMaster) : doMaster());
    return { clubs, archiveKey: { oldKeyId: a.oldKeyId, newKeyId: a.newKeyId }, master: { oldKeyId: m.oldKeyId, newKeyId: m.newKeyId } };
  });
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
      await rotateClub(st, r.id, o.workers ? { workers: o.workers } : {});
      clubs.push(r.id);
    }
  }
  return { master, clubs, deleted };
}
