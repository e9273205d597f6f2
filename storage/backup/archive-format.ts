/**
 * The archive format: header (magic, version, kind, JSON), its sealing and opening (the stream key
 * from HKDF over the header), the manifest and the image inspection both writer and reader use.
 */
import { createHash, createPublicKey, diffieHellman, hkdfSync, randomBytes } from 'node:crypto';
import { keyPairWithEncodedPublic } from '../../crypto/handshake-crypto.js';
import { keyIdOf } from '../../crypto/master-key.js';
import { BackupError } from './backup-errors.js';
import { ByteReader } from './backup-tar.js';
import { type Plan } from '../server/server-db.js';
import { openDatabase, type Db } from '../engine/sqlcipher.js';
import { OpenKey, SealKey, passphraseKeyPair } from './club-backup-keys.js';

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
export const VOLATILE_TABLES = new Set(['audit_log', 'audit_heads']);

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

export function sealHeader(clubId: string, key: SealKey, now: Date): { header: Buffer; key: Buffer; info: ArchiveHeader } {
  const base = { v: 2 as const, clubId, createdAt: now.toISOString(), salt: randomBytes(16).toString('base64url') };
  if (key.kind === 'server') {
    const info: ArchiveHeader = { ...base, kind: 'server', keyId: keyIdOf(key.key).toString('hex') };
    const header = encodeHeader(info);
    return { header, key: streamKey(key.key, header), info };
  }
  // The public key comes encoded from the key generation: export() on a freshly generated key can
  // deadlock Node 20 (crypto/handshake-crypto.ts keyPairWithEncodedPublic).
  const eph = keyPairWithEncodedPublic('x25519', { publicKeyEncoding: { format: 'jwk' } });
  const clubPub = createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: key.record.publicKey }, format: 'jwk' });
  const info: ArchiveHeader = {
    ...base,
    kind: 'club',
    clubPublicKey: key.record.publicKey,
    ephemeralPublicKey: (eph.publicKey as { x: string }).x,
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

export async function openHeader(r: ByteReader, key: OpenKey): Promise<{ info: ArchiveHeader; key: Buffer; header: Buffer }> {
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

export interface SnapDoc extends ManifestDocument {
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
