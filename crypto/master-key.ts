/**
 * The master key (key-encryption key) of a ComMusic server: 256 random bits in one key file,
 * `<data>/keys/master.key`, mode 0600 in a folder of mode 0700, owned by the daemon's user.
 * It never encrypts anything itself (one key, one job): labelled HKDF sub-keys of it wrap each
 * club's data key (crypto/wrap.ts) and key the server database (storage/server/server-db.ts).
 *
 * Key file format, version 1 (all integers big-endian):
 *
 *   offset len  field
 *   0      4    magic "CMMK"
 *   4      1    format version = 1
 *   5      1    kind: 0 = plain key, 1 = key wrapped with an operator passphrase
 *   6      2    reserved, 0
 *   kind 0 (total 72 bytes):
 *   8      32   master key
 *   40     32   SHA-256 over bytes 0..39 (detects a damaged file, not an attacker)
 *   kind 1 (total 112 bytes):
 *   8      1    scrypt log2(N)   (default 17: N = 131072, 128 MiB of memory)
 *   9      1    scrypt r         (default 8)
 *   10     1    scrypt p         (default 1)
 *   11     1    reserved, 0
 *   12     32   scrypt salt (random)
 *   44     12   AES-256-GCM nonce (random)
 *   56     32   master key, encrypted with AES-256-GCM under scrypt(passphrase, salt)
 *   88     16   GCM tag; AAD = bytes 0..55 (header, parameters, salt, nonce)
 *   104    8    reserved, 0
 *
 * scrypt N=2^17, r=8, p=1 is the parameter set OWASP lists for scrypt; it costs about 0.4 s and
 * 128 MiB once per daemon start, which is what makes guessing passphrases from a stolen file slow.
 * A wrong passphrase fails the GCM tag: WRONG_PASSPHRASE, and nothing is written.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { chmodSync, closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readSync, statSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { CryptoError } from './errors.js';
import { atomicWriteFileSync } from './atomic-file.js';

export const MASTER_KEY_LEN = 32;
export const KEY_FILE_MAGIC = Buffer.from('CMMK', 'ascii');
export const KEY_FILE_VERSION = 1;
export const KEY_FILE_KIND_PLAIN = 0;
export const KEY_FILE_KIND_PASSPHRASE = 1;
export const KEY_FILE_PLAIN_LEN = 72;
export const KEY_FILE_PASSPHRASE_LEN = 112;
export const SCRYPT_DEFAULT_LOG2N = 17;
export const SCRYPT_MIN_LOG2N = 10;
export const SCRYPT_MAX_LOG2N = 20;
const GCM_NONCE_LEN = 12;

export interface MasterKey {
  /** 32 bytes. Call `destroy()` when done to zero it. */
  readonly key: Buffer;
  /** Public, non-secret identifier: hex of HMAC-SHA256(key, "commusic/key-id/v1")[0..8]. */
  readonly id: string;
  readonly path: string;
  readonly passphraseProtected: boolean;
  destroy(): void;
}

export interface KeyFileOptions {
  /** Operator passphrase. Absent: the key file holds the key in the clear (protected by mode/owner). */
  passphrase?: string | Buffer;
  /** scrypt cost as log2(N); only for creation. Default 17. Tests may lower it (minimum 10). */
  scryptLog2N?: number;
}

/** A short public identifier of any 256-bit key (safe to log, to store next to wrapped data). */
export function keyIdOf(key: Uint8Array): Buffer {
  return createHmac('sha256', key).update('commusic/key-id/v1').digest().subarray(0, 8);
}

export function defaultMasterKeyPath(dataDir: string): string {
  return join(dataDir, 'keys', 'master.key');
}

function modeString(mode: number): string {
  return '0' + (mode & 0o777).toString(8).padStart(3, '0');
}

/**
 * Refuse a key file (and its folder) whose type, mode or owner is unsafe. Throws KEY_FILE_UNSAFE
 * naming the problem and the command that fixes it; KEY_FILE_MISSING when it does not exist.
 */
