/**
 * Password hashes imported from the old ComMusic system: salted SHA-512. Accepted format
 * (documented in docs/SECURITY.md):
 *
 *   sha512$<salt as hex, 8..128 hex digits>$<128 hex digits: SHA-512(salt bytes || UTF-8 password)>
 *
 * A fast hash is never stored: the import wraps it at once into a memory-hard hash,
 *
 *   sha512-scrypt$<legacy salt hex>$<scrypt hash (crypto/password.ts) of the 128 hex digits>
 *
 * and a login verifies in two layers: SHA-512(salt || password) as hex, then scrypt over that
 * (constant-time compare inside verifyPassword). The login that presents the right password
 * replaces it with a plain scrypt hash. Stores written before the wrapping may still hold bare
 * `sha512$` hashes: they are still accepted once (constant-time) and replaced the same way.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { CryptoError } from './errors.js';
import { hashPassword, verifyPassword, type HashJobOptions } from './password.js';

const WRAPPED_PREFIX = 'sha512-scrypt$';
const WRAPPED_RE = /^sha512-scrypt\$([0-9a-f]{8,128})\$(scrypt\$.{1,300})$/;

/**
 * Wrap a normalised legacy hash (parseLegacySha512) into `sha512-scrypt$...` for storage;
 * `log2N` is the scrypt cost (default crypto/password.ts, tests lower it).
 */
export async function wrapLegacySha512(normalised: string, log2N?: number): Promise<string> {
  const m = LEGACY_RE.exec(normalised);
  if (!m) throw new Error('not a legacy sha512 hash');
  const inner = await hashPassword(m[2]!.toLowerCase(), log2N);
  return `${WRAPPED_PREFIX}${m[1]!.toLowerCase()}$${inner}`;
}

export function isWrappedLegacySha512(encoded: string): boolean {
  return encoded.startsWith(WRAPPED_PREFIX);
}

/**
 * Two layers: SHA-512(salt || password) hex, then the stored scrypt hash over it. False on any
 * mismatch; HASH_BUSY / HASH_CANCELLED of the hash queue (`opts`) are passed on.
 */
export async function verifyWrappedLegacySha512(password: string, encoded: string, opts: HashJobOptions = {}): Promise<boolean> {
  const m = WRAPPED_RE.exec(encoded);
  if (!m) return false;
  const digest = createHash('sha512').update(Buffer.from(m[1]!, 'hex')).update(Buffer.from(password.normalize('NFC'), 'utf8')).digest('hex');
  try {
    return await verifyPassword(digest, m[2]!, opts);
  } catch (e) {
    if (e instanceof CryptoError && (e.code === 'HASH_BUSY' || e.code === 'HASH_CANCELLED')) throw e;
    return false;
  }
}

const LEGACY_RE = /^sha512\$([0-9a-fA-F]{8,128})\$([0-9a-fA-F]{128})$/;

export function isLegacySha512(encoded: string): boolean {
  return LEGACY_RE.test(encoded);
}

/** Normalise an imported legacy hash (lower-case hex); undefined when the format is wrong. */
export function parseLegacySha512(encoded: string): string | undefined {
  const m = LEGACY_RE.exec(encoded.trim());
  if (!m || m[1]!.length % 2 !== 0) return undefined;
  return `sha512$${m[1]!.toLowerCase()}$${m[2]!.toLowerCase()}`;
}

export function verifyLegacySha512(password: string, encoded: string): boolean {
  const m = LEGACY_RE.exec(encoded);
  if (!m) return false;
  const salt = Buffer.from(m[1]!, 'hex');
  const want = Buffer.from(m[2]!, 'hex');
  const got = createHash('sha512').update(salt).update(Buffer.from(password.normalize('NFC'), 'utf8')).digest();
  return timingSafeEqual(got, want);
}

/** What the old system stored, for tests and import tools. */
export function legacySha512(password: string, salt: Buffer): string {
  return `sha512$${salt.toString('hex')}$${createHash('sha512').update(salt).update(Buffer.from(password.normalize('NFC'), 'utf8')).digest('hex')}`;
}
