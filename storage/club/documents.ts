/**
 * Encrypted documents of a club (honour files, federation registration files, reporter
 * documents): `<data>/clubs/<id>/docs/<random>.cmdoc`, each under its own random 256-bit key,
 * encrypted with chunked AES-256-GCM (crypto/chunked-aead.ts). The document key is stored only
 * wrapped by the club data key, in the `documents` row of the (encrypted) club store, together
 * with name, kind, size and the SHA-256 of the plaintext.
 *
 * Writing is atomic and streamed: plaintext -> SHA-256/size tap -> encrypt -> temporary file
 * (O_EXCL, 0600), fsync, rename, fsync folder, then the row is inserted. A crash leaves either no
 * row (and at worst an unreferenced file, removed by sweepOrphanDocuments) or row and file both.
 * Reading streams back, authenticates every chunk, and checks size and SHA-256 at the end.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { createDecryptStream, createEncryptStream } from '../../crypto/chunked-aead.js';
import { CryptoError } from '../../crypto/errors.js';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { StorageError } from '../engine/errors.js';
import { MODEL } from './model.js';
import type { Storage } from '../server/storage.js';
import { hashTap } from '../engine/hash-tap.js';

export const DOC_SUFFIX = '.cmdoc';
export const DEFAULT_MAX_DOCUMENT_BYTES = 1024 ** 3;
export const DOCUMENT_KINDS = ['honour', 'federation-registration', 'reporter', 'other'] as const;
export type DocumentKind = (typeof DOCUMENT_KINDS)[number];

export interface DocumentMeta {
  kind: DocumentKind;
  name: string;
  mediaType?: string;
  personId?: number;
}

export interface DocumentInfo {
  id: number;
  kind: DocumentKind;
  name: string;
  mediaType: string | null;
  personId: number | null;
  size: number;
  sha256: string;
  createdAt: string;
}

export interface PutDocumentOptions {
  maxBytes?: number;
  chunkLog2?: number;
  /** Called at each step; 'recorded' gets the new row, inside the caller's transaction if it opened one at 'renamed'. */
  onStep?: (step: 'encrypted' | 'renamed' | 'recorded', row?: DocumentInfo) => void;
  /**
   * Called with the file name once the encrypted file is durable in place, before the row is
   * inserted (a cluster copies the file to the club's standbys here, docs/CLUSTER.md
   * "Documents"); when it rejects, the file is removed and nothing is recorded.
   */
  beforeRecord?: (file: string) => Promise<void>;
}

const INFO_COLS = 'id, kind, name, mediaType, personId, size, sha256, createdAt';


/** Store a document: streamed in, encrypted, written atomically, recorded. */
export async function putDocument(st: Storage, clubId: string, source: Readable | AsyncIterable<Uint8Array>, meta: DocumentMeta, opts: PutDocumentOptions = {}): Promise<DocumentInfo> {
  const parsed = MODEL.documents.fields;
  for (const [k, v] of Object.entries({ kind: meta.kind, name: meta.name, mediaType: meta.mediaType, personId: meta.personId })) {
    const r = parsed[k]!.zod.safeParse(v);
    if (!r.success) throw new StorageError('VALIDATION_FAILED', `document ${k}: ${r.error.issues[0]?.message ?? 'invalid'}`);
  }
  let store = st.openClub(clubId);
  const docsDir = store.docsDir;
  mkdirSync(docsDir, { recursive: true, mode: 0o700 });
  const file = randomBytes(16).toString('hex') + DOC_SUFFIX;
  const docKey = randomBytes(32);
  const wrapped = store.wrapDocumentKey(docKey, file);
  const finalPath = join(docsDir, file);
  const tmp = join(docsDir, `.${file}.tmp`);
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_DOCUMENT_BYTES;
  const tap = hashTap({ maxBytes, tooLarge: () => new StorageError('DOC_TOO_LARGE', `document exceeds the limit of ${maxBytes} bytes`) });
  let renamed = false;
  try {
    try {
      await pipeline(source, tap, createEncryptStream(docKey, opts.chunkLog2 !== undefined ? { chunkLog2: opts.chunkLog2 } : {}), createWriteStream(tmp, { flags: 'wx', mode: 0o600, highWaterMark: 1 << 20 }));
    } finally {
      docKey.fill(0);
    }
    // fsync applies to the file, whichever descriptor asks: make the content durable before rename.
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    opts.onStep?.('encrypted');
    await rename(tmp, finalPath);
    renamed = true;
    fsyncDir(docsDir);
    if (opts.beforeRecord) await opts.beforeRecord(file);
    opts.onStep?.('renamed');
    const { size, sha256 } = tap.digest();
    store = st.openClub(clubId); // may have been evicted while we awaited
    const r = store.db
      .prepare(`INSERT INTO documents (kind, name, mediaType, personId, size, sha256, file, wrappedKey) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING ${INFO_COLS}`)
      .get(meta.kind, meta.name, meta.mediaType ?? null, meta.personId ?? null, size, sha256, file, wrapped) as DocumentInfo;
    opts.onStep?.('recorded', r);
    return r;
  } catch (e) {
    await unlink(renamed ? finalPath : tmp).catch(() => undefined);
    throw e;
  }
}

