import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  createSecretKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  sign,
  timingSafeEqual,
  verify,
  type CipherKey,
  type KeyObject,
} from 'node:crypto';

/**
 * The primitives the handshake and record layer need, all from node:crypto (OpenSSL).
 * The protocol layer receives them as an interface so tests can inject fixed randoms and
 * ephemeral keys and replay the documented test vectors byte for byte.
 */
export const X25519_KEY_LEN = 32;
export const AEAD_KEY_LEN = 32;
export const AEAD_IV_LEN = 12;
export const AEAD_TAG_LEN = 16;

const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const X25519_SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

export interface EphemeralKey {
  readonly privateKey: KeyObject;
  /** Raw 32-byte X25519 public value. */
  readonly publicRaw: Buffer;
}

export interface HandshakeRandomness {
  random32(): Buffer;
  ephemeral(): EphemeralKey;
}

/**
 * generateKeyPairSync with only the public key encoded (Node accepts it; its type declarations
 * want both encodings or none): the private key stays a KeyObject, the public key comes encoded.
 */
export const keyPairWithEncodedPublic = generateKeyPairSync as unknown as (type: string, options: object) => { privateKey: KeyObject; publicKey: unknown };

export const systemRandomness: HandshakeRandomness = {
  random32: () => randomBytes(32),
  ephemeral: () => {
    // The public key comes encoded as JWK from the key generation itself (a field copy; DER goes
    // through OpenSSL's encoder, about 70 µs). Never export() a freshly generated key afterwards:
    // Node 20 holds the key's mutex while export allocates, a garbage collection in that moment
    // finalises the finished key-generation job, whose destructor takes the same mutex, and the
    // thread deadlocks (seen here within 30,000 handshakes; tests/handshake.test.ts).
    const { privateKey, publicKey } = keyPairWithEncodedPublic('x25519', { publicKeyEncoding: { format: 'jwk' } });
    return { privateKey, publicRaw: Buffer.from((publicKey as { x: string }).x, 'base64url') };
  },
};

/** Builds an ephemeral key from fixed private bytes (test vectors only). */
export function ephemeralFromPrivate(raw: Uint8Array): EphemeralKey {
  const privateKey = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
  const publicRaw = createPublicKey(privateKey).export({ type: 'spki', format: 'der' }).subarray(X25519_SPKI_PREFIX.length);
  return { privateKey, publicRaw };
}

/** A delegated credential's key pair (protocol version 3): Ed25519, kept in memory only. */
export interface CredentialKey {
  readonly privateKey: KeyObject;
  /** Raw 32-byte Ed25519 public key. */
  readonly publicRaw: Buffer;
}

const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/**
 * A fresh Ed25519 key for a delegated credential. As for ephemeral(): the public key comes
 * encoded (JWK) from the generation itself and the fresh key is never export()ed.
 */
export function generateCredentialKey(): CredentialKey {
  const { privateKey, publicKey } = keyPairWithEncodedPublic('ed25519', { publicKeyEncoding: { format: 'jwk' } });
  return { privateKey, publicRaw: Buffer.from((publicKey as { x: string }).x, 'base64url') };
}

/** An Ed25519 credential key from fixed private bytes (RFC 8032 seed, 32 bytes; test vectors only). */
export function credentialKeyFromPrivate(raw: Uint8Array): CredentialKey {
  const privateKey = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
  const publicRaw = createPublicKey(privateKey).export({ type: 'spki', format: 'der' }).subarray(ED25519_SPKI_PREFIX.length);
  return { privateKey, publicRaw: Buffer.from(publicRaw) };
}

/** Ed25519 signature (RFC 8032, pure: no pre-hash), 64 bytes; deterministic. */
export function credentialSign(key: CredentialKey, message: Uint8Array): Buffer {
  return sign(null, message, key.privateKey);
}

/** The credential's raw Ed25519 public key as a KeyObject (JWK import: no DER decoder); undefined when it is not a valid key. */
export function credentialPublicKey(publicRaw: Uint8Array): KeyObject | undefined {
  if (publicRaw.length !== 32) return undefined;
  try {
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicRaw).toString('base64url') }, format: 'jwk' });
  } catch {
    return undefined;
  }
}

/** Verifies an Ed25519 signature; false for any malformed input, never throws. */
export function credentialVerify(publicKey: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  try {
    return signature.length === 64 && verify(null, message, publicKey, signature);
  } catch {
    return false;
  }
}

/**
 * X25519 with the peer's raw public value. Returns undefined for a low-order peer value
 * (all-zero shared secret), which would make the session key predictable.
 */
