import {
  createHash,
  createPrivateKey,
  createPublicKey,
  sign,
  verify,
  constants,
  type KeyObject,
} from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync } from 'node:fs';
import { atomicWriteFileSync } from './atomic-file.js';
import { keyPairWithEncodedPublic } from './handshake-crypto.js';
import { dirname } from 'node:path';

/**
 * The server's long-term identity: an RSA-2048 key that signs every handshake transcript.
 * Clients pin the SHA-256 fingerprint of its SubjectPublicKeyInfo (DER).
 */
export const IDENTITY_MODULUS_BITS = 2048;
/** RSA-2048 SubjectPublicKeyInfo in DER is always this long (e = 65537). */
export const IDENTITY_SPKI_LEN = 294;
export const IDENTITY_SIGNATURE_LEN = 256;
export const PSS_SALT_LEN = 32;

export class IdentityKeyError extends Error {
  constructor(
    readonly code: 'KEY_FILE_MISSING' | 'KEY_FILE_UNSAFE' | 'KEY_FILE_INVALID' | 'KEY_FILE_EXISTS',
    message: string,
  ) {
    super(message);
    this.name = 'IdentityKeyError';
  }
}

export interface IdentityKey {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** SubjectPublicKeyInfo, DER, exactly IDENTITY_SPKI_LEN bytes. */
  readonly spki: Buffer;
  /** Lower-case hex SHA-256 of spki. */
  readonly fingerprint: string;
}

export function fingerprintOf(spki: Uint8Array): string {
  return createHash('sha256').update(spki).digest('hex');
}

/**
 * Accepts the forms people paste: hex with or without colons, any case, an optional
 * "sha256:" prefix. Returns canonical lower-case hex or undefined when it is not a SHA-256.
 */
export function normalizeFingerprint(input: string): string | undefined {
  const hex = input.trim().replace(/^sha256:/i, '').replace(/:/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : undefined;
}

/**
 * `knownSpki`: the public key as SPKI DER when the caller already has it (generateIdentity gets it
 * from the key generation, so the fresh key is never export()ed: see systemRandomness.ephemeral).
 */
export function identityFromPrivateKey(privateKey: KeyObject, knownSpki?: Buffer): IdentityKey {
  if (privateKey.asymmetricKeyType !== 'rsa' || privateKey.asymmetricKeyDetails?.modulusLength !== IDENTITY_MODULUS_BITS) {
    throw new IdentityKeyError('KEY_FILE_INVALID', 'identity key must be an RSA-2048 private key');
  }
  const spki = knownSpki ?? createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  if (spki.length !== IDENTITY_SPKI_LEN) {
    throw new IdentityKeyError('KEY_FILE_INVALID', 'identity key must use the public exponent 65537');
  }
  return { privateKey, publicKey, spki, fingerprint: fingerprintOf(spki) };
}

export function generateIdentity(): IdentityKey {
  const { privateKey, publicKey } = keyPairWithEncodedPublic('rsa', {
    modulusLength: IDENTITY_MODULUS_BITS,
    publicExponent: 65537,
    publicKeyEncoding: { type: 'spki', format: 'der' },
  });
  return identityFromPrivateKey(privateKey, publicKey as Buffer);
}

export function identityFromPem(pem: string): IdentityKey {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch {
    throw new IdentityKeyError('KEY_FILE_INVALID', 'identity key file is not a PEM private key');
  }
  return identityFromPrivateKey(key);
}

export function signTranscript(identity: IdentityKey, message: Uint8Array): Buffer {
  return sign('sha256', message, {
    key: identity.privateKey,
    padding: constants.RSA_PKCS1_PSS_PADDING,
    saltLength: PSS_SALT_LEN,
  });
}

/**
 * An RSA-2048 SubjectPublicKeyInfo with e = 65537 is this prefix, the 256-byte modulus and this
 * suffix. Such a key is imported as JWK (about 4 µs) instead of through OpenSSL's DER decoder
 * (about 100 µs, on every client handshake); anything else takes the DER path.
 */
const RSA2048_SPKI_PREFIX = Buffer.from('30820122300d06092a864886f70d01010105000382010f003082010a0282010100', 'hex');
const RSA_E65537_SUFFIX = Buffer.from('0203010001', 'hex');

function importRsaSpki(spki: Uint8Array): KeyObject {
  const b = Buffer.from(spki);
  const p = RSA2048_SPKI_PREFIX.length;
  if (
    b.length === IDENTITY_SPKI_LEN &&
    b.subarray(0, p).equals(RSA2048_SPKI_PREFIX) &&
    b.subarray(b.length - RSA_E65537_SUFFIX.length).equals(RSA_E65537_SUFFIX) &&
    (b[p]! & 0x80) !== 0
  ) {
    return createPublicKey({ key: { kty: 'RSA', n: b.subarray(p, p + 256).toString('base64url'), e: 'AQAB' }, format: 'jwk' });
  }
  return createPublicKey({ key: b, format: 'der', type: 'spki' });
}

export function verifyTranscript(spki: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  try {
    const key = importRsaSpki(spki);
    if (key.asymmetricKeyType !== 'rsa' || key.asymmetricKeyDetails?.modulusLength !== IDENTITY_MODULUS_BITS) return false;
    return verify('sha256', message, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: PSS_SALT_LEN }, signature);
  } catch {
    return false;
  }
}

