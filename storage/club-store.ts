/**
 * Per-club stores: one SQLite file per club, `<data>/clubs/<id>/club.db`, page-encrypted with the
 * club's 256-bit data key (sqlcipher scheme), WAL + synchronous=FULL, schema migrations applied
 * on open. Stores are created lazily: provisioning writes the club's row (with its wrapped key)
 * to the server database, and the file is created on first open. That is what makes provisioning
 * thousands of clubs, and starting a server that hosts them, cheap.
 *
 * `ClubStoreCache` opens stores on demand and keeps at most `maxOpen` open, closing the least
 * recently used. better-sqlite3 is synchronous, so a store obtained from `get()` is safe to use
 * until the next `await`; code that awaits must call `get()` again afterwards.
 */
import { mkdirSync, existsSync, renameSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fsyncDir } from '../crypto/atomic-file.js';
import { clubPageKey, unwrapKey, wrapKey, wrappedVersion, WRAP_VERSION } from '../crypto/wrap.js';
import { reencryptCopy, removeSqliteFiles } from './rekey.js';
import { StorageError, type StorageLogger, silentLogger } from './errors.js';
import { MIGRATIONS } from './schema.js';
import { openEncrypted, migrate, type Db } from './sqlcipher.js';

export const CLUB_DB_FILE = 'club.db';
export const DOCS_DIR = 'docs';

export function clubDir(dataDir: string, clubId: string): string {
  if (!/^[a-z0-9][a-z0-9-]{0,63}$/.test(clubId)) throw new StorageError('INVALID_ARGUMENT', `invalid club id ${JSON.stringify(clubId)}`);
  return join(dataDir, 'clubs', clubId);
}

export function clubDbPath(dataDir: string, clubId: string): string {
  return join(clubDir(dataDir, clubId), CLUB_DB_FILE);
}

export class ClubStore {
  readonly clubId: string;
  readonly dir: string;
  readonly db: Db;
  readonly keyVersion: number;
  #key: Buffer;

  constructor(clubId: string, dir: string, db: Db, key: Buffer, keyVersion: number) {
    this.clubId = clubId;
    this.dir = dir;
    this.db = db;
    this.#key = Buffer.from(key);
    this.keyVersion = keyVersion;
  }

  get docsDir(): string {
    return join(this.dir, DOCS_DIR);
  }

  get isOpen(): boolean {
    return this.db.open;
  }

