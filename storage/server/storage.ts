/**
 * The storage context: a data folder opened with its master key. One object holds the master
 * key, the server database and the club store cache; the daemon opens it once at start, the
 * offline `commusicctl` opens it per command. Every operation in storage/server/provisioning.ts takes it.
 *
 * Data folder layout (modes: folders 0700, files 0600):
 *   <data>/keys/master.key            master key file (crypto/master-key.ts)
 *   <data>/keys/master.key.next       only while `keys rotate-master` runs
 *   <data>/server.db                  server database, encrypted under HKDF(master key)
 *   <data>/clubs/<id>/club.db         a club's store, encrypted under the club data key
 *   <data>/clubs/<id>/docs/<f>.cmdoc  a club's encrypted documents
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { CryptoError } from '../../crypto/errors.js';
import { createMasterKey, defaultMasterKeyPath, loadMasterKey, type MasterKey } from '../../crypto/master-key.js';
import { unwrapKey, wrapKey, wrappedVersion, WRAP_VERSION } from '../../crypto/wrap.js';
import type { IdentityKey } from '../../crypto/identity.js';
import { type ClubStore } from '../club/club-store.js';
import { ClubStoreCache, type ClubOpenInfo } from '../club/store-cache.js';
import { StorageError, silentLogger, type StorageLogger } from '../engine/errors.js';
import type { Db } from '../engine/sqlcipher.js';
import { ServerDb, serverDbPath, type ClubRow } from './server-db.js';
import { wrapBareLegacyHashes } from '../club/users.js';
import type { AnchorStore, HeadAnchor } from '../club/audit-log.js';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { renameSync } from 'node:fs';

export const DEFAULT_MAX_OPEN_STORES = 256;

export interface OpenStorageOptions {
  dataDir: string;
  /** Operator passphrase for a passphrase-protected key file (from an fd or a prompt). */
  passphrase?: string | Buffer;
  /** Initialise an empty data folder (new master key, empty server db). Never replaces a key. */
  create?: boolean;
  /** scrypt cost of a newly created passphrase key file (tests lower it). */
  scryptLog2N?: number;
  maxOpenStores?: number;
  logger?: StorageLogger;
}

export class Storage implements AnchorStore {
  readonly dataDir: string;
  readonly logger: StorageLogger;
  readonly cache: ClubStoreCache;
  /** Replaced by rotateMaster. */
  master: MasterKey;
  server: ServerDb;
  /** A master rotation was interrupted before its commit point; `rotateMaster` will finish it. */
  masterRotationPending: boolean;
  /**
   * The server identity key, when the process holds it (the daemon sets it at start). Backup
   * archives are signed with it (storage/backup/archive-origin.ts); without it the data folder's
   * keys/identity.pem is used when present, else the archive key's MAC.
   */
  identity: IdentityKey | undefined = undefined;

