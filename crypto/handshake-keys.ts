import { createHash, createHmac, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, randomFillSync, sign, type KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';

/**
 * The handshake's public-key operations (docs/PROTOCOL.md 3 and 3.5): the ephemeral X25519 key
 * of each handshake (RFC 7748) and the delegated credential's Ed25519 key (RFC 8032, RFC 9345).
 *
 * Two implementations with identical results (tests/handshake-keys.test.ts checks both against
 * the RFC vectors, the protocol vectors and each other):
 * - `native`: the addon crypto/native/record_aead.c (pkeyGenerate, x25519Derive, ed25519Sign),
 *   built by `npm ci` against the OpenSSL inside node. A key is one EVP_PKEY in native memory and
 *   its public value comes out raw; the Ed25519 key keeps its signing context. Through
 *   node:crypto every key costs a KeyObject, a key-generation job object and a JWK encoding, and
 *   every agreement a JWK import of the peer's value (issue 13: these were the largest items of
 *   the server's handshake profile after the arithmetic itself).
 * - `node`: node:crypto, the reference, used when the addon cannot be loaded or answers a fixed
 *   key differently (the self test when this module loads), or with COMMUSIC_HANDSHAKE_KEYS=node.
 *
 * Security properties, both implementations: each call of ephemeral() makes a fresh key from
 * OpenSSL's DRBG; wipeEphemeral() ends a key's life right after its one agreement (the native
 * key is freed and cleansed by OpenSSL at once; node:crypto's KeyObject is dropped and cleared
 * when collected); a wiped key agrees to nothing; private keys never appear as JavaScript bytes.
 */
export type HandshakeKeyImpl = 'native' | 'node';

/** An ephemeral X25519 key: its raw public value and an opaque private half. */
export interface EphemeralKey {
  /** Raw 32-byte X25519 public value. */
  readonly publicRaw: Buffer;
}

/** A delegated credential's key pair (protocol version 3): Ed25519, kept in memory only. */
export interface CredentialKey {
  /** Raw 32-byte Ed25519 public key. */
  readonly publicRaw: Buffer;
}

interface NativeKeys {
  pkeyGenerate(kind: number, pub: Uint8Array): object;
  pkeyFromPrivate(kind: number, priv: Uint8Array, pub: Uint8Array): object;
  pkeyDestroy(key: object): void;
  x25519Derive(key: object, peer: Uint8Array, out: Uint8Array): boolean;
  ed25519Sign(key: object, message: Uint8Array, out: Uint8Array): void;
  randomFill(out: Uint8Array): void;
}

/** The addon's SHA-256, HMAC-SHA256 and HKDF-SHA256 (outputs into caller-provided buffers). */
export interface NativeHash {
  sha256(out: Uint8Array, ...parts: Uint8Array[]): void;
  hmacSha256(key: Uint8Array, data: Uint8Array, out: Uint8Array): void;
  /** RFC 5869 into out (1..8160 bytes); extract false: ikm is the PRK, expand only. */
  hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, out: Uint8Array, extract: boolean): void;
}

const X25519_KIND = 1;
const ED25519_KIND = 2;

class NativeKey implements EphemeralKey, CredentialKey {
  constructor(
    public handle: object | undefined,
    readonly publicRaw: Buffer,
  ) {}
}

class NodeKey implements EphemeralKey, CredentialKey {
  constructor(
    public privateKey: KeyObject | undefined,
    readonly publicRaw: Buffer,
  ) {}
}

/** Path of the built addon, relative to this file in dist/crypto/ (the record AEAD's addon). */
const ADDON = '../../build/Release/record_aead.node';

/** `COMMUSIC_HANDSHAKE_KEYS=node` in the environment: node:crypto even when the addon is built. */
export const HANDSHAKE_KEYS_ENV = 'COMMUSIC_HANDSHAKE_KEYS';

let native: NativeKeys | undefined;
let nativeHashes: NativeHash | undefined;
let loadError: string | undefined;

/**
 * The addon's hash functions when it loaded and passed the self test (crypto/handshake-crypto.ts
 * uses them for the handshake's hashes and key schedule), else undefined: node:crypto then.
 */
export function nativeHash(): NativeHash | undefined {
  return nativeHashes;
}

/**
 * Which implementation the functions below use by default, and why: `{ impl: 'native' }`, or
 * `{ impl: 'node', reason }` (the loader's first line or the self test's verdict, nothing secret).
 */
export function handshakeKeysBackend(): { impl: HandshakeKeyImpl; reason?: string } {
  return native ? { impl: 'native' } : { impl: 'node', reason: loadError ?? 'not loaded' };
}

function pick(impl: HandshakeKeyImpl | undefined): NativeKeys | undefined {
  if (impl === 'node') return undefined;
  if (impl === 'native' && !native) throw new Error(`handshake key addon not available: ${loadError ?? 'not loaded'}`);
  return native;
}

// --- X25519 -------------------------------------------------------------------------------------