/**
 * Refuses a key file that anyone but its owner could read or replace: a symlink, not a
 * regular file, group/other permission bits, or an owner other than this process.
 */
export function assertPrivateFile(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    throw new IdentityKeyError('KEY_FILE_MISSING', `key file ${path} does not exist; create it with "commusicctl keys init"`);
  }
  if (st.isSymbolicLink()) {
    throw new IdentityKeyError('KEY_FILE_UNSAFE', `key file ${path} is a symbolic link; replace it with the real file`);
  }
  if (!st.isFile()) {
    throw new IdentityKeyError('KEY_FILE_UNSAFE', `key file ${path} is not a regular file`);
  }
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new IdentityKeyError(
      'KEY_FILE_UNSAFE',
      `key file ${path} is accessible by group or others (mode ${mode}); run: chmod 600 ${path}`,
    );
  }
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new IdentityKeyError(
      'KEY_FILE_UNSAFE',
      `key file ${path} is owned by uid ${st.uid}, not by the daemon's uid ${uid}; run: chown ${uid} ${path}`,
    );
  }
}

export function loadIdentity(path: string): IdentityKey {
  assertPrivateFile(path);
  return identityFromPem(readFileSync(path, 'utf8'));
}

/** The public half of the identity key lives beside the private key file: `identity.pub` (PEM SPKI). */
export function identityPublicPath(privatePath: string): string {
  return privatePath.replace(/\.pem$/, '') + '.pub';
}

/**
 * Write the public key file (mode 0644: public) when it is missing or does not match `identity`.
 * Verifiers (`log verify`) read it and never load the private key.
 */
export function ensurePublicKeyFile(privatePath: string, identity: IdentityKey): void {
  const path = identityPublicPath(privatePath);
  const pem = Buffer.from(identity.publicKey.export({ type: 'spki', format: 'pem' }) as string);
  if (existsSync(path) && readFileSync(path).equals(pem)) return;
  atomicWriteFileSync(path, pem, 0o644);
}

/**
 * Read the identity's public key (PEM SPKI, RSA-2048) from `identity.pub`; undefined when the file
 * is missing. Returns the SPKI bytes and their fingerprint. Loads no private key.
 */
export function loadPublicIdentity(privatePath: string): { spki: Buffer; fingerprint: string } | undefined {
  const path = identityPublicPath(privatePath);
  if (!existsSync(path)) return undefined;
  let key: KeyObject;
  try {
    key = createPublicKey({ key: readFileSync(path, 'utf8'), format: 'pem' });
  } catch {
    throw new IdentityKeyError('KEY_FILE_INVALID', `${path} is not a PEM public key; the daemon rewrites it from the identity key on its next start`);
  }
  if (key.asymmetricKeyType !== 'rsa' || key.asymmetricKeyDetails?.modulusLength !== IDENTITY_MODULUS_BITS) {
    throw new IdentityKeyError('KEY_FILE_INVALID', `${path} is not an RSA-2048 public key`);
  }
  const spki = key.export({ type: 'spki', format: 'der' });
  return { spki, fingerprint: fingerprintOf(spki) };
}

/** Writes atomically with mode 0600 (temporary file, fsync, rename); never overwrites. Also writes the public key file. */
export function saveIdentity(path: string, identity: IdentityKey): void {
  try {
    lstatSync(path);
    throw new IdentityKeyError('KEY_FILE_EXISTS', `key file ${path} already exists; refusing to overwrite it`);
  } catch (e) {
    if (e instanceof IdentityKeyError) throw e;
  }
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  atomicWriteFileSync(path, Buffer.from(identity.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string), 0o600);
  ensurePublicKeyFile(path, identity);
}
