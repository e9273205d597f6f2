/**
 * Backup archives: one file per club and moment (docs/BACKUPS.md has the format).
 *
 *   header  "CMBK" | version 2 | kind (1 server, 2 club) | uint16be n | n bytes of JSON
 *   body    crypto/chunked-aead.ts stream (AES-256-GCM, chunk index + final flag in the nonce)
 *           of a plain ustar file: manifest.json, origin.json, club.sqlite, documents/<id>
 *
 * origin.json proves who made the archive (storage/backup/archive-origin.ts): a signature with the
 * server identity key (or a MAC under a key only this server holds) over the header and the
 * manifest, which carries the SHA-256 of the image and of every document. Every reader path
 * (verify, restore) refuses an archive whose origin does not verify.
 *
 * The stream key is HKDF-SHA256(ikm, salt = SHA-256(header bytes), "commusic/backup/v1/stream"),
 * so the header is authenticated too: change one byte of it and the body no longer opens.
 *   - server archives (nightly, to the destinations): ikm = the server archive key, a random
 *     256-bit key kept in server.db (which is page-encrypted under the master key; master
 *     rotation carries it along). The header names it by key id.
 *   - club archives (mailed, downloaded): ikm = X25519(ephemeral, club public key). The club's
 *     key pair is derived from its backup passphrase with scrypt; the server stores only the
 *     public key and the scrypt salt/parameters, which is how it encrypts nightly without knowing
 *     the passphrase, and how it checks a passphrase (derive, compare public keys).
 *
 * The body holds plaintext (club.sqlite is a plain SQLite image, documents are decrypted), so an
 * archive restores on any server: restore re-encrypts everything under the target's club key.
 * Nothing plaintext touches the disk while an archive is written: the snapshot is an in-memory
 * image (sqlite3_serialize, one read transaction) and the documents stream from their encrypted
 * files through decryption straight into the archive encryption.
 */
import { createHash, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, scrypt as scryptCb, timingSafeEqual, type KeyObject } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, linkSync, mkdirSync, readdirSync, rmSync, statSync, unlinkSync, renameSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDecryptStream, createEncryptStream } from '../../crypto/chunked-aead.js';
import { CryptoError } from '../../crypto/errors.js';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { keyIdOf } from '../../crypto/master-key.js';
import { clubPageKey, newDataKey, wrapKey } from '../../crypto/wrap.js';
import { AuditLog, ensureAuditTables, verifyAuditLog, type AuditSigner, type AuditVerifier } from '../club/audit-log.js';
import { applyModelSchema, checkImageSchema, copyImageRows } from './restore-schema.js';
import { fingerprintOf, signTranscript, verifyTranscript } from '../../crypto/identity.js';
import { BackupError } from './backup-errors.js';
import { ByteReader, TAR_END, readTarHeader, skipPadding, tarHeader, tarPadding } from './backup-tar.js';
import { CLUB_DB_FILE, DOCS_DIR, clubDir } from '../club/club-store.js';
import { DOC_SUFFIX } from '../club/documents.js';
import { StorageError } from '../engine/errors.js';
import { PLANS, type Plan } from '../server/server-db.js';
import { openDatabase, openEncrypted, type Db } from '../engine/sqlcipher.js';
import { unwrapClubKey, type Storage } from '../server/storage.js';
import { hashTap } from '../engine/hash-tap.js';
import { clubSealingKey, currentArchiveKey, retiredArchiveKeys } from './archive-keys.js';
import { ORIGIN_ENTRY, loadDataDirIdentity, originMacKey, signOrigin, verifyOrigin, type OriginSigner, type OriginTrust, type VerifiedOrigin } from './archive-origin.js';

export { BackupError } from './backup-errors.js';