export function listDocuments(st: Storage, clubId: string): DocumentInfo[] {
  return st.openClub(clubId).db.prepare(`SELECT ${INFO_COLS} FROM documents ORDER BY id`).all() as DocumentInfo[];
}

export function getDocumentInfo(st: Storage, clubId: string, id: number): DocumentInfo {
  const r = st.openClub(clubId).db.prepare(`SELECT ${INFO_COLS} FROM documents WHERE id = ?`).get(id) as DocumentInfo | undefined;
  if (!r) throw new StorageError('DOC_NOT_FOUND', `club ${clubId} has no document ${id}`);
  return r;
}

/**
 * Stream a document's plaintext. The stream errors with DOC_CORRUPT when any chunk fails
 * authentication, the file is truncated, or size/SHA-256 differ from the record; consumers
 * must treat the content as valid only after 'end'.
 */
export function readDocument(st: Storage, clubId: string, id: number, o: { allowSuspended?: boolean } = {}): { info: DocumentInfo; stream: Readable } {
  const store = st.openClub(clubId, o);
  const row = store.db.prepare(`SELECT ${INFO_COLS}, file, wrappedKey FROM documents WHERE id = ?`).get(id) as (DocumentInfo & { file: string; wrappedKey: Buffer }) | undefined;
  if (!row) throw new StorageError('DOC_NOT_FOUND', `club ${clubId} has no document ${id}`);
  let key: Buffer;
  try {
    key = store.unwrapDocumentKey(row.wrappedKey, row.file);
  } catch (e) {
    throw new StorageError('DOC_CORRUPT', `key of document ${id} of club ${clubId} does not unwrap`, { cause: e });
  }
  const path = join(store.docsDir, row.file);
  const h = createHash('sha256');
  let size = 0;
  const verify = new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _e, cb: TransformCallback) {
      size += chunk.length;
      h.update(chunk);
      cb(null, chunk);
    },
    flush(cb: TransformCallback) {
      const sum = h.digest('hex');
      if (size !== row.size || sum !== row.sha256) cb(new StorageError('DOC_CORRUPT', `document ${id} of club ${clubId} does not match its recorded size/SHA-256`));
      else cb();
    },
  });
  const dec = createDecryptStream(key);
  key.fill(0);
  // Large reads (a few 256 KiB records at a time): fewer calls, fewer records straddling reads.
  const rs = createReadStream(path, { highWaterMark: 1 << 20 });
  // Map crypto/fs errors to one typed storage error on the stream the caller consumes.
  const fail = (e: Error) => {
    const code = (e as NodeJS.ErrnoException).code;
    verify.destroy(
      e instanceof StorageError
        ? e
        : e instanceof CryptoError
          ? new StorageError('DOC_CORRUPT', `document ${id} of club ${clubId} is damaged or was tampered with: ${e.message}`, { cause: e })
          : code === 'ENOENT'
            ? new StorageError('DOC_NOT_FOUND', `file of document ${id} of club ${clubId} is missing; restore it from a backup`, { cause: e })
            : e,
    );
  };
  rs.on('error', fail);
  dec.on('error', fail);
  verify.on('close', () => {
    rs.destroy();
    dec.destroy();
  });
  rs.pipe(dec).pipe(verify);
  const { file: _f, wrappedKey: _w, ...info } = row;
  return { info, stream: verify };
}

