/**
 * Reading an archive: walk (decrypt, parse the tar, check every hash and the origin), verify, and
 * decrypt to a file for an operator.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, rmSync, renameSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { createDecryptStream } from '../../crypto/chunked-aead.js';
import { CryptoError } from '../../crypto/errors.js';
import { verifyAuditLog, type AuditVerifier } from '../club/audit-log.js';
import { checkImageSchema } from './restore-schema.js';
import { fingerprintOf, verifyTranscript } from '../../crypto/identity.js';
import { BackupError } from './backup-errors.js';
import { ByteReader, readTarHeader, skipPadding } from './backup-tar.js';
import { type Db } from '../engine/sqlcipher.js';
import { ORIGIN_ENTRY, verifyOrigin, type OriginTrust, type VerifiedOrigin } from './archive-origin.js';
import { ArchiveHeader, MANIFEST_FORMAT, Manifest, ManifestDocument, inspectImage, openHeader, openImage } from './archive-format.js';
import { OpenKey } from './club-backup-keys.js';
import { docEntryName } from './archive-writer.js';

// ---- reading -------------------------------------------------------------------------------

/** What the origin entry claims (not yet trusted): the signing key, for head checks and reports. */
export interface OriginEntrySeen {
  alg: string;
  fingerprint?: string;
  spki?: Buffer;
}

function describeOrigin(b: Buffer): OriginEntrySeen | null {
  try {
    const e = JSON.parse(b.toString('utf8')) as { alg?: unknown; spki?: unknown; fingerprint?: unknown };
    if (typeof e.alg !== 'string') return null;
    return { alg: e.alg, ...(typeof e.fingerprint === 'string' ? { fingerprint: e.fingerprint } : {}), ...(typeof e.spki === 'string' ? { spki: Buffer.from(e.spki, 'base64') } : {}) };
  } catch {
    return null;
  }
}

export interface ArchiveVisitor {
  /** The origin (null when no trust was given, i.e. for `decrypt`), before any content is read. */
  origin?(origin: VerifiedOrigin | null, seen: OriginEntrySeen | null): void | Promise<void>;
  /** The store image (already checked against the manifest's SHA-256). */
  image?(manifest: Manifest, image: Buffer): void | Promise<void>;
  /** A document's plaintext; the walker checks size and SHA-256 after the visitor consumed it. */
  document?(doc: ManifestDocument, data: AsyncIterable<Buffer>): void | Promise<void>;
}

function mapCryptoError(e: unknown): unknown {
  if (e instanceof CryptoError) {
    if (e.code === 'STREAM_TRUNCATED') return new BackupError('ARCHIVE_TRUNCATED', `backup archive is truncated: ${e.message}`, { cause: e });
    if (e.code === 'WRONG_KEY') return new BackupError('ARCHIVE_CORRUPT', 'backup archive header was altered (the body does not belong to this header)', { cause: e });
    return new BackupError('ARCHIVE_CORRUPT', `backup archive is damaged or was tampered with: ${e.message}`, { cause: e });
  }
  return e;
}

async function* drain(src: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
  for await (const c of src) yield Buffer.from(c.buffer, c.byteOffset, c.byteLength);
}

/**
 * Read an archive from end to end: header and key, authenticated body, tar structure, manifest,
 * image hash, document hashes. Throws a BackupError naming what is wrong; a visitor's work is
 * valid only when this resolves.
 */
