/**
 * Writing an archive: the in-memory snapshot of a club (one read transaction), the plaintext tar
 * streamed through encryption, and the atomic write of the file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, linkSync, mkdirSync, readdirSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDecryptStream, createEncryptStream } from '../../crypto/chunked-aead.js';
import { CryptoError } from '../../crypto/errors.js';
import { fsyncDirAsync } from '../../crypto/atomic-file.js';
import { TAR_END, tarHeader, tarPadding } from './backup-tar.js';
import { CLUB_DB_FILE, clubDir, type ClubStore } from '../club/club-store.js';
import { StorageError } from '../engine/errors.js';
import { type Storage } from '../server/storage.js';
import type { ClubRow } from '../server/server-db.js';
import { hashTap } from '../engine/hash-tap.js';
import { ORIGIN_ENTRY, signOrigin, type OriginSigner } from './archive-origin.js';
import { ClubSnapshot, MANIFEST_FORMAT, Manifest, ManifestDocument, SnapDoc, inspectImage, openImage, sealHeader } from './archive-format.js';
import { SealKey, archiveSigner } from './club-backup-keys.js';

/**
 * Snapshot a club: in one synchronous step (no other statement of this process runs in
 * between, and a read transaction covers both reads) the store image, the document rows, hard
 * links to the documents' encrypted files (so a deletion after this moment cannot take them
 * away), and the documents' keys. Everything after works on the snapshot. This runs on the
 * calling thread; the nightly run uses a worker thread instead (snapshot-pool.ts).
 */
export function takeClubSnapshot(st: Storage, clubId: string, now: Date = new Date()): ClubSnapshot {
  const row = st.server.mustGetClub(clubId);
  const store = st.openClub(clubId, { allowSuspended: true });
  const taken = snapshotStore(store);
  let inspected: InspectedImage;
  try {
    inspected = inspectSnapshotImage(taken.image);
  } catch (e) {
    releaseTaken(taken);
    throw e;
  }
  return assembleSnapshot(row, taken, inspected, now);
}

/** What the read transaction of a snapshot gives: the image, the documents (linked, keys unwrapped), the staging folder. */
export interface TakenStore {
  image: Buffer;
  docs: SnapDoc[];
  staging: string;
}

/** The image facts a manifest carries (inspectImage) and the image's SHA-256. */
export interface InspectedImage {
  facts: Pick<Manifest, 'schemaVersion' | 'tables' | 'auditHead' | 'dataFingerprint'>;
  sha256: string;
}

/**
 * One read transaction on an open store: its image (sqlite3_serialize), the document rows, a hard
 * link to each document's file in a new staging folder, and each document's key. On failure the
 * keys are zeroed and the staging folder removed. Errors: StorageError DOC_NOT_FOUND for a
 * missing document file, else what SQLite or the file system threw.
 */
export function snapshotStore(store: ClubStore): TakenStore {
  const clubId = store.clubId;
  const staging = join(store.dir, `.backup-${randomBytes(6).toString('hex')}`);
  const docs: SnapDoc[] = [];
  let image!: Buffer;
  let replicated = false;
  mkdirSync(staging, { mode: 0o700 });
  try {
    store.db.transaction(() => {
      image = store.db.serialize();
      replicated = store.db.prepare(REPLICATION_OBJECTS).get() !== undefined;
      const rows = store.db.prepare('SELECT id, kind, name, size, sha256, file, wrappedKey FROM documents ORDER BY id').all() as Array<ManifestDocument & { file: string; wrappedKey: Buffer }>;
      for (const d of rows) {
        const link = join(staging, d.file);
        try {
          linkSync(join(store.docsDir, d.file), link);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new StorageError('DOC_NOT_FOUND', `file of document ${d.id} of club ${clubId} is missing; the backup of this club stops here`, { cause: e });
          throw e;
        }
        docs.push({ id: d.id, kind: d.kind, name: d.name, size: d.size, sha256: d.sha256, path: link, key: store.unwrapDocumentKey(d.wrappedKey, d.file) });
      }
    })();
  } catch (e) {
    releaseTaken({ image, docs, staging });
    throw e;
  }
  if (replicated) image = withoutReplicationObjects(image);
  image[18] = 1;
  image[19] = 1;
  return { image, docs, staging };
}

