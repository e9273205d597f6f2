/**
 * Password hashes imported from the old ComMusic system: salted SHA-512. Accepted format
 * (documented in docs/SECURITY.md):
 *
 *   sha512$<salt as hex, 8..128 hex digits>$<128 hex digits: SHA-512(salt bytes || UTF-8 password)>
 *
 * Such a hash is accepted at most once: the login that presents the right password replaces it
 * with a modern scrypt hash (crypto/password.ts). Comparison is constant-time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

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