export async function walkArchive(source: AsyncIterable<Uint8Array>, key: OpenKey, visitor: ArchiveVisitor = {}, tap?: (plain: Buffer) => Promise<void>): Promise<{ header: ArchiveHeader; manifest: Manifest; origin: VerifiedOrigin | null; originEntry: OriginEntrySeen | null }> {
  const raw = new ByteReader(source);
  const { info, key: sk, header: headerBytes } = await openHeader(raw, key);
  const dec = createDecryptStream(sk);
  sk.fill(0);
  // The rest of the raw source is the encrypted body.
  async function* rawRest(): AsyncGenerator<Buffer> {
    for (;;) {
      const b = await raw.read(1 << 20);
      if (b.length === 0) return;
      yield b;
    }
  }
  const feed = Readable.from(rawRest(), { objectMode: false });
  feed.on('error', (e) => dec.destroy(e));
  feed.pipe(dec);
  async function* plain(): AsyncGenerator<Buffer> {
    for await (const c of drain(dec)) {
      if (tap) await tap(c);
      yield c;
    }
  }
  const r = new ByteReader(plain());
  try {
    const m = await readTarHeader(r);
    if (!m || m.name !== 'manifest.json' || m.size > 64 * 1024 * 1024) throw new BackupError('ARCHIVE_INVALID', 'backup archive does not start with its manifest');
    const mbuf = await r.read(m.size);
    if (mbuf.length < m.size) throw new BackupError('ARCHIVE_TRUNCATED', 'backup archive ends inside its manifest');
    await skipPadding(r, m.size);
    let manifest: Manifest;
    try {
      manifest = JSON.parse(mbuf.toString('utf8')) as Manifest;
    } catch {
      throw new BackupError('ARCHIVE_INVALID', 'backup archive manifest is not JSON');
    }
    if (manifest.format !== MANIFEST_FORMAT || manifest.version !== 1 || manifest.clubId !== info.clubId || !Array.isArray(manifest.documents)) {
      throw new BackupError('ARCHIVE_INVALID', 'backup archive manifest is not a version 1 club manifest for the club named in the header');
    }
    // Origin: checked before anything of the content is looked at.
    const oh = await readTarHeader(r);
    if (!oh || oh.name !== ORIGIN_ENTRY || oh.size > 8192) throw new BackupError('ORIGIN_UNVERIFIED', `archive of club ${info.clubId} carries no origin proof (${ORIGIN_ENTRY}); refused`);
    const obuf = await r.read(oh.size);
    if (obuf.length < oh.size) throw new BackupError('ARCHIVE_TRUNCATED', 'backup archive ends inside its origin entry');
    await skipPadding(r, oh.size);
    const origin = key.trust ? verifyOrigin(obuf, headerBytes, mbuf, key.trust, info.clubId) : null;
    const originEntry = describeOrigin(obuf);
    await visitor.origin?.(origin, originEntry);
    const s = await readTarHeader(r);
    if (!s || s.name !== 'club.sqlite' || s.size !== manifest.sqlite.bytes) throw new BackupError('ARCHIVE_INVALID', 'backup archive has no store image where the manifest says');
    const image = Buffer.allocUnsafe(s.size);
    let off = 0;
    for await (const p of r.pieces(s.size)) {
      p.copy(image, off);
      off += p.length;
    }
    await skipPadding(r, s.size);
    if (createHash('sha256').update(image).digest('hex') !== manifest.sqlite.sha256) throw new BackupError('ARCHIVE_INVALID', 'store image does not match the SHA-256 in the manifest');
    await visitor.image?.(manifest, image);
    for (const d of manifest.documents) {
      const e = await readTarHeader(r);
      if (!e || e.name !== docEntryName(d.id) || e.size !== d.size) throw new BackupError('ARCHIVE_INVALID', `backup archive lacks document ${d.id} listed in its manifest`);
      const h = createHash('sha256');
      let n = 0;
      const pieces = r.pieces(e.size);
      async function* counted(): AsyncGenerator<Buffer> {
        for await (const p of pieces) {
          n += p.length;
          h.update(p);
          yield p;
        }
      }
      const it = counted();
      if (visitor.document) await visitor.document(d, it);
      for await (const _ of it) {
        /* drain what the visitor left */
      }
      await skipPadding(r, e.size);
      if (n !== d.size || h.digest('hex') !== d.sha256) throw new BackupError('ARCHIVE_INVALID', `document ${d.id} in the archive does not match its SHA-256 in the manifest`);
    }
    const end = await readTarHeader(r);
    if (end) throw new BackupError('ARCHIVE_INVALID', `backup archive holds an entry (${end.name}) its manifest does not list`);
    return { header: info, manifest, origin, originEntry };
  } catch (e) {
    dec.destroy();
    feed.destroy();
    throw mapCryptoError(e);
  }
}

export function fileSource(path: string): Readable {
  return createReadStream(path, { highWaterMark: 1 << 20 });
}

export interface VerifyReport {
  ok: true;
  clubId: string;
  kind: 'server' | 'club';
  createdAt: string;
  schemaVersion: number;
  tables: Record<string, number>;
  documents: number;
  documentBytes: number;
  sqliteBytes: number;
  integrity: 'ok';
  /** Who made the archive, as verified. */
  origin: VerifiedOrigin;
  /** The change log inside: chain intact and every signed head verified (signedHeads of them, up to signedUpTo). */
  auditChain: { entries: number; intact: true; signedHeads: number; signedUpTo: number; unsignedTail: number } | null;
  dataFingerprint: string;
}