export const ARCHIVE_MAGIC = Buffer.from('CMBK', 'ascii');
export const ARCHIVE_VERSION = 2;
export const ARCHIVE_SUFFIX = '.cmbk';
export const MANIFEST_FORMAT = 'commusic-club-backup';
const KIND_SERVER = 1;
const KIND_CLUB = 2;
const STREAM_INFO = 'commusic/backup/v1/stream';
const MAX_HEADER_JSON = 4096;
/** Never in the data fingerprint: they change on logins and key rotations, not with the data. */
const VOLATILE: Readonly<Record<string, readonly string[]>> = { users: ['lastLogin'], documents: ['file', 'wrappedKey'] };
const VOLATILE_TABLES = new Set(['audit_log', 'audit_heads']);

// ---- keys ----------------------------------------------------------------------------------

/** The current server archive key (created on first use), from server.db (storage/backup/archive-keys.ts). */
export function serverArchiveKey(st: Storage): Buffer {
  return currentArchiveKey(st);
}

/** What the server keeps of a club's backup passphrase: public key and KDF parameters only. */
export interface ClubBackupKeyRecord {
  v: 1;
  /** Raw X25519 public key, base64url. */
  publicKey: string;
  salt: string;
  log2N: number;
  r: number;
  p: number;
  setAt: string;
}

export const PASSPHRASE_LOG2N = 17;
export const PASSPHRASE_R = 8;
export const PASSPHRASE_P = 1;
export const MIN_PASSPHRASE_LENGTH = 12;
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

function scryptAsync(pw: Buffer, salt: Buffer, log2N: number, r: number, p: number): Promise<Buffer> {
  const N = 2 ** log2N;
  return new Promise((resolve, reject) => scryptCb(pw, salt, 32, { N, r, p, maxmem: 128 * N * r * 2 + (1 << 20) }, (e, k) => (e ? reject(e) : resolve(k))));
}

/** Lowest scrypt cost a club key record may carry (tests lower the cost; the server writes 17). */
export const PASSPHRASE_MIN_LOG2N = 10;

/**
 * Accept only the KDF parameter sets this server writes: r = 8, p = 1, log2(N) from
 * PASSPHRASE_MIN_LOG2N up to PASSPHRASE_LOG2N, and a 16-byte salt. An archive header is read
 * before anything in it is authenticated, so anything else (e.g. N = 2^22, r = 32, p = 16: 16 GiB
 * and 2048x the work) is refused here, before any derivation runs. Throws ARCHIVE_INVALID.
 */
export function checkPassphraseKdf(kdf: unknown): asserts kdf is { salt: string; log2N: number; r: number; p: number } {
  const k = kdf as { salt?: unknown; log2N?: unknown; r?: unknown; p?: unknown } | null;
  const ok =
    !!k &&
    typeof k === 'object' &&
    Number.isInteger(k.log2N) &&
    (k.log2N as number) >= PASSPHRASE_MIN_LOG2N &&
    (k.log2N as number) <= PASSPHRASE_LOG2N &&
    k.r === PASSPHRASE_R &&
    k.p === PASSPHRASE_P &&
    typeof k.salt === 'string' &&
    /^[A-Za-z0-9_-]{22}$/.test(k.salt);
  if (!ok) throw new BackupError('ARCHIVE_INVALID', `passphrase KDF parameters are not ones this server writes (scrypt r=${PASSPHRASE_R}, p=${PASSPHRASE_P}, log2 N ${PASSPHRASE_MIN_LOG2N}..${PASSPHRASE_LOG2N}, 16-byte salt); refused before any derivation`);
}

async function passphraseKeyPair(passphrase: string, kdf: { salt: string; log2N: number; r: number; p: number }): Promise<{ privateKey: KeyObject; publicRaw: Buffer }> {
  checkPassphraseKdf(kdf);
  const seed = await scryptAsync(Buffer.from(passphrase.normalize('NFC'), 'utf8'), Buffer.from(kdf.salt, 'base64url'), kdf.log2N, kdf.r, kdf.p);
  try {
    const privateKey = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
    const publicRaw = Buffer.from(createPublicKey(privateKey).export({ format: 'jwk' }).x!, 'base64url');
    return { privateKey, publicRaw };
  } finally {
    seed.fill(0);
  }
}

