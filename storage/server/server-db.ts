/**
 * The server database `<data>/server.db`: which clubs exist, their plan, status and settings,
 * and each club's data key wrapped by the master key. It is itself page-encrypted (sqlcipher)
 * under HKDF-SHA256(master key, info "commusic/server-db/v1"), so the master key opens it and
 * nothing else does. WAL + synchronous=FULL: an acknowledged change survives a crash.
 *
 * Key rotation state lives here too (see docs/STORAGE.md): `pendingWrappedKey` and
 * `pendingKeyVersion` hold the next data key of a club while `rotateClub` runs, so a rotation
 * killed at any point can be resumed and the store stays openable with one of the two keys.
 */
import { join } from 'node:path';
import { deriveSubkey } from '../../crypto/wrap.js';
import type { AnchorStore, HeadAnchor } from '../club/audit-log.js';
import { StorageError } from '../engine/errors.js';
import { openEncrypted, migrate, type Db } from '../engine/sqlcipher.js';
import { cachedStatement } from '../engine/statements.js';

export const SERVER_DB_FILE = 'server.db';
export const SERVER_DB_KEY_INFO = 'commusic/server-db/v1';

export const PLANS = ['basic', 'premium', 'federation'] as const;
export type Plan = (typeof PLANS)[number];
export const CLUB_STATUSES = ['active', 'suspended', 'deleting'] as const;
export type ClubStatus = (typeof CLUB_STATUSES)[number];

export interface ClubRow {
  id: string;
  name: string;
  plan: Plan;
  status: ClubStatus;
  created: string;
  settings: Record<string, unknown>;
  wrappedKey: Buffer | null;
  keyVersion: number;
  pendingWrappedKey: Buffer | null;
  pendingKeyVersion: number | null;
  /** 'pending' until the store file is first created (lazy creation), then 'created'. */
  storeState: 'pending' | 'created';
  /** JSON of the administrator to insert when the store is created: {username, passwordHash}. */
  pendingAdmin: { username: string; passwordHash: string; mustChangePassword: boolean } | null;
}

const SERVER_MIGRATIONS = [
  {
    version: 1,
    statements: [
      `CREATE TABLE clubs (
        id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
        name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        plan TEXT NOT NULL CHECK (plan IN ('basic','premium','federation')),
        status TEXT NOT NULL CHECK (status IN ('active','suspended','deleting')),
        created TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        wrapped_key BLOB,
        key_version INTEGER NOT NULL,
        pending_wrapped_key BLOB,
        pending_key_version INTEGER,
        store_state TEXT NOT NULL CHECK (store_state IN ('pending','created')),
        pending_admin TEXT
      ) STRICT`,
      `CREATE INDEX clubs_name_idx ON clubs(name)`,
      `CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) STRICT`,
    ],
  },
  {
    // Change-log anchors (storage/club/audit-log.ts): signed heads of each club's log, kept outside
    // the club store they protect. Rows are only inserted; deleting the club removes them.
    version: 2,
    statements: [
      `CREATE TABLE audit_anchors (
        club_id TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq >= 1),
        hash TEXT NOT NULL CHECK (length(hash) = 64),
        from_seq INTEGER NOT NULL CHECK (from_seq BETWEEN 1 AND seq),
        digests BLOB NOT NULL,
        signature BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        time TEXT NOT NULL,
        PRIMARY KEY (club_id, seq)
      ) STRICT`,
    ],
  },
  {
    // Per-club archive keys (storage/backup/archive-keys.ts), destroyed with the club's data key; and
    // what each club deletion removed (shown by `backup list`). No personal data: ids and counts.
    version: 3,
    statements: [
      `ALTER TABLE clubs ADD COLUMN archive_key BLOB CHECK (archive_key IS NULL OR length(archive_key) = 32)`,
      `CREATE TABLE club_deletions (
        club_id TEXT PRIMARY KEY,
        deleted_at TEXT NOT NULL,
        archives_removed INTEGER NOT NULL DEFAULT 0,
        report TEXT NOT NULL DEFAULT '{}'
      ) STRICT`,
    ],
  },
  {
    // Stored answers of request keys for club commands whose change is the club's row here
    // (storage/server/row-answers.ts), written in the transaction of that change.
    version: 4,
    statements: [
      `CREATE TABLE club_request_keys (
        club_id TEXT NOT NULL,
        rk TEXT NOT NULL CHECK (length(rk) BETWEEN 16 AND 64),
        command TEXT NOT NULL CHECK (length(command) <= 64),
        answer BLOB NOT NULL CHECK (length(answer) <= 4096),
        at INTEGER NOT NULL,
        PRIMARY KEY (club_id, rk)
      ) STRICT`,
    ],
  },
];

