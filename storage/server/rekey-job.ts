/**
 * The re-encryption copy of a key rotation, run on a storage worker thread (snapshot-worker.ts,
 * started by storage/backup/snapshot-pool.ts `rekey`) with the worker's own SQLite connections,
 * so the daemon's event loop keeps answering other clubs and handshakes while a large store is
 * copied (storage/server/key-rotation.ts is the caller and does the swap).
 *
 * The steps are those of storage/engine/rekey.ts: copyOut (the source leaves WAL, VACUUM INTO),
 * rekeyCopy (PRAGMA rekey), finishCopy (the edit in one transaction, back to WAL, fsync, the
 * new key opens it). After the copy and after the rekey the job reports its step (`step`) and
 * waits until the calling thread has run its step hooks, so a kill -9 at a step leaves the disk
 * exactly as the same kill did when the copy ran on the calling thread.
 *
 * Keys: the job's key bytes are viewed, not copied, and zeroed when the job ends, whatever the
 * outcome; no key is logged or put in an error message.
 */
import { CryptoError } from '../../crypto/errors.js';
import { clubPageKey, unwrapKey, wrapKey } from '../../crypto/wrap.js';
import { openClubStore } from '../club/club-store.js';
import { StorageError } from '../engine/errors.js';
import { copyOut, finishCopy, opensWith, rekeyCopy } from '../engine/rekey.js';
import { openEncrypted, type Db } from '../engine/sqlcipher.js';

/** Re-encrypt one club's store: club.db copied to `tmp` under the new data key's page key, document keys re-wrapped. */
export interface ClubRekeyJob {
  kind: 'club';
  dataDir: string;
  clubId: string;
  /** clubs/<id>/club.db and the copy's path (club.db.rotating). */
  path: string;
  tmp: string;
  /** The club's current and pending data keys (32 bytes each) and the current key's version. */
  oldKey: Uint8Array;
  newKey: Uint8Array;
  oldVersion: number;
}

/** Re-encrypt server.db: copied to `tmp` under the new master key's server.db key, every club key re-wrapped. */
export interface ServerRekeyJob {
  kind: 'server';
  path: string;
  tmp: string;
  /** serverDbKey(old master), serverDbKey(new master). */
  oldKey: Uint8Array;
  newKey: Uint8Array;
  /** The old and new master keys, for re-wrapping the club data keys. */
  oldMaster: Uint8Array;
  newMaster: Uint8Array;
  /** The old master key's public id (for the error message of a key it does not unwrap). */
  oldMasterId: string;
  /** meta.masterRotated (ISO time). */
  rotatedAt: string;
}

export type RekeyJob = ClubRekeyJob | ServerRekeyJob;

/**
 * `copied`: the re-keyed copy is at `tmp`, fsynced; `count` documents (club) or clubs (server)
 * were re-wrapped. `swapped`: the club's store already opens with the new key (a resumed
 * rotation past its commit point): nothing was copied.
 */
export type RekeyResult = { state: 'copied'; count: number } | { state: 'swapped' };

/** The step names a job reports (provisioning.ts ROTATE_*_STEPS). */
const STEPS = { club: { copied: 'store-copied', rekeyed: 'store-rekeyed' }, server: { copied: 'server-copied', rekeyed: 'server-rekeyed' } } as const;