export function checkKeyFileSafety(path: string, uid: number = process.getuid?.() ?? -1): void {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CryptoError('KEY_FILE_MISSING', `key file ${path} does not exist; restore it from the key backup, or initialise a new data folder`);
    }
    throw e;
  }
  if (st.isSymbolicLink()) {
    throw new CryptoError('KEY_FILE_UNSAFE', `key file ${path} is a symbolic link; replace it with the real file (mv the target to ${path}) and chmod 600 it`);
  }
  if (!st.isFile()) {
    throw new CryptoError('KEY_FILE_UNSAFE', `key file ${path} is not a regular file; remove it and restore the key file from the key backup`);
  }
  if ((st.mode & 0o077) !== 0) {
    throw new CryptoError('KEY_FILE_UNSAFE', `key file ${path} is readable or writable by group/others (mode ${modeString(st.mode)}); run chmod 600 ${path}`);
  }
  if (uid >= 0 && st.uid !== uid) {
    throw new CryptoError('KEY_FILE_UNSAFE', `key file ${path} is owned by uid ${st.uid}, not by the daemon's uid ${uid}; run chown ${uid} ${path} (and check who changed it)`);
  }
  if (st.nlink !== 1) {
    throw new CryptoError('KEY_FILE_UNSAFE', `key file ${path} has ${st.nlink} hard links; another name can read it. Find them (find / -samefile ${path}) and remove them`);
  }
  const dir = dirname(path);
  const dst = statSync(dir);
  if ((dst.mode & 0o077) !== 0) {
    throw new CryptoError('KEY_FILE_UNSAFE', `key folder ${dir} is accessible by group/others (mode ${modeString(dst.mode)}); run chmod 700 ${dir}`);
  }
  if (uid >= 0 && dst.uid !== uid) {
    throw new CryptoError('KEY_FILE_UNSAFE', `key folder ${dir} is owned by uid ${dst.uid}, not by the daemon's uid ${uid}; run chown ${uid} ${dir}`);
  }
}