/**
 * The replication's own tables and triggers in a club store (cluster/capture.ts names them
 * `_cluster_*`), and the stored answers of request keys (storage/club/request-keys.ts: made on
 * first use in a cluster, answers for retries within a day, not club data to restore).
 */
const REPLICATION_OBJECTS = `SELECT type, name FROM sqlite_master WHERE (name LIKE '\\_cluster\\_%' ESCAPE '\\' OR name IN ('request_answers', 'request_keys')) AND type IN ('trigger', 'table') ORDER BY type = 'table'`;

/**
 * A club store on a cluster member also holds the replication's own tables and triggers (names
 * beginning `_cluster_`, cluster/capture.ts) and the stored answers of request keys: bookkeeping,
 * not club data, and not part of the club schema an archive is checked against. They are dropped from the snapshot image (in memory),
 * so an archive made on any member restores anywhere. Images without them are returned as they are.
 */
export function withoutReplicationObjects(image: Buffer): Buffer {
  const mem = openImage(image);
  try {
    const objs = mem.prepare(REPLICATION_OBJECTS).all() as Array<{ type: string; name: string }>;
    if (objs.length === 0) return image;
    for (const o of objs) mem.exec(`DROP ${o.type === 'table' ? 'TABLE' : 'TRIGGER'} IF EXISTS "${o.name.replace(/"/g, '""')}"`);
    mem.exec('VACUUM');
    return mem.serialize();
  } finally {
    mem.close();
  }
}

/** Zero the document keys of a taken snapshot and remove its staging folder. */
export function releaseTaken(t: TakenStore): void {
  for (const d of t.docs) d.key.fill(0);
  rmSync(t.staging, { recursive: true, force: true });
}

/** Inspect a snapshot image (schema version, tables, change-log head, data fingerprint) and hash it. */
export function inspectSnapshotImage(image: Buffer): InspectedImage {
  const mem = openImage(image);
  try {
    return { facts: inspectImage(mem), sha256: createHash('sha256').update(image).digest('hex') };
  } finally {
    mem.close();
  }
}

/** The snapshot of a taken store: its manifest (club row, image facts, documents) and release(). */
export function assembleSnapshot(row: Pick<ClubRow, 'name' | 'plan' | 'settings'> & { id: string }, taken: TakenStore, inspected: InspectedImage, now: Date): ClubSnapshot {
  const { image, docs, staging } = taken;
  const { facts } = inspected;
  const docFp = createHash('sha256').update(facts.dataFingerprint);
  for (const d of docs) docFp.update(`${d.id}:${d.sha256};`);
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    version: 1,
    clubId: row.id,
    club: { name: row.name, plan: row.plan, settings: row.settings },
    createdAt: now.toISOString(),
    schemaVersion: facts.schemaVersion,
    sqlite: { bytes: image.length, sha256: inspected.sha256 },
    tables: facts.tables,
    documents: docs.map(({ id, kind, name, size, sha256 }) => ({ id, kind, name, size, sha256 })),
    auditHead: facts.auditHead,
    dataFingerprint: docFp.digest('hex'),
  };
  let released = false;
  return {
    clubId: row.id,
    manifest,
    image,
    docs,
    staging,
    release() {
      if (released) return;
      released = true;
      releaseTaken(taken);
    },
  };
}

/** Remove staging folders a crash left behind (called before a backup run). */
export function sweepBackupStaging(st: Storage, clubId: string, olderThanMs = 3_600_000): void {
  let dir: string;
  try {
    dir = clubDir(st.dataDir, clubId);
    for (const n of readdirSync(dir)) {
      if (!n.startsWith('.backup-') && !n.startsWith(CLUB_DB_FILE + '.restoring')) continue;
      const p = join(dir, n);
      if (Date.now() - statSync(p).mtimeMs >= olderThanMs) rmSync(p, { recursive: true, force: true });
    }
  } catch {
    /* no folder yet */
  }
}

// ---- writing -------------------------------------------------------------------------------

export function docEntryName(id: number): string {
  return `documents/${id}`;
}

