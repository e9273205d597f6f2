/**
 * Keys and sealing for what the cluster (issue 14) puts into etcd: nothing goes there in plaintext.
 *
 * - A club's change-log entries are sealed under a log key derived from the club's data key with
 *   HKDF-SHA256 (RFC 5869; salt = the club id, info = "commusic/cluster/log/v1"). Deleting the
 *   club's data key (crypto-shredding) therefore also makes every copy of its log unreadable.
 * - Cluster-wide records (bans) are sealed under a key derived from the master key, which every
 *   member shares (the `keys/` folder is copied to a new server); the etcd key of a ban is an HMAC
 *   of the address under a second derived key, so the address is not readable from the key either.
 *
 * Sealed form: version byte 0x01 | 12-byte random nonce | AES-256-GCM ciphertext | 16-byte tag.
 * The associated data binds the record to its place (for log entries: club id and sequence
 * number), so an entry copied to another club or another position fails authentication.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { CryptoError } from './errors.js';

const VERSION = 0x01;
const NONCE_LEN = 12;
const TAG_LEN = 16;
/** Smallest sealed record: version, nonce, tag. */
export const SEALED_OVERHEAD = 1 + NONCE_LEN + TAG_LEN;

function derive(ikm: Uint8Array, salt: string, info: string): Buffer {
  if (ikm.length !== 32) throw new CryptoError('BAD_KEY_LENGTH', `a cluster key is derived from a 32-byte key, got ${ikm.length} bytes`);
  return Buffer.from(hkdfSync('sha256', ikm, Buffer.from(salt, 'utf8'), Buffer.from(info, 'ascii'), 32));
}

/** The key that seals club `clubId`'s change-log entries, from the club's 32-byte data key. */
export function deriveLogKey(dataKey: Uint8Array, clubId: string): Buffer {
  return derive(dataKey, clubId, 'commusic/cluster/log/v1');
}

/** The key that seals cluster-wide records (bans) in etcd, from the 32-byte master key. */
export function deriveClusterRecordKey(masterKey: Uint8Array): Buffer {
  return derive(masterKey, 'commusic-cluster', 'commusic/cluster/records/v1');
}

/** The key that names cluster-wide records in etcd (an HMAC of the address), from the master key. */
export function deriveClusterNameKey(masterKey: Uint8Array): Buffer {
  return derive(masterKey, 'commusic-cluster', 'commusic/cluster/names/v1');
}

/**
 * The key members prove membership with on the peer channel (cluster/peer-auth.ts), from the
 * 32-byte master key; its own label, so it is independent of every other key derived from it.
 */
export function derivePeerAuthKey(masterKey: Uint8Array): Buffer {
  return derive(masterKey, 'commusic-cluster', 'commusic/cluster/peer-auth/v1');
}

/** A stable, non-reversible name for `value` under `nameKey` (hex HMAC-SHA256, 64 characters). */
export function sealedName(nameKey: Uint8Array, value: string): string {
  return createHmac('sha256', nameKey).update(value, 'utf8').digest('hex');
}

/** Seal `plaintext` under the 32-byte `key`, bound to `aad`. */
export function sealRecord(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Buffer {
  const nonce = randomBytes(NONCE_LEN);
  const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_LEN });
  c.setAAD(aad);
  const body = Buffer.concat([c.update(plaintext), c.final()]);
  return Buffer.concat([Buffer.of(VERSION), nonce, body, c.getAuthTag()]);
}

/**
 * Open a record made by `sealRecord` with the same key and `aad`.
 * @throws CryptoError STREAM_CORRUPT when the record is short, of an unknown version, or fails
 *   authentication (wrong key, wrong place, or tampered).
 */
export function openRecord(key: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Buffer {
  if (sealed.length < SEALED_OVERHEAD || sealed[0] !== VERSION) {
    throw new CryptoError('STREAM_CORRUPT', 'sealed cluster record is truncated or of an unknown version');
  }
  const nonce = sealed.subarray(1, 1 + NONCE_LEN);
  const tag = sealed.subarray(sealed.length - TAG_LEN);
  const body = sealed.subarray(1 + NONCE_LEN, sealed.length - TAG_LEN);
  try {
    const d = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_LEN });
    d.setAAD(aad);
    d.setAuthTag(tag);
    return Buffer.concat([d.update(body), d.final()]);
  } catch (e) {
    throw new CryptoError('STREAM_CORRUPT', 'sealed cluster record failed authentication (wrong key, wrong place or tampered)', { cause: e });
  }
}