function checkPassphraseShape(passphrase: string): void {
  if (typeof passphrase !== 'string' || [...passphrase].length < MIN_PASSPHRASE_LENGTH) throw new BackupError('PASSPHRASE_WEAK', `a backup passphrase needs at least ${MIN_PASSPHRASE_LENGTH} characters`);
  if (Buffer.byteLength(passphrase, 'utf8') > 1024) throw new BackupError('PASSPHRASE_WEAK', 'a backup passphrase is limited to 1024 bytes');
}

/** A new key record for a passphrase (fresh salt). Keep the record, never the passphrase. */
export async function newClubBackupKey(passphrase: string, o: { log2N?: number; now?: Date } = {}): Promise<ClubBackupKeyRecord> {
  checkPassphraseShape(passphrase);
  const kdf = { salt: randomBytes(16).toString('base64url'), log2N: o.log2N ?? PASSPHRASE_LOG2N, r: PASSPHRASE_R, p: PASSPHRASE_P };
  const { publicRaw } = await passphraseKeyPair(passphrase, kdf);
  return { v: 1, publicKey: publicRaw.toString('base64url'), ...kdf, setAt: (o.now ?? new Date()).toISOString() };
}

/** True when `passphrase` is the one behind the record (constant-time compare). */
export async function checkClubPassphrase(rec: ClubBackupKeyRecord, passphrase: string): Promise<boolean> {
  const { publicRaw } = await passphraseKeyPair(passphrase, rec);
  const want = Buffer.from(rec.publicKey, 'base64url');
  return want.length === publicRaw.length && timingSafeEqual(want, publicRaw);
}

export interface ClubBackupSettings {
  passphrase?: ClubBackupKeyRecord;
  /** Where the nightly mail goes (premium and federation plans). */
  emails?: string[];
}

export function clubBackupSettings(st: Storage, clubId: string): ClubBackupSettings {
  const s = st.server.mustGetClub(clubId).settings['backup'];
  return s && typeof s === 'object' ? (s as ClubBackupSettings) : {};
}

export function setClubBackupSettings(st: Storage, clubId: string, patch: Partial<ClubBackupSettings>): ClubBackupSettings {
  const row = st.server.mustGetClub(clubId);
  const next = { ...clubBackupSettings(st, clubId), ...patch };
  st.server.setSettings(clubId, { ...row.settings, backup: next });
  return next;
}

/** How an archive is sealed. */
export type SealKey = { kind: 'server'; key: Buffer } | { kind: 'club'; record: ClubBackupKeyRecord };
/** What may open one: the server key, the club's passphrase, or both (the right one is used). */
export interface OpenKey {
  serverKey?: Buffer;
  /** Looks up the key of a server archive by key id and club (storage/backup/archive-keys.ts archiveKeyFor); tried before serverKey. */
  serverKeyring?: (keyId: string, clubId: string) => Buffer | undefined;
  passphrase?: string;
  /** Whose origin proof is accepted; verify and restore require it (see archiveTrust). */
  trust?: OriginTrust;
}

/** How this server signs the archives it makes: its identity key when it has one, else a MAC under its archive key. */
export function archiveSigner(st: Storage): OriginSigner {
  const identity = st.identity ?? loadDataDirIdentity(st.dataDir);
  if (identity) return { kind: 'rsa-pss', identity };
  return { kind: 'hmac', macKey: originMacKey(serverArchiveKey(st)) };
}

/**
 * What this server accepts as an archive's origin: its own identity key, its own archive MAC
 * key, and the fingerprints the operator named (`--trust-key`, parsed by parseTrustKeys).
 */
export function archiveTrust(st: Storage, fingerprints: readonly string[] = []): OriginTrust {
  const identity = st.identity ?? loadDataDirIdentity(st.dataDir);
  return { keys: identity ? [identity.spki] : [], fingerprints: [...fingerprints], macKey: originMacKey(serverArchiveKey(st)), retiredMacKeys: retiredArchiveKeys(st).map(originMacKey) };
}

