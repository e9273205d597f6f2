/**
 * Restoring a club from an archive: plan (what would change), then swap the rebuilt store in,
 * carrying the live change log when it is newer, and keep the replaced store under pre-restore/.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, readdirSync, rmSync, renameSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createEncryptStream } from '../../crypto/chunked-aead.js';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { clubPageKey, newDataKey, wrapKey } from '../../crypto/wrap.js';
import { AuditLog, ensureAuditTables, type AuditSigner, type AuditVerifier } from '../club/audit-log.js';
import { applyModelSchema, copyImageRows } from './restore-schema.js';
import { signTranscript } from '../../crypto/identity.js';
import { BackupError } from './backup-errors.js';
import { CLUB_DB_FILE, DOCS_DIR, clubDir } from '../club/club-store.js';
import { DOC_SUFFIX } from '../club/documents.js';
import { StorageError } from '../engine/errors.js';
import { PLANS, type Plan } from '../server/server-db.js';
import { openEncrypted, type Db } from '../engine/sqlcipher.js';
import { unwrapClubKey, type Storage } from '../server/storage.js';
import { clubSealingKey } from './archive-keys.js';
import { loadDataDirIdentity, type VerifiedOrigin } from './archive-origin.js';
import { OpenKey } from './club-backup-keys.js';
import { checkImage, headVerifier, needTrust, openCheckedImage, walkArchive } from './archive-reader.js';
import { ARCHIVE_SUFFIX, Manifest, VOLATILE_TABLES, inspectImage } from './archive-format.js';
import { createClubArchive, writeFileAtomic } from './archive-writer.js';
import type { SnapshotPool } from './snapshot-pool.js';

// ---- restore -------------------------------------------------------------------------------

/** Folder of the automatic archives taken before a restore replaces a club: <data>/pre-restore/<club>/. */
export function preRestoreDir(dataDir: string, clubId: string): string {
  return join(dataDir, 'pre-restore', basename(clubDir(dataDir, clubId)));
}

export interface RestoreOptions {
  /** Who asked, for the change-log entry: e.g. "operator:alice (sudo from bob)" or a client user. */
  actor?: string;
  /** Where the archive came from, for the change-log entry. */
  source?: string;
  now?: () => Date;
  /** Read and check everything, report what would change, write nothing. */
  dryRun?: boolean;
  /** Replacing a club that has live data needs this (the operator's --yes or interactive confirmation). */
  yes?: boolean;
  /** Snapshot workers (snapshot-pool.ts): the pre-restore archive is made there, off the event loop. */
  snapshots?: SnapshotPool;
}

interface LogRange {
  entries: number;
  firstSeq: number | null;
  lastSeq: number | null;
  lastHash: string | null;
}

export interface RestorePlan {
  dryRun: true;
  clubId: string;
  createdAt: string;
  origin: VerifiedOrigin;
  inArchive: { tables: Record<string, number>; documents: number; log: LogRange };
  /** The club as it is now (null: not on this server; the restore would create it). */
  live: { tables: Record<string, number>; documents: number; log: LogRange } | null;
  /** Change-log entries written after the archive's last entry; a restore keeps them. */
  logEntriesAfterArchive: number;
  /** Whether the archive's last log entry is found, unchanged, in the live log. */
  archiveHeadInLiveLog: boolean | null;
}

export interface RestoreReport {
  clubId: string;
  createdAt: string;
  documents: number;
  tables: Record<string, number>;
  createdClub: boolean;
  origin: VerifiedOrigin;
  /** The automatic archive of the state that was replaced (server-sealed, signed); null when the club was created. */
  preRestoreArchive: string | null;
  /** Change-log entries kept from the live club (all of them; those after the archive included). */
  keptLogEntries: number;
  logEntriesAfterArchive: number;
  /** Sequence number of the restore entry in the change log. */
  restoreEntrySeq: number | null;
}

function logRange(db: Db): LogRange {
  const r = db.prepare('SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM audit_log').get() as { n: number; lo: number | null; hi: number | null };
  const last = r.hi === null ? undefined : (db.prepare('SELECT hash FROM audit_log WHERE seq = ?').get(r.hi) as { hash: string } | undefined);
  return { entries: r.n, firstSeq: r.lo, lastSeq: r.hi, lastHash: last?.hash ?? null };
}

function hasTable(db: Db, name: string): boolean {
  return db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined;
}