function manifestBytes(m: Manifest): Buffer {
  return Buffer.from(JSON.stringify(m, null, 2) + '\n', 'utf8');
}

async function* plaintextTar(snap: ClubSnapshot, origin: Buffer): AsyncGenerator<Buffer> {
  const mtime = Date.parse(snap.manifest.createdAt) / 1000;
  const manifest = manifestBytes(snap.manifest);
  yield tarHeader('manifest.json', manifest.length, mtime);
  yield manifest;
  yield tarPadding(manifest.length);
  yield tarHeader(ORIGIN_ENTRY, origin.length, mtime);
  yield origin;
  yield tarPadding(origin.length);
  yield tarHeader('club.sqlite', snap.image.length, mtime);
  yield snap.image;
  yield tarPadding(snap.image.length);
  for (const d of snap.docs) {
    yield tarHeader(docEntryName(d.id), d.size, mtime);
    const h = createHash('sha256');
    let n = 0;
    const dec = createDecryptStream(d.key);
    const rs = createReadStream(d.path, { highWaterMark: 1 << 20 });
    rs.on('error', (e) => dec.destroy(e));
    rs.pipe(dec);
    try {
      for await (const c of dec as AsyncIterable<Buffer>) {
        n += c.length;
        if (n > d.size) throw new StorageError('DOC_CORRUPT', `document ${d.id} of club ${snap.clubId} is longer than recorded`);
        h.update(c);
        yield c;
      }
    } catch (e) {
      if (e instanceof CryptoError) throw new StorageError('DOC_CORRUPT', `document ${d.id} of club ${snap.clubId} is damaged (${e.message}); the backup of this club stops here`, { cause: e });
      throw e;
    } finally {
      rs.destroy();
    }
    if (n !== d.size || h.digest('hex') !== d.sha256) throw new StorageError('DOC_CORRUPT', `document ${d.id} of club ${snap.clubId} does not match its recorded size/SHA-256; the backup of this club stops here`);
    yield tarPadding(d.size);
  }
  yield TAR_END;
}

/**
 * The encrypted archive of a snapshot as a stream. The snapshot is released (keys zeroed,
 * staging links removed) when the stream ends, fails or is destroyed.
 */
export function archiveStream(snap: ClubSnapshot, key: SealKey, o: { signer: OriginSigner; now?: Date; chunkLog2?: number }): Readable {
  const sealed = sealHeader(snap.clubId, key, o.now ?? new Date(snap.manifest.createdAt));
  const origin = signOrigin(o.signer, sealed.header, manifestBytes(snap.manifest));
  const enc = createEncryptStream(sealed.key, o.chunkLog2 !== undefined ? { chunkLog2: o.chunkLog2 } : {});
  sealed.key.fill(0);
  const src = Readable.from(plaintextTar(snap, origin), { objectMode: false, highWaterMark: 1 << 20 });
  src.on('error', (e) => enc.destroy(e));
  src.pipe(enc);
  async function* out(): AsyncGenerator<Buffer> {
    try {
      yield sealed.header;
      for await (const c of enc as AsyncIterable<Buffer>) yield c;
    } finally {
      src.destroy();
      enc.destroy();
      snap.release();
    }
  }
  return Readable.from(out(), { objectMode: false, highWaterMark: 1 << 20 });
}

/** Snapshot a club and give its encrypted archive stream, signed by this server (archiveSigner). */
export function createClubArchive(st: Storage, clubId: string, key: SealKey, o: { now?: Date } = {}): { manifest: Manifest; stream: Readable } {
  const signer = archiveSigner(st);
  const snap = takeClubSnapshot(st, clubId, o.now);
  return { manifest: snap.manifest, stream: archiveStream(snap, key, { ...o, signer }) };
}

/** Write a stream to `path` atomically (temp file, fsync, rename, fsync folder). */
export async function writeFileAtomic(stream: AsyncIterable<Uint8Array>, path: string): Promise<{ size: number; sha256: string }> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
  const tap = hashTap();
  try {
    await pipeline(stream, tap, createWriteStream(tmp, { flags: 'wx', mode: 0o600, highWaterMark: 1 << 20 }));
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    await fsyncDirAsync(dirname(path));
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* not created */
    }
    throw e;
  }
  return tap.digest();
}