export interface ArchiveHeader {
  v: 2;
  kind: 'server' | 'club';
  clubId: string;
  createdAt: string;
  salt: string;
  keyId?: string;
  clubPublicKey?: string;
  ephemeralPublicKey?: string;
  kdf?: { salt: string; log2N: number; r: number; p: number };
}

function encodeHeader(h: ArchiveHeader): Buffer {
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  const pre = Buffer.alloc(8);
  ARCHIVE_MAGIC.copy(pre, 0);
  pre[4] = ARCHIVE_VERSION;
  pre[5] = h.kind === 'server' ? KIND_SERVER : KIND_CLUB;
  pre.writeUInt16BE(json.length, 6);
  return Buffer.concat([pre, json]);
}

function streamKey(ikm: Buffer, header: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, createHash('sha256').update(header).digest(), STREAM_INFO, 32));
}

function sealHeader(clubId: string, key: SealKey, now: Date): { header: Buffer; key: Buffer; info: ArchiveHeader } {
  const base = { v: 2 as const, clubId, createdAt: now.toISOString(), salt: randomBytes(16).toString('base64url') };
  if (key.kind === 'server') {
    const info: ArchiveHeader = { ...base, kind: 'server', keyId: keyIdOf(key.key).toString('hex') };
    const header = encodeHeader(info);
    return { header, key: streamKey(key.key, header), info };
  }
  const eph = generateKeyPairSync('x25519');
  const clubPub = createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: key.record.publicKey }, format: 'jwk' });
  const info: ArchiveHeader = {
    ...base,
    kind: 'club',
    clubPublicKey: key.record.publicKey,
    ephemeralPublicKey: eph.publicKey.export({ format: 'jwk' }).x!,
    kdf: { salt: key.record.salt, log2N: key.record.log2N, r: key.record.r, p: key.record.p },
  };
  const header = encodeHeader(info);
  const shared = diffieHellman({ privateKey: eph.privateKey, publicKey: clubPub });
  try {
    return { header, key: streamKey(shared, header), info };
  } finally {
    shared.fill(0);
  }
}

async function openHeader(r: ByteReader, key: OpenKey): Promise<{ info: ArchiveHeader; key: Buffer; header: Buffer }> {
  const pre = await r.read(8);
  if (pre.length < 8 || !pre.subarray(0, 4).equals(ARCHIVE_MAGIC)) throw new BackupError('NOT_AN_ARCHIVE', 'not a ComMusic backup archive (bad magic)');
  if (pre[4] === 1) throw new BackupError('ORIGIN_UNVERIFIED', 'backup archive format 1 carries no proof of who made it (anyone holding a club header could seal one), so it is refused; take a new backup with this server');
  if (pre[4] !== ARCHIVE_VERSION) throw new BackupError('ARCHIVE_VERSION', `backup archive version ${pre[4]} is not supported by this server (it reads version ${ARCHIVE_VERSION})`);
  const n = pre.readUInt16BE(6);
  if (n > MAX_HEADER_JSON) throw new BackupError('ARCHIVE_CORRUPT', 'backup archive header is damaged (length)');
  const json = await r.read(n);
  if (json.length < n) throw new BackupError('ARCHIVE_TRUNCATED', 'backup archive is truncated inside its header');
  let info: ArchiveHeader;
  try {
    info = JSON.parse(json.toString('utf8')) as ArchiveHeader;
  } catch {
    throw new BackupError('ARCHIVE_CORRUPT', 'backup archive header is damaged (not JSON)');
  }
  const header = Buffer.concat([pre, json]);
  const kind = pre[5] === KIND_SERVER ? 'server' : pre[5] === KIND_CLUB ? 'club' : undefined;
  if (!kind || info.kind !== kind || info.v !== ARCHIVE_VERSION || typeof info.clubId !== 'string') throw new BackupError('ARCHIVE_CORRUPT', 'backup archive header is damaged (kind)');
  if (kind === 'server') {
    const byId = typeof info.keyId === 'string' ? key.serverKeyring?.(info.keyId, info.clubId) : undefined;
    if (byId) key = { ...key, serverKey: byId };
    if (!key.serverKey) throw new BackupError('WRONG_BACKUP_KEY', `archive of club ${info.clubId} is a server archive; only the server that holds its archive key (id ${info.keyId}) opens it`);
    if (keyIdOf(key.serverKey).toString('hex') !== info.keyId) throw new BackupError('WRONG_BACKUP_KEY', `archive of club ${info.clubId} was written under archive key ${info.keyId}, this server has ${keyIdOf(key.serverKey).toString('hex')} (an archive of another server, or its header was altered)`);
    return { info, key: streamKey(key.serverKey, header), header };
  }
  if (key.passphrase === undefined) throw new BackupError('WRONG_PASSPHRASE', `archive of club ${info.clubId} is encrypted with the club's backup passphrase; give the passphrase (--passphrase-stdin)`);
  if (!info.kdf || !info.clubPublicKey || !info.ephemeralPublicKey) throw new BackupError('ARCHIVE_CORRUPT', 'backup archive header is damaged (key fields)');
  const { privateKey, publicRaw } = await passphraseKeyPair(key.passphrase, info.kdf);
  if (publicRaw.toString('base64url') !== info.clubPublicKey) throw new BackupError('WRONG_PASSPHRASE', `the passphrase does not open this archive of club ${info.clubId} (wrong passphrase)`);
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey, publicKey: createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: info.ephemeralPublicKey }, format: 'jwk' }) });
  } catch {
    throw new BackupError('ARCHIVE_CORRUPT', 'backup archive header is damaged (ephemeral key)');
  }
  try {
    return { info, key: streamKey(shared, header), header };
  } finally {
    shared.fill(0);
  }
}

