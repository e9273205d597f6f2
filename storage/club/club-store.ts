/**
 * Per-club stores: one SQLite file per club, `<data>/clubs/<id>/club.db`, page-encrypted with the
 * club's 256-bit data key (sqlcipher scheme), WAL + synchronous=FULL, schema migrations applied
 * on open. Stores are created lazily: provisioning writes the club's row (with its wrapped key)
 * to the server database, and the file is created on first open. That is what makes provisioning
 * thousands of clubs, and starting a server that hosts them, cheap.
 *
 * `ClubStoreCache` opens stores on demand and keeps at most `maxOpen` open under W-TinyLFU (see
 * the class). better-sqlite3 is synchronous, so a store obtained from `get()` is safe to use
 * until the next `await`; code that awaits must call `get()` again afterwards.
 */
import { mkdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { clubPageKey, unwrapKey, wrapKey, wrappedVersion, WRAP_VERSION } from '../../crypto/wrap.js';
import { reencryptCopy, removeSqliteFiles, swapInSqliteFile } from '../engine/rekey.js';
import { StorageError } from '../engine/errors.js';
import { MIGRATIONS } from './schema.js';
import { openEncrypted, migrate, type Db } from '../engine/sqlcipher.js';
import { WriteGroup } from './write-group.js';

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
  /** Group commit of this store's data writes (write-group.ts); close() commits what it holds first. */
  readonly writes: WriteGroup;
  #key: Buffer;

  constructor(clubId: string, dir: string, db: Db, key: Buffer, keyVersion: number) {
    this.clubId = clubId;
    this.dir = dir;
    this.db = db;
    this.#key = Buffer.from(key);
    this.keyVersion = keyVersion;
    this.writes = new WriteGroup(db);
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
    // No explicit checkpoint: closing the last connection checkpoints the WAL and removes it
    // (SQLite's own close path); a TRUNCATE checkpoint first did the same work twice on every
    // eviction. The WAL cannot be kept between opens: SQLITE_FCNTL_PERSIST_WAL is not reachable
    // through better-sqlite3.
    if (this.db.open) {
      // Writes queued for a group commit are applied and committed before the store goes
      // (eviction, maintenance lock, shutdown): none is dropped unanswered.
      this.writes.flush();
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
  swapInSqliteFile(tmp, path);
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