/** Archive head vs live log: entries after it, and whether it is in the live log unchanged. */
function compareLogs(archive: LogRange, live: Db): { after: number; inLive: boolean | null } {
  if (!hasTable(live, 'audit_log')) return { after: 0, inLive: null };
  if (archive.lastSeq === null) return { after: (live.prepare('SELECT count(*) AS n FROM audit_log').get() as { n: number }).n, inLive: null };
  const at = live.prepare('SELECT hash FROM audit_log WHERE seq = ?').get(archive.lastSeq) as { hash: string } | undefined;
  const after = (live.prepare('SELECT count(*) AS n FROM audit_log WHERE seq > ?').get(archive.lastSeq) as { n: number }).n;
  return { after, inLive: at !== undefined && at.hash === archive.lastHash };
}

/** Copy the live change log (entries and signed heads) into the restored store, rows only. */
function carryLiveLog(live: Db, dst: Db): number {
  if (!hasTable(live, 'audit_log')) return 0;
  ensureAuditTables(live);
  let n = 0;
  for (const t of ['audit_log', 'audit_heads']) {
    const cols = (dst.pragma(`table_info(${t})`) as Array<{ name: string }>).map((c) => `"${c.name}"`);
    const ins = dst.prepare(`INSERT INTO main.${t} (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`);
    for (const row of live.prepare(`SELECT ${cols.join(', ')} FROM main.${t} ORDER BY rowid`).raw(true).safeIntegers(true).iterate() as IterableIterator<unknown[]>) {
      ins.run(...row);
      if (t === 'audit_log') n++;
    }
  }
  return n;
}

function auditSignerOf(st: Storage): AuditSigner | undefined {
  const id = st.identity ?? loadDataDirIdentity(st.dataDir);
  return id ? { sign: (b) => signTranscript(id, b), fingerprint: id.fingerprint } : undefined;
}

function liveStoreExists(st: Storage, clubId: string): boolean {
  return st.server.getClub(clubId) !== undefined && existsSync(join(clubDir(st.dataDir, clubId), CLUB_DB_FILE));
}

/**
 * What a restore would do, without doing it: the archive is read and checked completely (origin,
 * hashes, schema, change log), and compared with the live club.
 */
export async function planClubRestore(st: Storage, clubId: string, source: AsyncIterable<Uint8Array>, key: OpenKey): Promise<RestorePlan> {
  let verifier: AuditVerifier | undefined;
  let archiveLog: LogRange = { entries: 0, firstSeq: null, lastSeq: null, lastHash: null };
  const { header, manifest, origin } = await walkArchive(source, key, {
    origin(o, seen) {
      verifier = headVerifier(needTrust(key), o, seen);
    },
    image(m, image) {
      if (m.clubId !== clubId) throw new BackupError('CLUB_MISMATCH', `the archive belongs to club ${m.clubId}, not ${clubId}`);
      const db = openCheckedImage(image);
      try {
        const c = checkImage(db, m, verifier!);
        if (c.tables.includes('audit_log')) archiveLog = logRange(db);
      } finally {
        db.close();
      }
    },
  });
  let live: RestorePlan['live'] = null;
  let cmp: { after: number; inLive: boolean | null } = { after: 0, inLive: null };
  if (liveStoreExists(st, clubId)) {
    const db = st.openClub(clubId, { allowSuspended: true }).db;
    const facts = inspectImage(db);
    const tables = Object.fromEntries(Object.entries(facts.tables).filter(([t]) => !VOLATILE_TABLES.has(t)));
    live = { tables, documents: facts.tables['documents'] ?? 0, log: hasTable(db, 'audit_log') ? logRange(db) : { entries: 0, firstSeq: null, lastSeq: null, lastHash: null } };
    cmp = compareLogs(archiveLog, db);
  }
  const tables = Object.fromEntries(Object.entries(manifest.tables).filter(([t]) => !VOLATILE_TABLES.has(t)));
  return { dryRun: true, clubId, createdAt: header.createdAt, origin: origin!, inArchive: { tables, documents: manifest.documents.length, log: archiveLog }, live, logEntriesAfterArchive: cmp.after, archiveHeadInLiveLog: cmp.inLive };
}

/**
 * Restore a club from an archive into a fresh store, swapped in atomically: the new store is
 * built next to the live one (club.db.restoring, documents under new names and new keys), and
 * only when the whole archive has been read and checked does one rename replace club.db.
 *
 * - The archive's origin, hashes, schema and change log are checked (as verifyArchive) before
 *   anything is written; its schema is never executed: the target's schema comes from our
 *   migrations and the archive supplies rows (storage/backup/restore-schema.ts).
 * - A club with live data is replaced only with `yes` (CONFIRMATION_REQUIRED otherwise); before
 *   it is replaced, an automatic server-sealed archive of its current state is written to
 *   preRestoreDir and named in the report and the change log.
 * - The live change log is kept whole (every entry, including those written after the
 *   archive, and its signed heads); the restore entry is appended to it, naming the archive,
 *   the replaced head, the pre-restore archive and the operator, and is signed.
 * - A club missing on this server is created from the manifest (name, plan, settings) with a new
 *   data key; its change log is the archive's.
 */