  /** Wrap a document's key under this club's data key, bound to club and file name. */
  wrapDocumentKey(docKey: Buffer, file: string): Buffer {
    return wrapKey(this.#key, docKey, { purpose: 'document-key', clubId: this.clubId, docFile: file });
  }

  unwrapDocumentKey(wrapped: Uint8Array, file: string): Buffer {
    return unwrapKey(this.#key, wrapped, { purpose: 'document-key', clubId: this.clubId, docFile: file });
  }

  close(): void {
    if (this.db.open) {
      try {
        this.db.pragma('wal_checkpoint(TRUNCATE)');
      } catch {
        /* busy or read-only: closing still checkpoints what it can */
      }
      this.db.close();
    }
    this.#key.fill(0);
  }
}

export interface OpenClubStoreOptions {
  dataDir: string;
  clubId: string;
  /** Candidate keys in order; the first that opens the file wins (rotation may leave two). */
  keys: ReadonlyArray<{ key: Buffer; version: number }>;
  /** Create the file (and folders) when missing. */
  create: boolean;
}

/** Open `path` with `key`; undefined when the key does not open it. */
function tryOpen(path: string, key: Buffer, create: boolean): Db | undefined {
  try {
    return openEncrypted(path, key, { create });
  } catch (e) {
    if (e instanceof StorageError && e.code === 'WRONG_DATA_KEY') return undefined;
    throw e;
  }
}

/**
 * Migrate a store from the legacy layout (pages encrypted directly under the club data key,
 * document keys wrapped directly under it: wrap version 1) to sub-keys: pages under
 * clubPageKey(dataKey), document keys re-wrapped (version 2). Crash-safe like a rotation: a
 * re-keyed copy `club.db.migrating` is renamed over club.db; killed before the rename the old
 * file is untouched and the next open starts over. Returns the store opened with the page key.
 */
function migrateLegacyStore(legacy: Db, path: string, clubId: string, dataKey: Buffer, pageKey: Buffer): Db {
  const tmp = path + '.migrating';
  try {
    reencryptCopy(legacy, tmp, dataKey, pageKey, {}, { copied: 'migrate-copied', rekeyed: 'migrate-rekeyed' }, (db) => {
      const hasDocs = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'documents'`).get();
      if (!hasDocs) return;
      const upd = db.prepare('UPDATE documents SET wrappedKey = ? WHERE id = ?');
      for (const d of db.prepare('SELECT id, file, wrappedKey FROM documents').all() as Array<{ id: number; file: string; wrappedKey: Buffer }>) {
        if (wrappedVersion(d.wrappedKey) === WRAP_VERSION) continue;
        const ctx = { purpose: 'document-key' as const, clubId, docFile: d.file };
        const k = unwrapKey(dataKey, d.wrappedKey, ctx);
        upd.run(wrapKey(dataKey, k, ctx), d.id);
        k.fill(0);
      }
    });
  } finally {
    legacy.close();
  }
  for (const suffix of ['-wal', '-shm']) {
    try {
      unlinkSync(path + suffix);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  renameSync(tmp, path);
  fsyncDir(join(path, '..'));
  removeSqliteFiles(tmp);
  return openEncrypted(path, pageKey);
}

/**
 * Open one club store directly (the cache and rotation use this). Each candidate data key is
 * tried through its page key (clubPageKey); a store still in the legacy layout (pages under the
 * data key itself) is migrated to the page key on this open.
 */
export function openClubStore(o: OpenClubStoreOptions): ClubStore {
  const dir = clubDir(o.dataDir, o.clubId);
  const path = join(dir, CLUB_DB_FILE);
  if (o.create) {
    mkdirSync(join(dir, DOCS_DIR), { recursive: true, mode: 0o700 });
  } else if (!existsSync(path)) {
    throw new StorageError('STORE_NOT_FOUND', `store of club ${o.clubId} is missing (${path}); restore it from a backup`);
  }
  for (const cand of o.keys) {
    const pageKey = clubPageKey(cand.key);
    let db: Db | undefined;
    try {
      db = tryOpen(path, pageKey, o.create);
      if (!db && !o.create) {
        const legacy = tryOpen(path, cand.key, false);
        if (legacy) db = migrateLegacyStore(legacy, path, o.clubId, cand.key, pageKey);
      }
    } finally {
      pageKey.fill(0);
    }
    if (!db) continue;
    try {
      migrate(db, MIGRATIONS, `store of club ${o.clubId}`);
    } catch (e) {
      db.close();
      throw e;
    }
    return new ClubStore(o.clubId, dir, db, cand.key, cand.version);
  }
  throw new StorageError('WRONG_DATA_KEY', `no data key of club ${o.clubId} opens ${path}; the store is damaged or was replaced. Restore it from a backup`);
}

/** What the cache needs to open a club: supplied by the storage context from the server db. */
export interface ClubOpenInfo {
  keys: Array<{ key: Buffer; version: number }>;
  create: boolean;
  /** Called once right after a lazily created store got its schema (e.g. insert the admin). */
  afterCreate?: (store: ClubStore) => void;
}

export interface ClubStoreCacheOptions {
  dataDir: string;
  maxOpen: number;
  resolve: (clubId: string) => ClubOpenInfo;
  logger?: StorageLogger;
}

export class ClubStoreCache {
  readonly maxOpen: number;
  readonly #dataDir: string;
  readonly #resolve: (clubId: string) => ClubOpenInfo;
  readonly #log: StorageLogger;
  /** Insertion order = recency order (re-inserted on every hit). */
  readonly #open = new Map<string, ClubStore>();
  readonly #locked = new Set<string>();
  #closed = false;

  constructor(o: ClubStoreCacheOptions) {
    if (!(o.maxOpen >= 1)) throw new StorageError('INVALID_ARGUMENT', 'maxOpen must be at least 1');
    this.maxOpen = o.maxOpen;
    this.#dataDir = o.dataDir;
    this.#resolve = o.resolve;
    this.#log = o.logger ?? silentLogger;
  }

  get size(): number {
    return this.#open.size;
  }

  isOpen(clubId: string): boolean {
    return this.#open.has(clubId);
  }

  get(clubId: string): ClubStore {
    if (this.#closed) throw new StorageError('STORE_BUSY', 'store cache is closed (server shutting down)');
    if (this.#locked.has(clubId)) throw new StorageError('STORE_BUSY', `club ${clubId} is being maintained (key rotation or deletion); retry shortly`);
    const hit = this.#open.get(clubId);
    if (hit) {
      this.#open.delete(clubId);
      this.#open.set(clubId, hit);
      return hit;
    }
    const info = this.#resolve(clubId);
    try {
      const store = openClubStore({ dataDir: this.#dataDir, clubId, keys: info.keys, create: info.create });
      if (info.create && info.afterCreate) {
        try {
          info.afterCreate(store);
        } catch (e) {
          store.close();
          throw e;
        }
      }
      this.#open.set(clubId, store);
      this.#evict();
      return store;
    } finally {
      for (const k of info.keys) k.key.fill(0);
    }
  }

  #evict(): void {
    while (this.#open.size > this.maxOpen) {
      const [oldest, store] = this.#open.entries().next().value as [string, ClubStore];
      this.#open.delete(oldest);
      store.close();
      this.#log.info('club store closed (cache full)', { clubId: oldest });
    }
  }

  /** Close a club's store if open (before rotation, deletion, or to drop a suspended club). */
  evict(clubId: string): void {
    const s = this.#open.get(clubId);
    if (s) {
      this.#open.delete(clubId);
      s.close();
    }
  }

  /** Close the store and refuse `get()` for it until the returned release is called. */
  lock(clubId: string): () => void {
    if (this.#locked.has(clubId)) throw new StorageError('STORE_BUSY', `club ${clubId} is already being maintained`);
    this.evict(clubId);
    this.#locked.add(clubId);
    return () => {
      this.#locked.delete(clubId);
    };
  }

  closeAll(): void {
    for (const s of this.#open.values()) s.close();
    this.#open.clear();
    this.#closed = true;
  }
}