// ---- snapshot ------------------------------------------------------------------------------

export interface ManifestDocument {
  id: number;
  kind: string;
  name: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: 1;
  clubId: string;
  club: { name: string; plan: Plan; settings: Record<string, unknown> };
  createdAt: string;
  schemaVersion: number;
  sqlite: { bytes: number; sha256: string };
  tables: Record<string, number>;
  documents: ManifestDocument[];
  auditHead: { seq: number; hash: string } | null;
  /** SHA-256 over every row except log/login/key-wrapping columns; equal = the data did not change. */
  dataFingerprint: string;
}

interface SnapDoc extends ManifestDocument {
  path: string;
  key: Buffer;
}

export interface ClubSnapshot {
  readonly clubId: string;
  readonly manifest: Manifest;
  readonly image: Buffer;
  readonly docs: SnapDoc[];
  readonly staging: string;
  /** Forget keys and remove the staging links (idempotent). */
  release(): void;
}

/** Open an in-memory image (rollback-journal header, so no -wal is needed). */
export function openImage(image: Buffer): Db {
  const copy = Buffer.from(image);
  copy[18] = 1;
  copy[19] = 1;
  return openDatabase(copy);
}

function quote(ident: string): string {
  return '"' + ident.replace(/"/g, '""') + '"';
}

function userTables(db: Db): string[] {
  return (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as Array<{ name: string }>).map((r) => r.name);
}

function hashValue(h: ReturnType<typeof createHash>, v: unknown): void {
  if (v === null || v === undefined) h.update('n;');
  else if (typeof v === 'bigint') h.update(`i${v};`);
  else if (typeof v === 'number') h.update(`f${v};`);
  else if (typeof v === 'string') h.update(`s${Buffer.byteLength(v)}:`).update(v);
  else if (Buffer.isBuffer(v)) h.update(`b${v.length}:`).update(v);
  else h.update(`?${String(v)};`);
}

/** Row counts, schema version, audit head and data fingerprint of an image. */
export function inspectImage(db: Db): Pick<Manifest, 'schemaVersion' | 'tables' | 'auditHead' | 'dataFingerprint'> {
  const tables: Record<string, number> = {};
  const fp = createHash('sha256');
  for (const t of userTables(db)) {
    tables[t] = (db.prepare(`SELECT count(*) AS n FROM ${quote(t)}`).get() as { n: number }).n;
    if (VOLATILE_TABLES.has(t)) continue;
    const cols = (db.pragma(`table_info(${quote(t)})`) as Array<{ name: string }>).map((c) => c.name).filter((c) => !(VOLATILE[t] ?? []).includes(c));
    fp.update(`t${t};`);
    const stmt = db.prepare(`SELECT ${cols.map(quote).join(', ')} FROM ${quote(t)} ORDER BY rowid`).raw(true).safeIntegers(true);
    for (const row of stmt.iterate() as IterableIterator<unknown[]>) {
      fp.update('r');
      for (const v of row) hashValue(fp, v);
    }
  }
  const schemaVersion = db.pragma('user_version', { simple: true }) as number;
  let auditHead: Manifest['auditHead'] = null;
  if (tables['audit_log'] !== undefined) {
    const h = db.prepare('SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1').get() as { seq: number; hash: string } | undefined;
    if (h) auditHead = { seq: h.seq, hash: h.hash };
  }
  return { schemaVersion, tables, auditHead, dataFingerprint: fp.digest('hex') };
}

/**
 * Snapshot a club: in one synchronous step (no other statement of this process runs in
 * between, and a read transaction covers both reads) the store image, the document rows, hard
 * links to the documents' encrypted files (so a deletion after this moment cannot take them
 * away), and the documents' keys. Everything after works on the snapshot.
 */
export function takeClubSnapshot(st: Storage, clubId: string, now: Date = new Date()): ClubSnapshot {
  const row = st.server.mustGetClub(clubId);
  const store = st.openClub(clubId, { allowSuspended: true });
  const staging = join(store.dir, `.backup-${randomBytes(6).toString('hex')}`);
  const docs: SnapDoc[] = [];
  let image!: Buffer;
  mkdirSync(staging, { mode: 0o700 });
  try {
    store.db.transaction(() => {
      image = store.db.serialize();
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
    for (const d of docs) d.key.fill(0);
    rmSync(staging, { recursive: true, force: true });
    throw e;
  }
  image[18] = 1;
  image[19] = 1;
  const mem = openImage(image);
  let facts: ReturnType<typeof inspectImage>;
  try {
    facts = inspectImage(mem);
  } finally {
    mem.close();
  }
  const docFp = createHash('sha256').update(facts.dataFingerprint);
  for (const d of docs) docFp.update(`${d.id}:${d.sha256};`);
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    version: 1,
    clubId,
    club: { name: row.name, plan: row.plan, settings: row.settings },
    createdAt: now.toISOString(),
    schemaVersion: facts.schemaVersion,
    sqlite: { bytes: image.length, sha256: createHash('sha256').update(image).digest('hex') },
    tables: facts.tables,
    documents: docs.map(({ id, kind, name, size, sha256 }) => ({ id, kind, name, size, sha256 })),
    auditHead: facts.auditHead,
    dataFingerprint: docFp.digest('hex'),
  };
  let released = false;
  return {
    clubId,
    manifest,
    image,
    docs,
    staging,
    release() {
      if (released) return;
      released = true;
      for (const d of docs) d.key.fill(0);
      rmSync(staging, { recursive: true, force: true });
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

function docEntryName(id: number): string {
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
    renameSync(tmp, path);
    fsyncDir(dirname(path));
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
function headVerifier(trust: OriginTrust, origin: VerifiedOrigin | null, seen: OriginEntrySeen | null): AuditVerifier {
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
function checkImage(db: Db, m: Manifest, verifier: AuditVerifier): { version: number; tables: string[]; audit: VerifyReport['auditChain'] } {
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

function openCheckedImage(image: Buffer): Db {
  try {
    return openImage(image);
  } catch (e) {
    throw new BackupError('VERIFY_FAILED', `store image does not open as SQLite: ${(e as Error).message}`);
  }
}

function needTrust(key: OpenKey): OriginTrust {
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
      await writeFileAtomic(createClubArchive(st, clubId, { kind: 'server', key: clubSealingKey(st, clubId) }).stream, preRestoreArchive);
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
