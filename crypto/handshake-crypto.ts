import { generateEphemeral, nativeHash, random32, type EphemeralKey, type NativeHash } from './handshake-keys.js';
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPublicKey,
  hkdfSync,
  timingSafeEqual,
  verify,
  type CipherKey,
  type KeyObject,
} from 'node:crypto';

/**
 * The primitives the handshake and record layer need, from node:crypto (OpenSSL); the public-key
 * operations of the handshake live in ./handshake-keys.ts (native addon, node:crypto fallback).
 * The protocol layer receives them as an interface so tests can inject fixed randoms and
 * ephemeral keys and replay the documented test vectors byte for byte.
 */
export const X25519_KEY_LEN = 32;
export const AEAD_KEY_LEN = 32;
export const AEAD_IV_LEN = 12;
export const AEAD_TAG_LEN = 16;

export type { CredentialKey, EphemeralKey, HandshakeKeyImpl } from './handshake-keys.js';
export {
  credentialKeyFromPrivate,
  credentialSign,
  ephemeralFromPrivate,
  generateCredentialKey,
  generateEphemeral,
  handshakeKeysBackend,
  keyPairWithEncodedPublic,
  wipeEphemeral,
  x25519,
} from './handshake-keys.js';

export interface HandshakeRandomness {
  random32(): Buffer;
  ephemeral(): EphemeralKey;
}

/** Fresh randoms and a fresh ephemeral key per call (crypto/handshake-keys.ts: native addon or node:crypto). */
export const systemRandomness: HandshakeRandomness = {
  random32,
  ephemeral: () => generateEphemeral(),
};

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
 * SHA-256 of the parts' concatenation. Through the native addon when it loaded (one digest
 * context per thread, no object per call; crypto/handshake-keys.ts), else node:crypto: the same
 * bytes (tests/handshake-keys.test.ts).
 */
export function sha256(...parts: Uint8Array[]): Buffer {
  const h = nativeHash();
  if (h && parts.length >= 1 && parts.length <= 4) {
    const out = Buffer.allocUnsafe(32);
    h.sha256(out, ...parts);
    return out;
  }
  return nodeSha256(parts);
}

function nodeSha256(parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

/** HMAC-SHA256 (RFC 2104), 32 bytes; native addon or node:crypto as sha256(). */
export function hmacSha256(key: Uint8Array, data: Uint8Array): Buffer {
  const h = nativeHash();
  if (h) {
    const out = Buffer.alloc(32);
    h.hmacSha256(key, data, out);
    return out;
  }
  return createHmac('sha256', key).update(data).digest();
}

/** HKDF-SHA256 (RFC 5869), extract and expand in one step; `length` 1..8160 bytes. */
export function hkdf(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Buffer {
  const h = nativeHash();
  if (h) return nativeHkdf(h, ikm, salt, info, length, true);
  if (length > 255 * 32) return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'ascii'), length));
  // The same RFC 5869 computation with two or three HMAC calls: about 4 µs against hkdfSync's 10 µs
  // (which sets up an OpenSSL KDF context each time).
  const prk = hkdfExtract(ikm, salt);
  const okm = hkdfExpand(prk, info, length);
  prk.fill(0);
  return okm;
}

/** The addon's HKDF into a Buffer of its own (no slab of the shared pool: the caller wipes it). */
function nativeHkdf(h: NativeHash, ikm: Uint8Array, salt: Uint8Array, info: string, length: number, extract: boolean): Buffer {
  if (!Number.isInteger(length) || length < 1 || length > 255 * 32) throw new RangeError('HKDF-SHA256 output is 1 to 8160 bytes');
  const out = Buffer.allocUnsafeSlow(length);
  h.hkdfSha256(ikm, salt, Buffer.from(info, 'ascii'), out, extract);
  return out;
}

/**
 * HKDF-SHA256 (RFC 5869) extract and expand in one call, for long outputs (the version 3 key
 * block). The result is a Buffer of its own (the caller wipes it). Native addon (one digest
 * context, no KeyObjects) or node:crypto's hkdfSync.
 */
export function hkdfBlock(ikm: Uint8Array, salt: Uint8Array, info: string, length: number): Buffer {
  const h = nativeHash();
  if (h) return nativeHkdf(h, ikm, salt, info, length, true);
  return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'ascii'), length));
}

/** HKDF-Extract (RFC 5869 section 2.2): PRK = HMAC-SHA256(salt, ikm); an empty salt is 32 zero bytes. */
export function hkdfExtract(ikm: Uint8Array, salt: Uint8Array): Buffer {
  const h = nativeHash();
  if (h) {
    const out = Buffer.alloc(32);
    h.hmacSha256(salt, ikm, out);
    return out;
  }
  return createHmac('sha256', salt.length > 0 ? salt : ZERO_SALT).update(ikm).digest();
}

/**
 * HKDF-Expand (RFC 5869 section 2.3) from a PRK, `length` <= 8160 bytes. Several labels expanded
 * from one PRK cost one extract instead of one each (the key schedule expands up to four).
 */
export function hkdfExpand(prk: Uint8Array, info: string, length: number): Buffer {
  const h = nativeHash();
  if (h) return nativeHkdf(h, prk, EMPTY, info, length, false);
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

const EMPTY = Buffer.alloc(0);

/** RFC 5869: an absent salt is HashLen zero bytes. */
const ZERO_SALT = Buffer.alloc(32);

export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
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
