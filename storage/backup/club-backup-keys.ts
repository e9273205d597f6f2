/**
 * The keys an archive is sealed and opened with: the server archive key, the club key pair derived
 * from the backup passphrase (scrypt), the club backup settings, and the origin signer and trust.
 */
import { createPrivateKey, createPublicKey, randomBytes, scrypt as scryptCb, timingSafeEqual, type KeyObject } from 'node:crypto';
import { BackupError } from './backup-errors.js';
import { type Storage } from '../server/storage.js';
import { currentArchiveKey, retiredArchiveKeys } from './archive-keys.js';
import { identityKeyPath, loadDataDirIdentity, originMacKey, type OriginSigner, type OriginTrust } from './archive-origin.js';
import { trustedIdentityKeys } from '../../crypto/identity-keyring.js';

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

export async function passphraseKeyPair(passphrase: string, kdf: { salt: string; log2N: number; r: number; p: number }): Promise<{ privateKey: KeyObject; publicRaw: Buffer }> {
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
  // Also the keys of an identity rollover (next, previous, retired): what they signed stays valid.
  const ring = trustedIdentityKeys(identityKeyPath(st.dataDir)).map((k) => k.spki);
  const keys = [...(identity ? [identity.spki] : []), ...ring].filter((k, i, all) => all.findIndex((x) => x.equals(k)) === i);
  return { keys, fingerprints: [...fingerprints], macKey: originMacKey(serverArchiveKey(st)), retiredMacKeys: retiredArchiveKeys(st).map(originMacKey) };
}