function scryptAsync(pass: Buffer, salt: Buffer, log2N: number, r: number, p: number): Promise<Buffer> {
  const N = 2 ** log2N;
  return new Promise((resolve, reject) => {
    scryptCb(pass, salt, 32, { N, r, p, maxmem: 128 * N * r * 2 + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function passBuf(p: string | Buffer): Buffer {
  return typeof p === 'string' ? Buffer.from(p.normalize('NFC'), 'utf8') : p;
}

function makeMasterKey(key: Buffer, path: string, passphraseProtected: boolean): MasterKey {
  return {
    key,
    id: keyIdOf(key).toString('hex'),
    path,
    passphraseProtected,
    destroy() {
      key.fill(0);
    },
  };
}

/** Serialise a key into the key file format (see top of file). */
export async function encodeKeyFile(key: Buffer, opts: KeyFileOptions = {}): Promise<Buffer> {
  if (key.length !== MASTER_KEY_LEN) throw new CryptoError('BAD_KEY_LENGTH', `master key must be ${MASTER_KEY_LEN} bytes`);
  if (opts.passphrase === undefined) {
    const out = Buffer.alloc(KEY_FILE_PLAIN_LEN);
    KEY_FILE_MAGIC.copy(out, 0);
    out[4] = KEY_FILE_VERSION;
    out[5] = KEY_FILE_KIND_PLAIN;
    key.copy(out, 8);
    createHash('sha256').update(out.subarray(0, 40)).digest().copy(out, 40);
    return out;
  }
  const log2N = opts.scryptLog2N ?? SCRYPT_DEFAULT_LOG2N;
  if (!Number.isInteger(log2N) || log2N < SCRYPT_MIN_LOG2N || log2N > SCRYPT_MAX_LOG2N) {
    throw new CryptoError('KEY_FILE_INVALID', `scrypt log2(N) must be ${SCRYPT_MIN_LOG2N}..${SCRYPT_MAX_LOG2N}`);
  }
  const out = Buffer.alloc(KEY_FILE_PASSPHRASE_LEN);
  KEY_FILE_MAGIC.copy(out, 0);
  out[4] = KEY_FILE_VERSION;
  out[5] = KEY_FILE_KIND_PASSPHRASE;
  out[8] = log2N;
  out[9] = 8;
  out[10] = 1;
  randomBytes(32).copy(out, 12);
  randomBytes(GCM_NONCE_LEN).copy(out, 44);
  const kek = await scryptAsync(passBuf(opts.passphrase), out.subarray(12, 44), log2N, 8, 1);
  const c = createCipheriv('aes-256-gcm', kek, out.subarray(44, 56));
  c.setAAD(out.subarray(0, 56));
  const ct = Buffer.concat([c.update(key), c.final()]);
  ct.copy(out, 56);
  c.getAuthTag().copy(out, 88);
  kek.fill(0);
  return out;
}

/** Parse key file bytes. Throws KEY_FILE_INVALID, PASSPHRASE_REQUIRED or WRONG_PASSPHRASE. */
export async function decodeKeyFile(buf: Buffer, path: string, passphrase?: string | Buffer): Promise<{ key: Buffer; passphraseProtected: boolean }> {
  if (buf.length < 8 || !buf.subarray(0, 4).equals(KEY_FILE_MAGIC)) {
    throw new CryptoError('KEY_FILE_INVALID', `${path} is not a ComMusic master key file (bad magic); restore it from the key backup`);
  }
  if (buf[4] !== KEY_FILE_VERSION) {
    throw new CryptoError('KEY_FILE_INVALID', `${path} has key file version ${buf[4]}, this server reads version ${KEY_FILE_VERSION}; upgrade the server`);
  }
  if (buf[5] === KEY_FILE_KIND_PLAIN) {
    if (buf.length !== KEY_FILE_PLAIN_LEN) throw new CryptoError('KEY_FILE_INVALID', `${path} has the wrong length for a plain key file; restore it from the key backup`);
    const sum = createHash('sha256').update(buf.subarray(0, 40)).digest();
    if (!timingSafeEqual(sum, buf.subarray(40, 72))) {
      throw new CryptoError('KEY_FILE_INVALID', `${path} is damaged (checksum mismatch); restore it from the key backup`);
    }
    return { key: Buffer.from(buf.subarray(8, 40)), passphraseProtected: false };
  }
  if (buf[5] === KEY_FILE_KIND_PASSPHRASE) {
    if (buf.length !== KEY_FILE_PASSPHRASE_LEN) throw new CryptoError('KEY_FILE_INVALID', `${path} has the wrong length for a passphrase key file; restore it from the key backup`);
    if (passphrase === undefined) {
      throw new CryptoError('PASSPHRASE_REQUIRED', `key file ${path} is protected by an operator passphrase; start with --passphrase-fd N or answer the prompt`);
    }
    const log2N = buf[8]!;
    const r = buf[9]!;
    const p = buf[10]!;
    // Only what encodeKeyFile writes (r=8, p=1), so a planted key file cannot demand more.
    if (log2N < SCRYPT_MIN_LOG2N || log2N > SCRYPT_MAX_LOG2N || r !== 8 || p !== 1) {
      throw new CryptoError('KEY_FILE_INVALID', `${path} carries out-of-range scrypt parameters; restore it from the key backup`);
    }
    const kek = await scryptAsync(passBuf(passphrase), buf.subarray(12, 44), log2N, r, p);
    try {
      const d = createDecipheriv('aes-256-gcm', kek, buf.subarray(44, 56));
      d.setAAD(buf.subarray(0, 56));
      d.setAuthTag(buf.subarray(88, 104));
      const key = Buffer.concat([d.update(buf.subarray(56, 88)), d.final()]);
      return { key, passphraseProtected: true };
    } catch {
      throw new CryptoError('WRONG_PASSPHRASE', `the passphrase does not open key file ${path}; nothing was changed. Check the passphrase (keyboard layout, trailing newline in the passphrase file)`);
    } finally {
      kek.fill(0);
    }
  }
  throw new CryptoError('KEY_FILE_INVALID', `${path} has unknown key kind ${buf[5]}; restore it from the key backup`);
}

function readSmallFileNoFollow(path: string): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > 4096) throw new CryptoError('KEY_FILE_INVALID', `${path} is not a key file (size ${st.size})`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

/** Check safety (type, mode, owner, folder) and load the master key. Never writes. */
export async function loadMasterKey(path: string, opts: KeyFileOptions = {}): Promise<MasterKey> {
  checkKeyFileSafety(path);
  const buf = readSmallFileNoFollow(path);
  const { key, passphraseProtected } = await decodeKeyFile(buf, path, opts.passphrase);
  buf.fill(0);
  return makeMasterKey(key, path, passphraseProtected);
}

/** Make `<dir>` with mode 0700 (and tighten it if it exists and is ours). */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  if ((st.mode & 0o077) !== 0 && st.uid === process.getuid?.()) chmodSync(dir, 0o700);
}

/**
 * Write a key file atomically with mode 0600 (folder 0700). Refuses to replace an existing file
 * unless `overwrite` (key rotation writes a new name and renames it itself).
 */
export async function writeKeyFile(path: string, key: Buffer, opts: KeyFileOptions & { overwrite?: boolean } = {}): Promise<void> {
  ensurePrivateDir(dirname(path));
  if (!opts.overwrite && existsSync(path)) {
    throw new CryptoError('KEY_FILE_EXISTS', `key file ${path} already exists; refusing to overwrite a master key (that would make every club unreadable)`);
  }
  const bytes = await encodeKeyFile(key, opts);
  atomicWriteFileSync(path, bytes, 0o600);
  bytes.fill(0);
}

/** Generate a new random master key and write its key file. */
export async function createMasterKey(path: string, opts: KeyFileOptions = {}): Promise<MasterKey> {
  const key = randomBytes(MASTER_KEY_LEN);
  await writeKeyFile(path, key, opts);
  return makeMasterKey(key, path, opts.passphrase !== undefined);
}

/** Wrap an existing key buffer (tests, rotation). The buffer is owned by the result. */
export function masterKeyFromBytes(key: Buffer, path = '(memory)', passphraseProtected = false): MasterKey {
  if (key.length !== MASTER_KEY_LEN) throw new CryptoError('BAD_KEY_LENGTH', `master key must be ${MASTER_KEY_LEN} bytes`);
  return makeMasterKey(key, path, passphraseProtected);
}