/** Read a whole document into memory (small documents, tests). */
export async function readDocumentBuffer(st: Storage, clubId: string, id: number): Promise<Buffer> {
  const { stream } = readDocument(st, clubId, id);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Delete a document: the row (and with it the wrapped key) first, then the file. */
export function deleteDocument(st: Storage, clubId: string, id: number): void {
  const store = st.openClub(clubId);
  const row = store.db.prepare('DELETE FROM documents WHERE id = ? RETURNING file').get(id) as { file: string } | undefined;
  if (!row) throw new StorageError('DOC_NOT_FOUND', `club ${clubId} has no document ${id}`);
  try {
    unlinkSync(join(store.docsDir, row.file));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  fsyncDir(store.docsDir);
}

/**
 * Re-encrypt every document of a club under a fresh document key and a new file name (the
 * leaked-key procedure: a stolen club key then unwraps no current document key). Per document:
 * stream-decrypt (authenticated, size and SHA-256 checked) -> encrypt under the new key -> new
 * file (fsync, rename) -> the row points at the new file and key -> the old file is removed.
 * Killed midway, each document is either old or new; a left-over file is an orphan that
 * sweepOrphanDocuments removes. Returns how many documents were re-encrypted.
 */
export async function reencryptDocuments(st: Storage, clubId: string): Promise<number> {
  const rows = st.openClub(clubId, { allowSuspended: true }).db.prepare('SELECT id, file FROM documents ORDER BY id').all() as Array<{ id: number; file: string }>;
  let n = 0;
  for (const row of rows) {
    let store = st.openClub(clubId, { allowSuspended: true });
    const { stream } = readDocument(st, clubId, row.id, { allowSuspended: true });
    const file = randomBytes(16).toString('hex') + DOC_SUFFIX;
    const docKey = randomBytes(32);
    const wrapped = store.wrapDocumentKey(docKey, file);
    const finalPath = join(store.docsDir, file);
    const tmp = join(store.docsDir, `.${file}.tmp`);
    try {
      await pipeline(stream, createEncryptStream(docKey), createWriteStream(tmp, { flags: 'wx', mode: 0o600, highWaterMark: 1 << 20 }));
    } catch (e) {
      await unlink(tmp).catch(() => undefined);
      throw e;
    } finally {
      docKey.fill(0);
    }
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, finalPath);
    fsyncDir(store.docsDir);
    store = st.openClub(clubId, { allowSuspended: true });
    const changed = store.db.prepare('UPDATE documents SET file = ?, wrappedKey = ? WHERE id = ? AND file = ?').run(file, wrapped, row.id, row.file).changes;
    const stale = changed === 1 ? row.file : file; // deleted meanwhile: drop the new copy instead
    try {
      unlinkSync(join(store.docsDir, stale));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    fsyncDir(store.docsDir);
    n += changed;
  }
  return n;
}

/** Remove temporary and unreferenced document files older than `olderThanMs` (default 1 h). */
export function sweepOrphanDocuments(st: Storage, clubId: string, olderThanMs = 3_600_000): string[] {
  const store = st.openClub(clubId, { allowSuspended: true });
  const known = new Set((store.db.prepare('SELECT file FROM documents').all() as Array<{ file: string }>).map((r) => r.file));
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(store.docsDir);
  } catch {
    return removed;
  }
  const now = Date.now();
  for (const n of names) {
    if (known.has(n)) continue;
    const p = join(store.docsDir, n);
    if (now - statSync(p).mtimeMs < olderThanMs) continue;
    unlinkSync(p);
    removed.push(n);
  }
  if (removed.length) fsyncDir(store.docsDir);
  return removed;
}