/** Verifies change-log head signatures with the keys trusted for this archive (own identity, and the origin key when it verified). */
export function headVerifier(trust: OriginTrust, origin: VerifiedOrigin | null, seen: OriginEntrySeen | null): AuditVerifier {
  const keys = new Map<string, Buffer>();
  for (const k of trust.keys) keys.set(fingerprintOf(k), k);
  if (origin?.alg === 'rsa-pss' && origin.fingerprint && seen?.spki) keys.set(origin.fingerprint, seen.spki);
  return { verify: (bytes, sig, fp) => { const k = keys.get(fp); return k !== undefined && verifyTranscript(k, bytes, sig); } };
}

/**
 * Everything checked on a store image before any of it is used: it opens, passes SQLite's
 * integrity check, its schema is exactly the model's (checkImageSchema), the row counts and
 * version match the manifest, and its change log's chain and every signed head verify.
 */
export function checkImage(db: Db, m: Manifest, verifier: AuditVerifier): { version: number; tables: string[]; audit: VerifyReport['auditChain'] } {
  const ic = db.pragma('integrity_check', { simple: true });
  if (ic !== 'ok') throw new BackupError('VERIFY_FAILED', `store image fails SQLite's integrity check: ${String(ic)}`);
  const schema = checkImageSchema(db);
  const facts = inspectImage(db);
  for (const [t, n] of Object.entries(m.tables)) {
    if (facts.tables[t] !== n) throw new BackupError('VERIFY_FAILED', `table ${t} has ${facts.tables[t]} rows, the manifest says ${n}`);
  }
  if (facts.schemaVersion !== m.schemaVersion) throw new BackupError('VERIFY_FAILED', 'store image schema version differs from the manifest');
  let audit: VerifyReport['auditChain'] = null;
  if (schema.tables.includes('audit_log')) {
    const v = verifyAuditLog(db, m.clubId, verifier);
    if (!v.ok) throw new BackupError('VERIFY_FAILED', `change log in the archive does not verify: ${v.firstBad?.reason} (heads must be signed by this server's key or by the archive's trusted origin key)`);
    audit = { entries: v.entries, intact: true, signedHeads: v.signedHeads, signedUpTo: v.signedUpTo, unsignedTail: v.unsignedTail };
  }
  return { version: schema.version, tables: schema.tables, audit };
}

export function openCheckedImage(image: Buffer): Db {
  try {
    return openImage(image);
  } catch (e) {
    throw new BackupError('VERIFY_FAILED', `store image does not open as SQLite: ${(e as Error).message}`);
  }
}

export function needTrust(key: OpenKey): OriginTrust {
  if (!key.trust) throw new BackupError('ORIGIN_UNVERIFIED', 'no origin trust given: archives are read only with the keys this server trusts (archiveTrust)');
  return key.trust;
}

/** Check an archive completely: origin, authentication, structure, hashes, SQLite integrity, schema, row counts, change log and its signed heads. */
export async function verifyArchive(source: AsyncIterable<Uint8Array>, key: OpenKey): Promise<VerifyReport> {
  let audit: VerifyReport['auditChain'] = null;
  let verifier: AuditVerifier | undefined;
  const { header, manifest, origin } = await walkArchive(source, key, {
    origin(o, seen) {
      verifier = headVerifier(needTrust(key), o, seen);
    },
    image(m, image) {
      const db = openCheckedImage(image);
      try {
        audit = checkImage(db, m, verifier!).audit;
      } finally {
        db.close();
      }
    },
  });
  return {
    ok: true,
    clubId: header.clubId,
    kind: header.kind,
    createdAt: header.createdAt,
    schemaVersion: manifest.schemaVersion,
    tables: manifest.tables,
    documents: manifest.documents.length,
    documentBytes: manifest.documents.reduce((a, d) => a + d.size, 0),
    sqliteBytes: manifest.sqlite.bytes,
    integrity: 'ok',
    origin: origin!,
    auditChain: audit,
    dataFingerprint: manifest.dataFingerprint,
  };
}

/** Decrypt an archive into a plain tar file (what a club does with its mailed backup). */
export async function decryptArchiveToFile(source: AsyncIterable<Uint8Array>, key: OpenKey, outPath: string): Promise<{ clubId: string; createdAt: string; documents: number }> {
  const tmp = join(dirname(outPath), `.${basename(outPath)}.tmp-${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    const { header, manifest } = await walkArchive(source, key, {}, async (c) => {
      await fh.write(c);
    });
    await fh.sync();
    await fh.close();
    renameSync(tmp, outPath);
    return { clubId: header.clubId, createdAt: header.createdAt, documents: manifest.documents.length };
  } catch (e) {
    await fh.close().catch(() => undefined);
    rmSync(tmp, { force: true });
    throw e;
  }
}
