/**
 * User password hashing with scrypt (node:crypto): a random 16-byte salt per user, constant-time
 * verification. Encoded as `scrypt$1$<log2N>$<r>$<p>$<salt b64>$<hash b64>` so parameters can be
 * raised later without breaking stored hashes (`needsRehash`).
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, randomInt } from 'node:crypto';
import { CryptoError } from './errors.js';
import { HashQueue, type HashJobOptions } from './hash-queue.js';

export type { HashJobOptions } from './hash-queue.js';

// OWASP Password Storage Cheat Sheet, scrypt: "a minimum CPU/memory cost parameter of (2^17), a
// minimum block size of 8 (1024 bytes), and a parallelization parameter of 1". We use exactly
// that: 128 MiB and 2^17 block mixes per hash (about 0.45 s on one core here).
// The set used before, N=2^15, r=8, p=3, is one of the cheat sheet's alternatives but not the
// same strength: its CPU work is 3 * 2^15 / 2^17 = 0.75 of the minimum, and an attacker's
// memory-time cost (memory held x time, what makes scrypt expensive on GPUs and ASICs) is
// 32 MiB x 0.75 against 128 MiB x 1, about 0.19 of the minimum, because the three lanes run one
// after the other in the same 32 MiB. Hashes with those parameters are rehashed on the next
// login (`needsRehash`). The 128 MiB per hash is bounded by MAX_CONCURRENT_HASHES.
export const PASSWORD_LOG2N = 17; // 128 MiB
export const PASSWORD_R = 8;
export const PASSWORD_P = 1;
/** At most this many scrypt computations of this module run at once (2 x 128 MiB); others wait. */
export const MAX_CONCURRENT_HASHES = 2;
/**
 * Hashes one source address may have waiting; one more is refused (HASH_BUSY). The daemon lets
 * a connection have one password check in flight, so this bounds how many connections of one
 * address queue work at once; round-robin between sources bounds their effect on others.
 */
export const MAX_QUEUED_HASHES_PER_SOURCE = 4;
const HASH_LEN = 32;
export const MAX_PASSWORD_BYTES = 1024;

/**
 * The one queue every scrypt of this module waits in: MAX_CONCURRENT_HASHES at once, taken
 * round-robin between source addresses, cancellable (crypto/hash-queue.ts).
 */
export const passwordHashQueue = new HashQueue(MAX_CONCURRENT_HASHES, MAX_QUEUED_HASHES_PER_SOURCE);

function scryptAsync(pw: Buffer, salt: Buffer, log2N: number, r: number, p: number, opts: HashJobOptions): Promise<Buffer> {
  const N = 2 ** log2N;
  return passwordHashQueue.run(
    () =>
      new Promise<Buffer>((resolve, reject) => {
        scryptCb(pw, salt, HASH_LEN, { N, r, p, maxmem: 128 * N * r * 2 + 1024 * 1024 }, (e, k) => (e ? reject(e) : resolve(k)));
      }),
    opts,
  );
}

function pwBytes(pw: string): Buffer {
  const b = Buffer.from(pw.normalize('NFC'), 'utf8');
  if (b.length > MAX_PASSWORD_BYTES) throw new CryptoError('PASSWORD_HASH_INVALID', `passwords are limited to ${MAX_PASSWORD_BYTES} bytes`);
  return b;
}

/**
 * A new scrypt hash of `password` (encoded, see the module doc). `opts`: the source address the
 * work is queued under and a signal that cancels it (CryptoError HASH_BUSY / HASH_CANCELLED).
 */
export async function hashPassword(password: string, log2N = PASSWORD_LOG2N, opts: HashJobOptions = {}): Promise<string> {
  const salt = randomBytes(16);
  const h = await scryptAsync(pwBytes(password), salt, log2N, PASSWORD_R, PASSWORD_P, opts);
  return `scrypt$1$${log2N}$${PASSWORD_R}$${PASSWORD_P}$${salt.toString('base64')}$${h.toString('base64')}`;
}

function parse(encoded: string): { log2N: number; r: number; p: number; salt: Buffer; hash: Buffer } {
  const parts = encoded.split('$');
  if (parts.length !== 7 || parts[0] !== 'scrypt' || parts[1] !== '1') throw new CryptoError('PASSWORD_HASH_INVALID', 'unknown password hash format');
  const [log2N, r, p] = [Number(parts[2]), Number(parts[3]), Number(parts[4])];
  // Only parameter sets this server writes or wrote (r=8; p=1, or p=3 of the former N=2^15 set;
  // N up to 2^17): a hash restored from an archive cannot make a login cost gigabytes.
  if (!(Number.isInteger(log2N) && log2N >= 10 && log2N <= PASSWORD_LOG2N && r === PASSWORD_R && (p === 1 || p === 3))) throw new CryptoError('PASSWORD_HASH_INVALID', 'password hash parameters out of range');
  return { log2N, r, p, salt: Buffer.from(parts[5]!, 'base64'), hash: Buffer.from(parts[6]!, 'base64') };
}

/**
 * Constant-time comparison; false for a wrong password, throws for a malformed hash
 * (PASSWORD_HASH_INVALID) and, with `opts`, HASH_BUSY / HASH_CANCELLED as hashPassword.
 */
export async function verifyPassword(password: string, encoded: string, opts: HashJobOptions = {}): Promise<boolean> {
  const { log2N, r, p, salt, hash } = parse(encoded);
  let pw: Buffer;
  try {
    pw = pwBytes(password);
  } catch {
    return false;
  }
  const h = await scryptAsync(pw, salt, log2N, r, p, opts);
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
