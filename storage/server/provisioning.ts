/**
 * Club provisioning and key rotation: plain async functions over an open Storage (see
 * storage/server/storage.ts), used by the running daemon (control socket) and offline by commusicctl
 * alike. Inputs and results are JSON-serialisable.
 *
 * Usage (offline; the daemon keeps one Storage open and passes it instead):
 *
 *   const st = await openStorage({ dataDir, passphrase });        // or { create: true } to init
 *   const { id, oneTimePassword } = await createClub(st, { name: 'MV Beispiel', adminUser: 'anna', plan: 'premium' });
 *   listClubs(st); showClub(st, id); suspendClub(st, id); resumeClub(st, id);
 *   await deleteClub(st, id);                                      // crypto-shreds first
 *   await rotateMaster(st);  await rotateClub(st, id);             // resumable after kill -9
 *   await resumeInterruptedRotations(st);                          // finish whatever was cut off
 *   st.close();
 *
 * `commusicctl club create NAME --admin USER [--plan P] [--password-stdin]` maps to createClub
 * (adminPassword from stdin, otherwise a one-time password is returned and printed once);
 * `club list|show|suspend|resume|delete` and `keys rotate-master|rotate-club ID` map 1:1.
 * Offline use requires the daemon to be stopped (one process owns a data folder).
 *
 * `hooks.onStep(step)` is called at each durable step of the multi-step operations (names in
 * ROTATE_MASTER_STEPS, ROTATE_CLUB_STEPS, DELETE_CLUB_STEPS); tests kill the process there.
 */