const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
const X25519_SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');

/**
 * generateKeyPairSync with only the public key encoded (Node accepts it; its type declarations
 * want both encodings or none): the private key stays a KeyObject, the public key comes encoded.
 */
export const keyPairWithEncodedPublic = generateKeyPairSync as unknown as (type: string, options: object) => { privateKey: KeyObject; publicKey: unknown };

/** A fresh ephemeral X25519 key (one per handshake, never reused: see wipeEphemeral). */
export function generateEphemeral(impl?: HandshakeKeyImpl): EphemeralKey {
  const lib = pick(impl);
  if (lib) {
    const pub = Buffer.allocUnsafe(32);
    return new NativeKey(lib.pkeyGenerate(X25519_KIND, pub), pub);
  }
  // The public key comes encoded as JWK from the key generation itself (a field copy; DER goes
  // through OpenSSL's encoder, about 70 µs). Never export() a freshly generated key afterwards:
  // Node 20 holds the key's mutex while export allocates, a garbage collection in that moment
  // finalises the finished key-generation job, whose destructor takes the same mutex, and the
  // thread deadlocks (seen here within 30,000 handshakes; tests/handshake.test.ts).
  const { privateKey, publicKey } = keyPairWithEncodedPublic('x25519', { publicKeyEncoding: { format: 'jwk' } });
  return new NodeKey(privateKey, Buffer.from((publicKey as { x: string }).x, 'base64url'));
}

/** Builds an ephemeral key from fixed private bytes (32; test vectors and test helpers only). */
export function ephemeralFromPrivate(raw: Uint8Array, impl?: HandshakeKeyImpl): EphemeralKey {
  if (raw.length !== 32) throw new RangeError('X25519 private keys are 32 bytes');
  const lib = pick(impl);
  if (lib) {
    const pub = Buffer.alloc(32);
    return new NativeKey(lib.pkeyFromPrivate(X25519_KIND, raw, pub), pub);
  }
  const privateKey = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
  const publicRaw = createPublicKey(privateKey).export({ type: 'spki', format: 'der' }).subarray(X25519_SPKI_PREFIX.length);
  return new NodeKey(privateKey, Buffer.from(publicRaw));
}

/**
 * X25519 (RFC 7748) of the own ephemeral key with the peer's raw public value: a fresh 32-byte
 * Buffer (the caller wipes it). Undefined for a peer value that is not 32 bytes, for a low-order
 * peer value (all-zero shared secret, RFC 7748 6.1, which would make the session key
 * predictable), and for a key already wiped.
 */
export function x25519(own: EphemeralKey, peerRaw: Uint8Array): Buffer | undefined {
  if (peerRaw.length !== 32) return undefined;
  let secret: Buffer;
  if (own instanceof NativeKey) {
    if (!own.handle || !native) return undefined;
    secret = Buffer.alloc(32);
    if (!native.x25519Derive(own.handle, peerRaw, secret)) return undefined;
  } else if (own instanceof NodeKey) {
    if (!own.privateKey) return undefined;
    try {
      // Imported as JWK: OpenSSL's DER decoder costs about 80 µs per key, the JWK path about 6 µs.
      const publicKey = createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(peerRaw).toString('base64url') }, format: 'jwk' });
      secret = diffieHellman({ privateKey: own.privateKey, publicKey });
    } catch {
      return undefined;
    }
  } else {
    return undefined;
  }
  let acc = 0;
  for (let i = 0; i < secret.length; i++) acc |= secret[i]!;
  if (acc === 0) return undefined;
  return secret;
}

/**
 * Ends an ephemeral key's life (forward secrecy: called right after its one agreement). The
 * native key is freed at once (OpenSSL cleanses the private bytes); node:crypto's KeyObject is
 * dropped and cleared when collected. Later x25519() calls with it give undefined.
 */
export function wipeEphemeral(own: EphemeralKey): void {
  if (own instanceof NativeKey) {
    if (own.handle && native) native.pkeyDestroy(own.handle);
    own.handle = undefined;
  } else if (own instanceof NodeKey) {
    own.privateKey = undefined;
  }
}

// --- Ed25519 (delegated credentials) --------------------------------------------------------------

const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/**
 * A fresh Ed25519 key for a delegated credential. As for ephemeral keys: through node:crypto the
 * public key comes encoded (JWK) from the generation itself and the fresh key is never export()ed.
 */
export function generateCredentialKey(impl?: HandshakeKeyImpl): CredentialKey {
  const lib = pick(impl);
  if (lib) {
    const pub = Buffer.alloc(32);
    return new NativeKey(lib.pkeyGenerate(ED25519_KIND, pub), pub);
  }
  const { privateKey, publicKey } = keyPairWithEncodedPublic('ed25519', { publicKeyEncoding: { format: 'jwk' } });
  return new NodeKey(privateKey, Buffer.from((publicKey as { x: string }).x, 'base64url'));
}