export function x25519(own: EphemeralKey, peerRaw: Uint8Array): Buffer | undefined {
  let secret: Buffer;
  try {
    if (peerRaw.length !== X25519_KEY_LEN) return undefined;
    // Imported as JWK: OpenSSL's DER decoder costs about 80 µs per key, the JWK path about 6 µs.
    const publicKey = createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(peerRaw).toString('base64url') }, format: 'jwk' });
    secret = diffieHellman({ privateKey: own.privateKey, publicKey });
  } catch {
    return undefined;
  }
  let acc = 0;
  for (const b of secret) acc |= b;
  return acc === 0 ? undefined : secret;
}

export function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

export function hmacSha256(key: Uint8Array, data: Uint8Array): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/** HKDF-SHA256 (RFC 5869), extract and expand in one step. */
export function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Buffer {
  if (length > 255 * 32) return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'ascii'), length));
  // The same RFC 5869 computation with two or three HMAC calls: about 4 µs against hkdfSync's 10 µs
  // (which sets up an OpenSSL KDF context each time).
  const prk = hkdfExtract(ikm, salt);
  const okm = hkdfExpand(prk, info, length);
  prk.fill(0);
  return okm;
}

/**
 * HKDF-SHA256 (RFC 5869) extract and expand in one OpenSSL call, for long outputs: one call
 * (about 10 µs) instead of one HMAC object per 32-byte block (about 4 µs each). The result is a
 * Buffer of its own (the caller wipes it).
 */
export function hkdfBlock(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'ascii'), length));
}

/** HKDF-Extract (RFC 5869 section 2.2): PRK = HMAC-SHA256(salt, ikm); an empty salt is 32 zero bytes. */
export function hkdfExtract(ikm: Uint8Array, salt: Uint8Array): Buffer {
  return createHmac('sha256', salt.length > 0 ? salt : ZERO_SALT).update(ikm).digest();
}

/**
 * HKDF-Expand (RFC 5869 section 2.3) from a PRK, `length` <= 8160 bytes. Several labels expanded
 * from one PRK cost one extract instead of one each (the key schedule expands up to four).
 */
export function hkdfExpand(prk: Uint8Array, info: string, length: number): Buffer {
  const infoBytes = Buffer.from(info, 'ascii');
  const blocks: Buffer[] = [];
  let prev = Buffer.alloc(0);
  for (let i = 1, got = 0; got < length; i++) {
    prev = createHmac('sha256', prk).update(prev).update(infoBytes).update(Buffer.of(i)).digest();
    blocks.push(prev);
    got += prev.length;
  }
  const okm = Buffer.concat(blocks).subarray(0, length);
  return Buffer.from(okm);
}

/** RFC 5869: an absent salt is HashLen zero bytes. */
const ZERO_SALT = Buffer.alloc(32);

export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * An AES-256 key as a KeyObject for the record layer: createCipheriv with a KeyObject skips
 * copying and checking raw key bytes on every call (measured here: 3.5 µs against 4.2 µs per
 * small record). Node keeps the bytes in native memory and clears them when the object is
 * collected; the raw `bytes` passed in are the caller's to wipe.
 */
export function aeadKey(bytes: Uint8Array): KeyObject {
  if (bytes.length !== AEAD_KEY_LEN) throw new RangeError('AES-256 keys are 32 bytes');
  return createSecretKey(bytes);
}

export function aesGcmSeal(key: CipherKey, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Buffer {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const body = c.update(plaintext);
  c.final();
  return Buffer.concat([body, c.getAuthTag()]);
}

/**
 * Seals `head` followed by `tail` (when given) as one AES-256-GCM plaintext and pushes the
 * ciphertext pieces and the tag onto `out`, without joining them: the caller writes them in
 * one go. The cipher copies key and nonce, so both may be reused buffers.
 */
export function aesGcmSealTo(key: CipherKey, nonce: Uint8Array, aad: Uint8Array, head: Uint8Array, tail: Uint8Array | undefined, out: Buffer[]): void {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const a = c.update(head);
  if (a.length > 0) out.push(a);
  if (tail && tail.length > 0) out.push(c.update(tail));
  c.final();
  out.push(c.getAuthTag());
}

/** Returns undefined when the tag does not verify; never throws for bad input. */
export function aesGcmOpen(key: CipherKey, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array): Buffer | undefined {
  if (sealed.length < AEAD_TAG_LEN) return undefined;
  const d = createDecipheriv('aes-256-gcm', key, nonce);
  d.setAAD(aad);
  d.setAuthTag(sealed.subarray(sealed.length - AEAD_TAG_LEN));
  const body = d.update(sealed.subarray(0, sealed.length - AEAD_TAG_LEN));
  try {
    d.final();
  } catch {
    return undefined;
  }
  return body;
}