export async function restoreClubArchive(st: Storage, clubId: string, source: AsyncIterable<Uint8Array>, key: OpenKey, o: RestoreOptions = {}): Promise<RestoreReport> {
  const trust = needTrust(key);
  const replacing = liveStoreExists(st, clubId);
  if (replacing && !o.yes) throw new BackupError('CONFIRMATION_REQUIRED', `club ${clubId} has live data; restoring replaces it. Look first with --dry-run, then confirm with --yes`);
  let createdClub = false;
  const dir = clubDir(st.dataDir, clubId);
  const tmpDb = join(dir, `${CLUB_DB_FILE}.restoring`);
  const newFiles: string[] = [];
  const docMap = new Map<number, { file: string; wrapped: Buffer }>();
  let dataKey: Buffer | undefined;
  let target: Db | undefined;
  let verifier: AuditVerifier | undefined;
  let archiveLog: LogRange = { entries: 0, firstSeq: null, lastSeq: null, lastHash: null };
  let preRestoreArchive: string | null = null;
  const ensureClub = (m: Manifest): void => {
    let row = st.server.getClub(clubId);
    if (!row) {
      const plan: Plan = (PLANS as readonly string[]).includes(m.club.plan) ? m.club.plan : 'basic';
      const k = newDataKey();
      st.server.insertClub({
        id: clubId,
        name: m.club.name,
        plan,
        status: 'active',
        created: new Date().toISOString(),
        settings: m.club.settings ?? {},
        wrappedKey: wrapKey(st.master.key, k, { purpose: 'club-data-key', clubId, keyVersion: 1 }),
        keyVersion: 1,
        pendingWrappedKey: null,
        pendingKeyVersion: null,
        storeState: 'pending',
        pendingAdmin: null,
      });
      k.fill(0);
      createdClub = true;
      row = st.server.mustGetClub(clubId);
    }
    if (row.status === 'deleting' || !row.wrappedKey) throw new StorageError('CLUB_DELETED', `club ${clubId} is being deleted; finish the deletion first`);
    if (row.pendingWrappedKey) throw new StorageError('ROTATION_IN_PROGRESS', `club ${clubId} has an unfinished key rotation; finish it (commusicctl keys rotate-club ${clubId}) before restoring`);
    dataKey = unwrapClubKey(st.master, clubId, row.wrappedKey, row.keyVersion);
  };
  try {
    const { header, manifest, origin } = await walkArchive(source, key, {
      origin(og, seen) {
        verifier = headVerifier(trust, og, seen);
      },
      image(m, image) {
        if (m.clubId !== clubId) throw new BackupError('CLUB_MISMATCH', `the archive belongs to club ${m.clubId}, not ${clubId}`);
        const mem = openCheckedImage(image);
        try {
          const c = checkImage(mem, m, verifier!);
          if (c.tables.includes('audit_log')) archiveLog = logRange(mem);
          ensureClub(m);
          mkdirSync(join(dir, DOCS_DIR), { recursive: true, mode: 0o700 });
          for (const s of ['', '-journal', '-wal', '-shm']) rmSync(tmpDb + s, { force: true });
          target = openEncrypted(tmpDb, clubPageKey(dataKey!), { create: true, journalMode: 'DELETE' });
          applyModelSchema(target, c.version);
          copyImageRows(mem, target, c.tables, replacing ? new Set(['audit_log', 'audit_heads']) : new Set());
        } finally {
          mem.close();
        }
      },
      async document(d, data) {
        const file = randomBytes(16).toString('hex') + DOC_SUFFIX;
        const docKey = randomBytes(32);
        const path = join(dir, DOCS_DIR, file);
        newFiles.push(path);
        try {
          await pipeline(Readable.from(data, { objectMode: false }), createEncryptStream(docKey), createWriteStream(path, { flags: 'wx', mode: 0o600, highWaterMark: 1 << 20 }));
          const fh = await open(path, 'r');
          try {
            await fh.sync();
          } finally {
            await fh.close();
          }
          docMap.set(d.id, { file, wrapped: wrapKey(dataKey!, docKey, { purpose: 'document-key', clubId, docFile: file }) });
        } finally {
          docKey.fill(0);
        }
      },
    });
    if (!target) throw new BackupError('ARCHIVE_INVALID', 'backup archive has no store image');
    const db: Db = target;
    fsyncDir(join(dir, DOCS_DIR));
    db.transaction(() => {
      const upd = db.prepare('UPDATE documents SET file = ?, wrappedKey = ? WHERE id = ?');
      for (const [id, v] of docMap) upd.run(v.file, v.wrapped, id);
    })();
    // The automatic archive of what is about to be replaced.
    if (replacing) {
      const stamp = new Date().toISOString().replace(/[:.]/g, '-');
      preRestoreArchive = join(preRestoreDir(st.dataDir, clubId), `${clubId}-${stamp}-pre-restore${ARCHIVE_SUFFIX}`);
      const sealKey = clubSealingKey(st, clubId);
      try {
        if (o.snapshots) await o.snapshots.archive(st, clubId, sealKey, preRestoreArchive);
        else await writeFileAtomic(createClubArchive(st, clubId, { kind: 'server', key: sealKey }).stream, preRestoreArchive);
      } finally {
        sealKey.fill(0);
      }
    }
    // Commit point: with the live store closed and held, carry its log over, log the restore, one rename.
    const release = st.cache.lock(clubId);
    let oldFiles: string[] = [];
    let kept = 0;
    let after = 0;
    let inLive: boolean | null = null;
    let replacedHead: { seq: number | null; hash: string | null } | null = null;
    let restoreEntrySeq: number | null = null;
    try {
      const live = join(dir, CLUB_DB_FILE);
      if (replacing) {
        const liveDb = openEncrypted(live, clubPageKey(dataKey!), { journalMode: 'keep' });
        try {
          const cmp = compareLogs(archiveLog, liveDb);
          after = cmp.after;
          inLive = cmp.inLive;
          if (hasTable(liveDb, 'audit_log')) {
            const r = logRange(liveDb);
            replacedHead = { seq: r.lastSeq, hash: r.lastHash };
          }
          db.transaction(() => {
            kept = carryLiveLog(liveDb, db);
          })();
        } finally {
          liveDb.close();
        }
      }
      if (hasTable(db, 'audit_log')) {
        const log = new AuditLog(db, clubId, { ...(o.now ? { now: o.now } : {}), ...(auditSignerOf(st) ? { signer: auditSignerOf(st)! } : {}) });
        db.transaction(() => {
          const e = log.append({
            user: o.actor ?? 'operator:unnamed',
            ip: null,
            session: null,
            action: 'backup.restore',
            entity: null,
            recordId: null,
            changes: {
              archiveCreatedAt: header.createdAt,
              archiveKind: header.kind,
              archiveOrigin: origin!.alg === 'rsa-pss' ? `key ${origin!.fingerprint} (${origin!.trustedAs})` : 'this server (archive key MAC)',
              archiveLogHead: archiveLog.lastSeq === null ? null : { seq: archiveLog.lastSeq, hash: archiveLog.lastHash },
              archiveHeadInLog: inLive,
              replacedHead,
              keptEntriesAfterArchive: after,
              preRestoreArchive: preRestoreArchive ? basename(preRestoreArchive) : null,
              source: o.source ?? null,
              documents: manifest.documents.length,
            },
          });
          restoreEntrySeq = e.seq;
          log.signHead();
        })();
      }
      db.close();
      target = undefined;
      for (const s of ['-wal', '-shm']) rmSync(live + s, { force: true });
      renameSync(tmpDb, live);
      fsyncDir(dir);
      st.server.markStoreCreated(clubId);
      const keep = new Set([...docMap.values()].map((v) => v.file));
      oldFiles = readdirSync(join(dir, DOCS_DIR)).filter((n) => n.endsWith(DOC_SUFFIX) && !keep.has(n));
    } finally {
      release();
    }
    for (const f of oldFiles) rmSync(join(dir, DOCS_DIR, f), { force: true });
    if (oldFiles.length) fsyncDir(join(dir, DOCS_DIR));
    return { clubId, createdAt: header.createdAt, documents: manifest.documents.length, tables: manifest.tables, createdClub, origin: origin!, preRestoreArchive, keptLogEntries: kept, logEntriesAfterArchive: after, restoreEntrySeq };
  } catch (e) {
    (target as Db | undefined)?.close();
    for (const s of ['', '-journal', '-wal', '-shm']) rmSync(tmpDb + s, { force: true });
    for (const f of newFiles) rmSync(f, { force: true });
    if (createdClub && !existsSync(join(dir, CLUB_DB_FILE))) st.server.deleteClubRow(clubId);
    throw e;
  } finally {
    dataKey?.fill(0);
  }
}