/** An Ed25519 credential key from fixed private bytes (RFC 8032 seed, 32 bytes; test vectors only). */
export function credentialKeyFromPrivate(raw: Uint8Array, impl?: HandshakeKeyImpl): CredentialKey {
  if (raw.length !== 32) throw new RangeError('Ed25519 seeds are 32 bytes');
  const lib = pick(impl);
  if (lib) {
    const pub = Buffer.alloc(32);
    return new NativeKey(lib.pkeyFromPrivate(ED25519_KIND, raw, pub), pub);
  }
  const privateKey = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
  const publicRaw = createPublicKey(privateKey).export({ type: 'spki', format: 'der' }).subarray(ED25519_SPKI_PREFIX.length);
  return new NodeKey(privateKey, Buffer.from(publicRaw));
}

/** Ed25519 signature (RFC 8032, pure: no pre-hash), 64 bytes; deterministic. Throws for a key that is not a credential key. */
export function credentialSign(key: CredentialKey, message: Uint8Array): Buffer {
  if (key instanceof NativeKey && key.handle && native) {
    const out = Buffer.allocUnsafe(64);
    native.ed25519Sign(key.handle, message, out);
    return out;
  }
  if (key instanceof NodeKey && key.privateKey) return sign(null, message, key.privateKey);
  throw new TypeError('not a live credential key');
}

// --- randomness ----------------------------------------------------------------------------------

/** 32 fresh random bytes (OpenSSL's DRBG, as crypto.randomBytes), for the hellos' random fields. */
export function random32(): Buffer {
  const out = Buffer.allocUnsafe(32);
  if (native) native.randomFill(out);
  else randomFillSync(out);
  return out;
}

// --- loading ----------------------------------------------------------------------------------------

/**
 * Compares the addon with node:crypto on fixed keys (RFC 7748 6.1's Alice and Bob, an Ed25519
 * signature): throws when they differ, so an addon built wrong never takes part in a handshake.
 */
function selfTest(): void {
  const a = Buffer.from('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a', 'hex');
  const bPub = Buffer.from('de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f', 'hex');
  const shared = '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742';
  const n = ephemeralFromPrivate(a, 'native');
  const r = ephemeralFromPrivate(a, 'node');
  const sn = x25519(n, bPub);
  const sr = x25519(r, bPub);
  wipeEphemeral(n);
  const seed = Buffer.alloc(32, 0x5c);
  const msg = Buffer.from('ComMusic handshake key self test', 'ascii');
  const cn = credentialKeyFromPrivate(seed, 'native');
  const cr = credentialKeyFromPrivate(seed, 'node');
  const ok =
    n.publicRaw.equals(r.publicRaw) &&
    sn !== undefined &&
    sr !== undefined &&
    sn.toString('hex') === shared &&
    sn.equals(sr) &&
    cn.publicRaw.equals(cr.publicRaw) &&
    credentialSign(cn, msg).equals(credentialSign(cr, msg)) &&
    x25519(n, bPub) === undefined;
  if (!ok) throw new Error('the handshake key addon disagrees with node:crypto');
  // RFC 5869 A.1 (HKDF-SHA256), and HMAC/SHA-256 against node:crypto on the same bytes.
  const h = native as unknown as NativeHash;
  const ikm = Buffer.alloc(22, 0x0b);
  const salt = Buffer.from('000102030405060708090a0b0c', 'hex');
  const info = Buffer.from('f0f1f2f3f4f5f6f7f8f9', 'hex');
  const okm = Buffer.alloc(42);
  h.hkdfSha256(ikm, salt, info, okm, true);
  const mac = Buffer.alloc(32);
  h.hmacSha256(salt, info, mac);
  const dig = Buffer.alloc(32);
  h.sha256(dig, ikm, info);
  const hashOk =
    okm.toString('hex') === '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865' &&
    mac.equals(createHmac('sha256', salt).update(info).digest()) &&
    dig.equals(createHash('sha256').update(ikm).update(info).digest());
  if (!hashOk) throw new Error('the addon\'s SHA-256/HKDF disagrees with node:crypto');
}

if (process.env[HANDSHAKE_KEYS_ENV] === 'node') {
  loadError = `${HANDSHAKE_KEYS_ENV}=node`;
} else {
  try {
    const lib = createRequire(import.meta.url)(ADDON) as Partial<NativeKeys>;
    if (typeof lib.pkeyGenerate !== 'function' || typeof lib.x25519Derive !== 'function' || typeof lib.ed25519Sign !== 'function') {
      throw new Error('the addon has no handshake key functions (built from an older source)');
    }
    if (typeof lib.randomFill !== 'function' || typeof (lib as Partial<NativeHash>).hkdfSha256 !== 'function') throw new Error('the addon has no hash functions (built from an older source)');
    native = lib as NativeKeys;
    selfTest();
    nativeHashes = lib as unknown as NativeHash;
  } catch (e) {
    native = undefined;
    loadError = (e as Error).message.split('\n')[0];
  }
}