interface RawClub {
  id: string;
  name: string;
  plan: string;
  status: string;
  created: string;
  settings: string;
  wrapped_key: Buffer | null;
  key_version: number;
  pending_wrapped_key: Buffer | null;
  pending_key_version: number | null;
  store_state: string;
  pending_admin: string | null;
}

function toClub(r: RawClub): ClubRow {
  return {
    id: r.id,
    name: r.name,
    plan: r.plan as Plan,
    status: r.status as ClubStatus,
    created: r.created,
    settings: JSON.parse(r.settings) as Record<string, unknown>,
    wrappedKey: r.wrapped_key,
    keyVersion: r.key_version,
    pendingWrappedKey: r.pending_wrapped_key,
    pendingKeyVersion: r.pending_key_version,
    storeState: r.store_state as 'pending' | 'created',
    pendingAdmin: r.pending_admin ? (JSON.parse(r.pending_admin) as ClubRow['pendingAdmin']) : null,
  };
}

export function serverDbPath(dataDir: string): string {
  return join(dataDir, SERVER_DB_FILE);
}

export function serverDbKey(masterKey: Buffer): Buffer {
  return deriveSubkey(masterKey, SERVER_DB_KEY_INFO);
}

export class ServerDb implements AnchorStore {
  readonly path: string;
  readonly db: Db;

  private constructor(path: string, db: Db) {
    this.path = path;
    this.db = db;
  }