import { existsSync, renameSync, rmSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { createMasterKey, loadMasterKey, masterKeyFromBytes, type MasterKey } from '../../crypto/master-key.js';
import { generateOneTimePassword, hashPassword } from '../../crypto/password.js';
import { clubPageKey, newDataKey, unwrapKey, wrapKey } from '../../crypto/wrap.js';
import { clubDbPath, clubDir, openClubStore, CLUB_DB_FILE } from '../club/club-store.js';
import { StorageError } from '../engine/errors.js';
import { PLANS, ServerDb, serverDbKey, serverDbPath, type ClubRow, type ClubStatus, type Plan } from './server-db.js';
import { openEncrypted } from '../engine/sqlcipher.js';
import { opensWith, reencryptCopy, removeSqliteFiles, swapInSqliteFile } from '../engine/rekey.js';
import { rotateArchiveKey } from '../backup/archive-keys.js';
import { reencryptDocuments } from '../club/documents.js';
import { nextKeyPath, unwrapClubKey, type Storage } from './storage.js';

export interface StepHooks {
  onStep?: (step: string) => void;
}

export const ROTATE_MASTER_STEPS = ['next-key-written', 'server-copied', 'server-rekeyed', 'keys-rewrapped', 'server-swapped', 'key-swapped'] as const;
export const ROTATE_CLUB_STEPS = ['pending-key-stored', 'store-copied', 'store-rekeyed', 'documents-rewrapped', 'store-swapped', 'key-promoted'] as const;
export const DELETE_CLUB_STEPS = ['keys-destroyed', 'files-removed'] as const;

export interface ClubSummary {
  id: string;
  name: string;
  plan: Plan;
  status: ClubStatus;
  created: string;
  keyVersion: number;
  rotationPending: boolean;
  storeCreated: boolean;
}

export interface ClubDetails extends ClubSummary {
  settings: Record<string, unknown>;
  admins: string[];
  users: number;
  persons: number;
  documents: number;
  storeBytes: number;
  documentBytes: number;
}

export interface CreateClubInput {
  name: string;
  adminUser: string;
  plan?: Plan;
  /** Given: stored hashed, nothing returned. Absent: a one-time password is generated and returned once. */
  adminPassword?: string;
  settings?: Record<string, unknown>;
  /** Create the store file now (default true). Bulk provisioning passes false: created on first open. */
  materialize?: boolean;
}

export interface CreateClubResult {
  id: string;
  name: string;
  plan: Plan;
  adminUser: string;
  oneTimePassword?: string;
}

const USERNAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;

function summary(r: ClubRow): ClubSummary {
  return {
    id: r.id,
    name: r.name,
    plan: r.plan,
    status: r.status,
    created: r.created,
    keyVersion: r.keyVersion,
    rotationPending: r.pendingWrappedKey !== null,
    storeCreated: r.storeState === 'created',
  };
}

function newClubId(): string {
  return 'c' + randomBytes(8).toString('hex');
}

function checkCreateInput(i: CreateClubInput): { name: string; plan: Plan } {
  const name = String(i.name ?? '').trim();
  if (name.length < 1 || name.length > 200) throw new StorageError('INVALID_ARGUMENT', 'club name must be 1..200 characters');
  if (!USERNAME_RE.test(String(i.adminUser ?? ''))) throw new StorageError('INVALID_ARGUMENT', 'admin user name must be 1..64 characters of letters, digits, . _ @ -, starting with a letter or digit');
  const plan = i.plan ?? 'basic';
  if (!PLANS.includes(plan)) throw new StorageError('INVALID_ARGUMENT', `plan must be one of ${PLANS.join(', ')}`);
  if (i.adminPassword !== undefined && (i.adminPassword.length < 12 || i.adminPassword.length > 1024)) {
    throw new StorageError('INVALID_ARGUMENT', 'admin password must be 12..1024 characters');
  }
  return { name, plan };
}

function newClubRow(st: Storage, id: string, name: string, plan: Plan, admin: ClubRow['pendingAdmin'], settings: Record<string, unknown>): ClubRow {
  const dataKey = newDataKey();
  const wrapped = wrapKey(st.master.key, dataKey, { purpose: 'club-data-key', clubId: id, keyVersion: 1 });
  dataKey.fill(0);
  return {
    id,
    name,
    plan,
    status: 'active',
    created: new Date().toISOString(),
    settings,
    wrappedKey: wrapped,
    keyVersion: 1,
    pendingWrappedKey: null,
    pendingKeyVersion: null,
    storeState: 'pending',
    pendingAdmin: admin,
  };
}

/** `club create`: a new club with its data key and its administrator (the contract's named person). */
export async function createClub(st: Storage, input: CreateClubInput): Promise<CreateClubResult> {
  const { name, plan } = checkCreateInput(input);
  const otp = input.adminPassword === undefined ? generateOneTimePassword() : undefined;
  const passwordHash = await hashPassword(input.adminPassword ?? otp!);
  const id = newClubId();
  st.server.insertClub(newClubRow(st, id, name, plan, { username: input.adminUser, passwordHash, mustChangePassword: otp !== undefined }, input.settings ?? {}));
  if (input.materialize !== false) st.openClub(id);
  return { id, name, plan, adminUser: input.adminUser, ...(otp !== undefined ? { oneTimePassword: otp } : {}) };
}

/**
 * Bulk provisioning (migrations from another system, load tests): one transaction for all rows,
 * stores created lazily on first open. Each spec carries a ready password hash.
 */
export function createClubsBulk(st: Storage, specs: Array<{ name: string; adminUser: string; plan?: Plan; passwordHash: string }>): string[] {
  const rows = specs.map((s) => {
    const { name, plan } = checkCreateInput({ name: s.name, adminUser: s.adminUser, ...(s.plan ? { plan: s.plan } : {}) });
    return newClubRow(st, newClubId(), name, plan, { username: s.adminUser, passwordHash: s.passwordHash, mustChangePassword: true }, {});
  });
  st.server.insertClubs(rows);
  return rows.map((r) => r.id);
}

export function listClubs(st: Storage): ClubSummary[] {
  return st.server.listClubs().map(summary);
}

function fileSize(p: string): number {
  try {
    return statSync(p).size;
  } catch {
    return 0;
  }
}

/** `club show`: the server-side facts plus counts from the store (opens it, even when suspended). */
export function showClub(st: Storage, id: string): ClubDetails {
  const row = st.server.mustGetClub(id);
  const base: ClubDetails = { ...summary(row), settings: row.settings, admins: [], users: 0, persons: 0, documents: 0, storeBytes: 0, documentBytes: 0 };
  if (row.status === 'deleting') return base;
  const store = st.openClub(id, { allowSuspended: true });
  const count = (t: string) => (store.db.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n;
  base.admins = (store.db.prepare('SELECT username FROM users WHERE isAdmin = 1 ORDER BY username').all() as Array<{ username: string }>).map((r) => r.username);
  base.users = count('users');
  base.persons = count('persons');
  base.documents = count('documents');
  base.documentBytes = (store.db.prepare('SELECT coalesce(sum(size), 0) AS n FROM documents').get() as { n: number }).n;
  const p = clubDbPath(st.dataDir, id);
  base.storeBytes = fileSize(p) + fileSize(p + '-wal');
  return base;
}

export function suspendClub(st: Storage, id: string): ClubSummary {
  const row = st.server.mustGetClub(id);
  if (row.status === 'deleting') throw new StorageError('CLUB_DELETED', `club ${id} is being deleted`);
  st.server.setStatus(id, 'suspended');
  st.cache.evict(id);
  return summary(st.server.mustGetClub(id));
}

export function resumeClub(st: Storage, id: string): ClubSummary {
  const row = st.server.mustGetClub(id);
  if (row.status === 'deleting') throw new StorageError('CLUB_DELETED', `club ${id} is being deleted`);
  st.server.setStatus(id, 'active');
  return summary(st.server.mustGetClub(id));
}

/**
 * `club delete`: crypto-shredding. 1) every key of the club is removed from the server database:
 * the wrapped data keys and the club's archive key (durable before anything else happens; the
 * server.db WAL is then checkpointed and truncated, and deleted rows are overwritten, so no
 * frame or free page keeps them); from then on nothing decrypts the club's files, nor any server
 * archive of the club at any destination; 2) the club's folder is removed; 3) its anchors and
 * row are removed and the deletion is recorded (`club_deletions`, shown by `backup list`), WAL
 * truncated again. Interrupted, the club stays listed with status `deleting` and a second
 * `club delete` finishes. Removing the club's archives at the destinations is the daemon's part
 * (daemon/backup/backup-ops.ts purgeDeletedClubArchives), after this.
 */
export async function deleteClub(st: Storage, id: string, hooks: StepHooks = {}): Promise<{ id: string; deleted: true }> {
  st.server.mustGetClub(id);
  const release = st.cache.lock(id);
  try {
    st.server.destroyKeys(id);
    hooks.onStep?.('keys-destroyed');
    const dir = clubDir(st.dataDir, id);
    rmSync(dir, { recursive: true, force: true });
    fsyncDir(dirname(dir));
    // Archives taken before restores (storage/backup/backup-archive.ts preRestoreDir): sealed with the
    // club's archive key, which is gone; the files go too.
    rmSync(join(st.dataDir, 'pre-restore', id), { recursive: true, force: true });
    hooks.onStep?.('files-removed');
    st.server.db.transaction(() => {
      st.server.deleteAnchors(id);
      st.server.deleteClubRow(id);
      st.server.recordDeletion(id, new Date().toISOString());
    })();
    st.server.checkpointTruncate();
    return { id, deleted: true };
  } finally {
    release();
  }
}

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


/**
 * scrypt cost (log2 N) for the hash of a generated one-time password. Such a password is 20
 * characters from a 54-letter alphabet (about 114 bits, crypto/password.ts), so guessing it from
 * its hash takes about 2^113 hash evaluations whatever the cost: key stretching protects
 * low-entropy human passwords and adds nothing here (NIST SP 800-63B section 5.1.1.2 asks for a
 * salted one-way KDF, which this still is). The low cost is what makes bulk provisioning fast:
 * 2^10 instead of 2^15 is 32x less work per club. The hash is replaced at full cost by the
 * administrator's own password at first login (mustChangePassword) and flagged by needsRehash.
 */
export const ONE_TIME_PASSWORD_LOG2N = 10;

export interface BulkClubSpec {
  name: string;
  adminUser: string;
  plan?: Plan;
}

/**
 * `club create-bulk`: many clubs at once, each with its administrator and a one-time password.
 * Every spec is checked before anything is written; then all rows go in one server-db
 * transaction (all or none), and the stores are created lazily on first use. What `club create`
 * pays per club (a full-cost scrypt, creating the store file with its schema and fsyncs, a
 * process start) is paid here once per batch or not at all. Results keep the input order.
 * Throws INVALID_ARGUMENT naming the spec's index (0-based) for the first bad spec.
 */
export async function createClubsWithPasswords(st: Storage, specs: readonly BulkClubSpec[]): Promise<CreateClubResult[]> {
  const checked = specs.map((s, i) => {
    try {
      return { ...checkCreateInput({ name: s.name, adminUser: s.adminUser, ...(s.plan ? { plan: s.plan } : {}) }), adminUser: s.adminUser };
    } catch (e) {
      throw new StorageError('INVALID_ARGUMENT', `club ${i}: ${(e as Error).message}`);
    }
  });
  const otps = checked.map(() => generateOneTimePassword());
  const hashes = await Promise.all(otps.map((p) => hashPassword(p, ONE_TIME_PASSWORD_LOG2N)));
  const rows = checked.map((c, i) => newClubRow(st, newClubId(), c.name, c.plan, { username: c.adminUser, passwordHash: hashes[i]!, mustChangePassword: true }, {}));
  st.server.insertClubs(rows);
  return rows.map((r, i) => ({ id: r.id, name: r.name, plan: r.plan, adminUser: checked[i]!.adminUser, oneTimePassword: otps[i]! }));
}