function view(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/**
 * Run a job. `step(name)` is awaited after the copy and after the rekey (the caller's hooks run
 * meanwhile; a rejection stops the job, the partial copy stays for the next run to remove).
 * Errors: StorageError (WRONG_DATA_KEY when neither key opens the store, WRONG_MASTER_KEY,
 * STORE_CORRUPT), CryptoError, SQLite's errors.
 */
export async function runRekeyJob(job: RekeyJob, step: (name: string) => Promise<void>): Promise<RekeyResult> {
  const keys = job.kind === 'club' ? [job.oldKey, job.newKey] : [job.oldKey, job.newKey, job.oldMaster, job.newMaster];
  try {
    return job.kind === 'club' ? await rekeyClub(job, step) : await rekeyServer(job, step);
  } finally {
    for (const k of keys) k.fill(0);
  }
}

/** copyOut, step, rekeyCopy, step, finishCopy with `edit`. */
async function copySteps(src: Db, dst: string, oldKey: Buffer, newKey: Buffer, step: (name: string) => Promise<void>, names: { copied: string; rekeyed: string }, edit: (db: Db) => void): Promise<void> {
  copyOut(src, dst);
  await step(names.copied);
  const copy = rekeyCopy(dst, oldKey, newKey);
  try {
    await step(names.rekeyed);
  } catch (e) {
    copy.close();
    throw e;
  }
  finishCopy(copy, dst, newKey, edit);
}

async function rekeyClub(job: ClubRekeyJob, step: (name: string) => Promise<void>): Promise<RekeyResult> {
  const oldKey = view(job.oldKey);
  const newKey = view(job.newKey);
  const oldPage = clubPageKey(oldKey);
  const newPage = clubPageKey(newKey);
  try {
    // A store still in the legacy layout (pages under the data key itself) is migrated first.
    if (!opensWith(job.path, oldPage) && opensWith(job.path, oldKey)) {
      openClubStore({ dataDir: job.dataDir, clubId: job.clubId, keys: [{ key: oldKey, version: job.oldVersion }], create: false }).close();
    }
    if (!opensWith(job.path, oldPage)) {
      if (!opensWith(job.path, newPage)) throw new StorageError('WRONG_DATA_KEY', `neither the current nor the pending data key opens ${job.path}; restore the store from a backup`);
      return { state: 'swapped' };
    }
    let documents = 0;
    const src = openEncrypted(job.path, oldPage);
    try {
      await copySteps(src, job.tmp, oldPage, newPage, step, STEPS.club, (db) => {
        const docs = db.prepare('SELECT id, file, wrappedKey FROM documents').all() as Array<{ id: number; file: string; wrappedKey: Buffer }>;
        const upd = db.prepare('UPDATE documents SET wrappedKey = ? WHERE id = ?');
        for (const d of docs) {
          const ctx = { purpose: 'document-key' as const, clubId: job.clubId, docFile: d.file };
          const dk = unwrapKey(oldKey, d.wrappedKey, ctx);
          upd.run(wrapKey(newKey, dk, ctx), d.id);
          dk.fill(0);
          documents++;
        }
      });
    } finally {
      src.close();
    }
    return { state: 'copied', count: documents };
  } finally {
    oldPage.fill(0);
    newPage.fill(0);
  }
}

async function rekeyServer(job: ServerRekeyJob, step: (name: string) => Promise<void>): Promise<RekeyResult> {
  const oldMaster = view(job.oldMaster);
  const newMaster = view(job.newMaster);
  const unwrapOld = (clubId: string, w: Buffer, keyVersion: number): Buffer => {
    try {
      return unwrapKey(oldMaster, w, { purpose: 'club-data-key', clubId, keyVersion });
    } catch (e) {
      if (e instanceof CryptoError) throw new StorageError('WRONG_MASTER_KEY', `the master key (id ${job.oldMasterId}) does not unwrap the data key of club ${clubId}: ${e.message}`);
      throw e;
    }
  };
  let clubs = 0;
  // The calling thread switched its connection to rollback-journal mode and refuses writes on it
  // (key-rotation.ts holdServerWrites): this connection reads the file as it stays.
  const src = openEncrypted(job.path, view(job.oldKey), { journalMode: 'keep' });
  try {
    await copySteps(src, job.tmp, view(job.oldKey), view(job.newKey), step, STEPS.server, (db) => {
      const rows = db.prepare('SELECT id, wrapped_key, key_version, pending_wrapped_key, pending_key_version FROM clubs').all() as Array<{
        id: string; wrapped_key: Buffer | null; key_version: number; pending_wrapped_key: Buffer | null; pending_key_version: number | null;
      }>;
      const upd = db.prepare('UPDATE clubs SET wrapped_key = ?, pending_wrapped_key = ? WHERE id = ?');
      for (const r of rows) {
        const rewrap = (w: Buffer | null, v: number | null): Buffer | null => {
          if (!w || v === null) return null;
          const k = unwrapOld(r.id, w, v);
          const out = wrapKey(newMaster, k, { purpose: 'club-data-key', clubId: r.id, keyVersion: v });
          k.fill(0);
          return out;
        };
        upd.run(rewrap(r.wrapped_key, r.key_version), rewrap(r.pending_wrapped_key, r.pending_key_version), r.id);
        clubs++;
      }
      db.prepare(`INSERT INTO meta (k, v) VALUES ('masterRotated', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v`).run(job.rotatedAt);
    });
  } finally {
    src.close();
  }
  return { state: 'copied', count: clubs };
}