  /**
   * Open (or with `create`, create) the server database under the master key. A master key that
   * does not open an existing server.db gives WRONG_MASTER_KEY and writes nothing.
   */
  static open(path: string, masterKey: Buffer, opts: { create?: boolean } = {}): ServerDb {
    const key = serverDbKey(masterKey);
    let db: Db;
    try {
      db = openEncrypted(path, key, { create: opts.create ?? false });
    } catch (e) {
      if (e instanceof StorageError && e.code === 'WRONG_DATA_KEY') {
        throw new StorageError('WRONG_MASTER_KEY', `the master key does not open the server database ${path}; nothing was changed. Use the key file that belongs to this data folder (restore it from the key backup)`, { cause: e });
      }
      if (e instanceof StorageError && e.code === 'STORE_NOT_FOUND') {
        throw new StorageError('STORE_NOT_FOUND', `server database ${path} does not exist; initialise the data folder first (start commusicd once, or run commusicctl with --init)`, { cause: e });
      }
      throw e;
    } finally {
      key.fill(0);
    }
    db.pragma('secure_delete=ON');
    migrate(db, SERVER_MIGRATIONS, `server database ${path}`);
    return new ServerDb(path, db);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  getClub(id: string): ClubRow | undefined {
    const r = cachedStatement(this.db, 'SELECT * FROM clubs WHERE id = ?').get(id) as RawClub | undefined;
    return r ? toClub(r) : undefined;
  }

  mustGetClub(id: string): ClubRow {
    const c = this.getClub(id);
    if (!c) throw new StorageError('CLUB_NOT_FOUND', `no club with id ${id}; list them with commusicctl club list`);
    return c;
  }

  listClubs(): ClubRow[] {
    return (this.db.prepare('SELECT * FROM clubs ORDER BY created, id').all() as RawClub[]).map(toClub);
  }

  countClubs(): number {
    return (this.db.prepare('SELECT count(*) AS n FROM clubs').get() as { n: number }).n;
  }

  insertClub(c: ClubRow): void {
    this.db
      .prepare(
        `INSERT INTO clubs (id, name, plan, status, created, settings, wrapped_key, key_version, pending_wrapped_key, pending_key_version, store_state, pending_admin)
         VALUES (@id, @name, @plan, @status, @created, @settings, @wrappedKey, @keyVersion, @pendingWrappedKey, @pendingKeyVersion, @storeState, @pendingAdmin)`,
      )
      .run({
        ...c,
        settings: JSON.stringify(c.settings),
        pendingAdmin: c.pendingAdmin ? JSON.stringify(c.pendingAdmin) : null,
      });
  }

  insertClubs(cs: ClubRow[]): void {
    this.db.transaction(() => {
      for (const c of cs) this.insertClub(c);
    })();
  }

  setStatus(id: string, status: ClubStatus): void {
    this.db.prepare('UPDATE clubs SET status = ? WHERE id = ?').run(status, id);
  }

  /**
   * Crypto-shredding step 1: forget every key of the club (wrapped data keys and its archive key),
   * durable on return, then checkpoint the WAL and truncate it so no frame keeps the old rows
   * (pages are overwritten on delete: SQLite3MultipleCiphers builds with secure_delete on, and it
   * is set on every connection anyway).
   */
  destroyKeys(id: string): void {
    this.db.prepare(`UPDATE clubs SET status = 'deleting', wrapped_key = NULL, pending_wrapped_key = NULL, pending_key_version = NULL, archive_key = NULL WHERE id = ?`).run(id);
    this.checkpointTruncate();
  }

  /** Move every WAL frame into server.db and truncate server.db-wal to zero bytes. */
  checkpointTruncate(): void {
    const r = this.db.pragma('wal_checkpoint(TRUNCATE)') as Array<{ busy: number; log: number; checkpointed: number }>;
    if (r[0] && r[0].busy !== 0) throw new StorageError('STORE_BUSY', `server database ${this.path}: the WAL could not be checkpointed (a reader is active); retry`);
  }

  /** The club's archive key (32 bytes) or null (deleted, or not created yet). */
  getArchiveKey(id: string): Buffer | null {
    const r = this.db.prepare('SELECT archive_key FROM clubs WHERE id = ?').get(id) as { archive_key: Buffer | null } | undefined;
    return r?.archive_key ?? null;
  }

  /** Set the archive key only where none is set and the club is not being deleted; returns the key now stored. */
  initArchiveKey(id: string, key: Buffer): Buffer | null {
    this.db.prepare(`UPDATE clubs SET archive_key = ? WHERE id = ? AND archive_key IS NULL AND status != 'deleting'`).run(key, id);
    return this.getArchiveKey(id);
  }

  /**
   * Replace the club's archive key (a cluster member adopting the key all members share,
   * docs/CLUSTER.md "Backups"); refused (no change) for a club being deleted. Returns the key now stored.
   */
  setArchiveKey(id: string, key: Buffer): Buffer | null {
    this.db.prepare(`UPDATE clubs SET archive_key = ? WHERE id = ? AND status != 'deleting'`).run(key, id);
    return this.getArchiveKey(id);
  }

  /** Record that club `id` was deleted at ISO time `at` (ids and counts only; no personal data). */
  recordDeletion(id: string, at: string): void {
    this.db.prepare(`INSERT INTO club_deletions (club_id, deleted_at) VALUES (?, ?) ON CONFLICT (club_id) DO UPDATE SET deleted_at = excluded.deleted_at`).run(id, at);
  }

  /** Add what a purge removed to the club's deletion record. */
  recordArchivePurge(id: string, removed: number, report: Record<string, unknown>): void {
    this.db.prepare(`UPDATE club_deletions SET archives_removed = archives_removed + ?, report = ? WHERE club_id = ?`).run(removed, JSON.stringify(report), id);
  }

  /** Every deletion record, oldest first (`backup list`, retention). */
  listDeletions(): Array<{ clubId: string; deletedAt: string; archivesRemoved: number; report: Record<string, unknown> }> {
    return (this.db.prepare('SELECT club_id, deleted_at, archives_removed, report FROM club_deletions ORDER BY deleted_at').all() as Array<{ club_id: string; deleted_at: string; archives_removed: number; report: string }>).map((r) => ({
      clubId: r.club_id,
      deletedAt: r.deleted_at,
      archivesRemoved: r.archives_removed,
      report: JSON.parse(r.report) as Record<string, unknown>,
    }));
  }

  /** Remove the club's row and the stored answers of its row commands. */
  deleteClubRow(id: string): void {
    this.db.transaction(() => {
      this.db.prepare('DELETE FROM clubs WHERE id = ?').run(id);
      this.db.prepare('DELETE FROM club_request_keys WHERE club_id = ?').run(id);
    })();
  }

  markStoreCreated(id: string): void {
    this.db.prepare(`UPDATE clubs SET store_state = 'created', pending_admin = NULL WHERE id = ?`).run(id);
  }

  setPendingKey(id: string, wrapped: Buffer, version: number): void {
    this.db.prepare('UPDATE clubs SET pending_wrapped_key = ?, pending_key_version = ? WHERE id = ?').run(wrapped, version, id);
  }

  /** Rotation's last step: the pending key becomes the current key. */
  promotePendingKey(id: string): void {
    this.db
      .prepare('UPDATE clubs SET wrapped_key = pending_wrapped_key, key_version = pending_key_version, pending_wrapped_key = NULL, pending_key_version = NULL WHERE id = ? AND pending_wrapped_key IS NOT NULL')
      .run(id);
  }

  clearPendingKey(id: string): void {
    this.db.prepare('UPDATE clubs SET pending_wrapped_key = NULL, pending_key_version = NULL WHERE id = ?').run(id);
  }

  setSettings(id: string, settings: Record<string, unknown>): void {
    this.db.prepare('UPDATE clubs SET settings = ? WHERE id = ?').run(JSON.stringify(settings), id);
  }

  /** Record a change-log anchor (an existing anchor at the same seq is kept, never replaced). */
  insertAnchor(a: HeadAnchor): void {
    cachedStatement(this.db, 'INSERT INTO audit_anchors (club_id, seq, hash, from_seq, digests, signature, fingerprint, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING').run(
      a.clubId, a.seq, a.hash, a.fromSeq, a.digests, a.signature, a.fingerprint, a.time,
    );
  }

  /** The club's highest anchored head (seq, hash), or undefined when none is anchored. */
  lastAnchor(clubId: string): { seq: number; hash: string } | undefined {
    return cachedStatement(this.db, 'SELECT seq, hash FROM audit_anchors WHERE club_id = ? ORDER BY seq DESC LIMIT 1').get(clubId) as { seq: number; hash: string } | undefined;
  }

  /** Every anchor of the club, oldest first (what `log verify` checks the store against). */
  listAnchors(clubId: string): HeadAnchor[] {
    const rows = this.db.prepare('SELECT seq, hash, from_seq, digests, signature, fingerprint, time FROM audit_anchors WHERE club_id = ? ORDER BY seq').all(clubId) as Array<{
      seq: number; hash: string; from_seq: number; digests: Buffer; signature: Buffer; fingerprint: string; time: string;
    }>;
    return rows.map((r) => ({ clubId, seq: r.seq, hash: r.hash, fromSeq: r.from_seq, digests: r.digests, signature: r.signature, fingerprint: r.fingerprint, time: r.time }));
  }

  /** Forget a club's anchors from `seq` on (anchors of entries that never became part of the log). */
  deleteAnchorsFrom(clubId: string, seq: number): number {
    return this.db.prepare('DELETE FROM audit_anchors WHERE club_id = ? AND seq >= ?').run(clubId, seq).changes;
  }

  /** Forget a club's anchors (club deletion; a restore that replaces the log starts anew). */
  deleteAnchors(clubId: string): number {
    return this.db.prepare('DELETE FROM audit_anchors WHERE club_id = ?').run(clubId).changes;
  }

  getMeta(k: string): string | undefined {
    return (this.db.prepare('SELECT v FROM meta WHERE k = ?').get(k) as { v: string } | undefined)?.v;
  }

  setMeta(k: string, v: string): void {
    this.db.prepare('INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v').run(k, v);
  }
}
