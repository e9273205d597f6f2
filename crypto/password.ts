/**
 * User password hashing with scrypt (node:crypto): a random 16-byte salt per user, constant-time
 * verification. Encoded as `scrypt$1$<log2N>$<r>$<p>$<salt b64>$<hash b64>` so parameters can be
 * raised later without breaking stored hashes (`needsRehash`).
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, randomInt } from 'node:crypto';
import { CryptoError } from './errors.js';

// OWASP Password Storage Cheat Sheet, scrypt: N=2^17,r=8,p=1 or an equivalent such as
// N=2^15,r=8,p=3. We take the latter: the same work, but 32 MiB per hash instead of 128 MiB, so
// concurrent logins cannot push the daemon's memory up by 128 MiB each.
export const PASSWORD_LOG2N = 15; // 32 MiB
export const PASSWORD_R = 8;
export const PASSWORD_P = 3;
const HASH_LEN = 32;
export const MAX_PASSWORD_BYTES = 1024;

function scryptAsync(pw: Buffer, salt: Buffer, log2N: number, r: number, p: number): Promise<Buffer> {
  const N = 2 ** log2N;
  return new Promise((resolve, reject) => {
    scryptCb(pw, salt, HASH_LEN, { N, r, p, maxmem: 128 * N * r * 2 + 1024 * 1024 }, (e, k) => (e ? reject(e) : resolve(k)));
  });
}

function pwBytes(pw: string): Buffer {
  const b = Buffer.from(pw.normalize('NFC'), 'utf8');
  if (b.length > MAX_PASSWORD_BYTES) throw new CryptoError('PASSWORD_HASH_INVALID', `passwords are limited to ${MAX_PASSWORD_BYTES} bytes`);
  return b;
}

export async function hashPassword(password: string, log2N = PASSWORD_LOG2N): Promise<string> {
  const salt = randomBytes(16);
  const h = await scryptAsync(pwBytes(password), salt, log2N, PASSWORD_R, PASSWORD_P);
  return `scrypt$1$${log2N}$${PASSWORD_R}$${PASSWORD_P}$${salt.toString('base64')}$${h.toString('base64')}`;
}

function parse(encoded: string): { log2N: number; r: number; p: number; salt: Buffer; hash: Buffer } {
  const parts = encoded.split('$');
  if (parts.length !== 7 || parts[0] !== 'scrypt' || parts[1] !== '1') throw new CryptoError('PASSWORD_HASH_INVALID', 'unknown password hash format');
  const [log2N, r, p] = [Number(parts[2]), Number(parts[3]), Number(parts[4])];
  if (!(log2N >= 10 && log2N <= 20 && r >= 1 && r <= 32 && p >= 1 && p <= 16)) throw new CryptoError('PASSWORD_HASH_INVALID', 'password hash parameters out of range');
  return { log2N, r, p, salt: Buffer.from(parts[5]!, 'base64'), hash: Buffer.from(parts[6]!, 'base64') };
}

/** Constant-time comparison; false for a wrong password, throws only for a malformed hash. */
export async function verifyPassword(password: string, encoded: string): Promise<boolean> {
  const { log2N, r, p, salt, hash } = parse(encoded);
  let pw: Buffer;
  try {
    pw = pwBytes(password);
  } catch {
    return false;
  }
  const h = await scryptAsync(pw, salt, log2N, r, p);
  return h.length === hash.length && timingSafeEqual(h, hash);
}

export function needsRehash(encoded: string): boolean {
  const { log2N, r, p } = parse(encoded);
  return log2N < PASSWORD_LOG2N || r !== PASSWORD_R || p !== PASSWORD_P;
}

const OTP_ALPHABET = 'abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789';

/** A one-time password an operator can read out: 20 characters, ~114 bits. */
export function generateOneTimePassword(len = 20): string {
  let s = '';
  for (let i = 0; i < len; i++) s += OTP_ALPHABET[randomInt(OTP_ALPHABET.length)];
  return s;
}