  constructor(dataDir: string, master: MasterKey, server: ServerDb, o: { maxOpenStores: number; logger: StorageLogger; masterRotationPending: boolean }) {
    this.dataDir = dataDir;
    this.master = master;
    this.server = server;
    this.logger = o.logger;
    this.masterRotationPending = o.masterRotationPending;
    this.cache = new ClubStoreCache({ dataDir, maxOpen: o.maxOpenStores, resolve: (id) => this.#resolve(id), logger: o.logger });
  }

  get keyFilePath(): string {
    return defaultMasterKeyPath(this.dataDir);
  }

  /** The club's candidate data keys: current first, then a rotation's pending key. */
  clubKeys(row: ClubRow): Array<{ key: Buffer; version: number }> {
    if (!row.wrappedKey) throw new StorageError('CLUB_DELETED', `club ${row.id} is being deleted; its data key is destroyed`);
    const keys = [{ key: unwrapClubKey(this.master, row.id, row.wrappedKey, row.keyVersion), version: row.keyVersion }];
    if (row.pendingWrappedKey && row.pendingKeyVersion !== null) {
      keys.push({ key: unwrapClubKey(this.master, row.id, row.pendingWrappedKey, row.pendingKeyVersion), version: row.pendingKeyVersion });
    }
    return keys;
  }

  #resolve(clubId: string): ClubOpenInfo {
    const row = this.server.mustGetClub(clubId);
    const info: ClubOpenInfo = { keys: this.clubKeys(row), create: row.storeState === 'pending' };
    const hook = this.onClubOpen;
    if (hook) info.afterOpen = (store) => hook(clubId, store.db);
    if (info.create) {
      info.afterCreate = (store) => {
        const admin = row.pendingAdmin;
        if (admin) {
          store.db
            .prepare(`INSERT INTO users (username, passwordHash, mustChangePassword, isAdmin, disabled) VALUES (?, ?, ?, 1, 0) ON CONFLICT (username) DO NOTHING`)
            .run(admin.username, admin.passwordHash, admin.mustChangePassword ? 1 : 0);
        }
        this.server.markStoreCreated(clubId);
      };
    }
    return info;
  }

  /**
   * The club's store, opened (and on first use created) on demand. Refuses suspended clubs unless
   * `allowSuspended` (operator tools), and clubs being deleted.
   *
   * The status is checked when the store is opened. Every status change (suspend, resume,
   * delete) evicts the store from the cache, so an open store belongs to an active club, or was
   * opened with `allowSuspended`; only such a store is reused without a server-db lookup.
   */
  openClub(clubId: string, opts: { allowSuspended?: boolean } = {}): ClubStore {
    if (!this.cache.isOpen(clubId) || (!opts.allowSuspended && this.#openedSuspended.has(clubId))) {
      const row = this.server.mustGetClub(clubId);
      if (row.status === 'deleting') throw new StorageError('CLUB_DELETED', `club ${clubId} is being deleted; finish with commusicctl club delete ${clubId}`);
      if (row.status === 'suspended' && !opts.allowSuspended) throw new StorageError('CLUB_SUSPENDED', `club ${clubId} is suspended; resume it with commusicctl club resume ${clubId}`);
      if (row.status === 'suspended') this.#openedSuspended.add(clubId);
      else this.#openedSuspended.delete(clubId);
    }
    const fresh = !this.cache.isOpen(clubId);
    const store = this.cache.get(clubId);
    if (fresh && !this.#legacyChecked.has(clubId)) {
      this.#legacyChecked.add(clubId);
      this.#wrapLegacyHashes(clubId, store);
    }
    return store;
  }

  /**
   * Called with each club store's connection right after it is opened (the cluster sets it to
   * guard the connection against writes while the club is not served here; cluster/capture.ts).
   */
  onClubOpen: ((clubId: string, db: Db) => void) | undefined;

  /** Clubs whose users were checked for bare legacy hashes in this process. */
  readonly #legacyChecked = new Set<string>();

  /** Background: wrap bare `sha512$` hashes of older imports in scrypt (storage/club/users.ts). */
  #wrapLegacyHashes(clubId: string, store: ClubStore): void {
    let has: unknown;
    try {
      has = store.db.prepare(`SELECT 1 FROM users WHERE passwordHash LIKE 'sha512$%' LIMIT 1`).get();
    } catch {
      return; // a store without a users table yet has nothing to wrap
    }
    if (!has) return;
    void wrapBareLegacyHashes(() => this.cache.get(clubId).db, this.legacyHashLog2N)
      .then((n) => this.logger.info('legacy SHA-512 hashes wrapped in scrypt', { clubId, users: n }))
      .catch((e: unknown) => this.logger.warn('legacy SHA-512 hashes not wrapped yet (retried on the next start)', { clubId, error: (e as Error).name }));
  }

  /** scrypt cost for wrapping legacy hashes in the background (tests lower it). */
  legacyHashLog2N: number | undefined;

  /** Clubs whose open store was opened for an operator tool while suspended. */
  readonly #openedSuspended = new Set<string>();

  // Change-log anchors live in server.db (replaced by rotateMaster, hence the indirection).
  insertAnchor(a: HeadAnchor): void {
    this.server.insertAnchor(a);
  }

  lastAnchor(clubId: string): { seq: number; hash: string } | undefined {
    return this.server.lastAnchor(clubId);
  }

  listAnchors(clubId: string): HeadAnchor[] {
    return this.server.listAnchors(clubId);
  }

  close(): void {
    this.cache.closeAll();
    this.server.close();
    this.master.destroy();
  }
}

export function unwrapClubKey(master: MasterKey, clubId: string, wrapped: Buffer, keyVersion: number): Buffer {
  try {
    return unwrapKey(master.key, wrapped, { purpose: 'club-data-key', clubId, keyVersion });
  } catch (e) {
    if (e instanceof CryptoError) {
      throw new StorageError('WRONG_MASTER_KEY', `the master key (id ${master.id}) does not unwrap the data key of club ${clubId}: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/**
 * Migration to per-purpose sub-keys: club data keys wrapped directly under the master key
 * (wrap version 1) are re-wrapped under its wrapping sub-key (crypto/wrap.ts), in one
 * transaction. Returns how many clubs changed (0 once migrated: nothing is written then).
 */
export function rewrapLegacyClubKeys(server: ServerDb, master: MasterKey): number {
  const rows = server.listClubs().filter((r) => (r.wrappedKey && wrappedVersion(r.wrappedKey) !== WRAP_VERSION) || (r.pendingWrappedKey && wrappedVersion(r.pendingWrappedKey) !== WRAP_VERSION));
  if (rows.length === 0) return 0;
  const upd = server.db.prepare('UPDATE clubs SET wrapped_key = ?, pending_wrapped_key = ? WHERE id = ?');
  server.db.transaction(() => {
    for (const r of rows) {
      const rewrap = (w: Buffer | null, v: number | null): Buffer | null => {
        if (!w || v === null) return null;
        if (wrappedVersion(w) === WRAP_VERSION) return w;
        const k = unwrapClubKey(master, r.id, w, v);
        const out = wrapKey(master.key, k, { purpose: 'club-data-key', clubId: r.id, keyVersion: v });
        k.fill(0);
        return out;
      };
      upd.run(rewrap(r.wrappedKey, r.keyVersion), rewrap(r.pendingWrappedKey, r.pendingKeyVersion), r.id);
    }
  })();
  return rows.length;
}

export function nextKeyPath(keyPath: string): string {
  return keyPath + '.next';
}

/**
 * Load the master key, finishing an interrupted master rotation if it got past its commit point
 * (server.db already re-encrypted under the next key). Writes nothing unless that is the case.
 */
async function loadMasterWithRecovery(dataDir: string, o: OpenStorageOptions): Promise<{ master: MasterKey; server: ServerDb; pending: boolean }> {
  const keyPath = defaultMasterKeyPath(dataDir);
  const next = nextKeyPath(keyPath);
  const dbPath = serverDbPath(dataDir);
  const master = await loadMasterKey(keyPath, o.passphrase !== undefined ? { passphrase: o.passphrase } : {});
  try {
    const server = ServerDb.open(dbPath, master.key);
    return { master, server, pending: existsSync(next) };
  } catch (e) {
    if (!(e instanceof StorageError && e.code === 'WRONG_MASTER_KEY' && existsSync(next))) {
      master.destroy();
      throw e;
    }
  }
  // server.db did not open with master.key but a next key exists: rotation passed its commit point.
  const m2 = await loadMasterKey(next, o.passphrase !== undefined ? { passphrase: o.passphrase } : {});
  let server: ServerDb;
  try {
    server = ServerDb.open(dbPath, m2.key);
  } catch (e) {
    master.destroy();
    m2.destroy();
    throw e;
  }
  renameSync(next, keyPath);
  fsyncDir(join(dataDir, 'keys'));
  master.destroy();
  (o.logger ?? silentLogger).warn('finished an interrupted master key rotation', { keyId: m2.id });
  return { master: { ...m2, path: keyPath }, server, pending: false };
}

/** Open a data folder (see OpenStorageOptions). */
export async function openStorage(o: OpenStorageOptions): Promise<Storage> {
  const dataDir = o.dataDir;
  const keyPath = defaultMasterKeyPath(dataDir);
  const dbPath = serverDbPath(dataDir);
  const logger = o.logger ?? silentLogger;
  const maxOpenStores = o.maxOpenStores ?? DEFAULT_MAX_OPEN_STORES;
  if (o.create && !existsSync(keyPath)) {
    if (existsSync(dbPath) || (existsSync(join(dataDir, 'clubs')) && readdirSync(join(dataDir, 'clubs')).length > 0)) {
      throw new CryptoError('KEY_FILE_MISSING', `key file ${keyPath} is missing but ${dataDir} holds data; restore the key file from the key backup (a new key would not open the data)`);
    }
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    mkdirSync(join(dataDir, 'clubs'), { recursive: true, mode: 0o700 });
    const master = await createMasterKey(keyPath, {
      ...(o.passphrase !== undefined ? { passphrase: o.passphrase } : {}),
      ...(o.scryptLog2N !== undefined ? { scryptLog2N: o.scryptLog2N } : {}),
    });
    const server = ServerDb.open(dbPath, master.key, { create: true });
    server.setMeta('created', new Date().toISOString());
    logger.info('initialised data folder', { dataDir, keyId: master.id });
    return new Storage(dataDir, master, server, { maxOpenStores, logger, masterRotationPending: false });
  }
  const { master, server, pending } = await loadMasterWithRecovery(dataDir, o);
  mkdirSync(join(dataDir, 'clubs'), { recursive: true, mode: 0o700 });
  const rewrapped = rewrapLegacyClubKeys(server, master);
  if (rewrapped > 0) logger.info('club data keys re-wrapped under the master key wrapping sub-key', { clubs: rewrapped });
  if (pending) logger.warn('an interrupted master key rotation was found; run commusicctl keys rotate-master to finish it', { keyId: master.id });
  return new Storage(dataDir, master, server, { maxOpenStores, logger, masterRotationPending: pending });
}
