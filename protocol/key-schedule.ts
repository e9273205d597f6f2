import type { KeyObject } from 'node:crypto';
import { aeadKey, hkdf, hkdfExpand, hkdfExtract, hmacSha256, sha256 } from '../crypto/handshake-crypto.js';
import { FINISHED_LEN, SIGNATURE_CONTEXT } from './constants.js';

/**
 * The key schedule of docs/PROTOCOL.md ("Key schedule"). Every label is ASCII; HKDF is
 * HKDF-SHA256 with extract and expand in one call.
 */
const EMPTY = Buffer.alloc(0);

/**
 * One direction's keys. `material` is one ArrayBuffer of its own holding the traffic secret
 * (bytes 0..31; the next one is derived from it on KEY_UPDATE) and the IV (bytes 32..43): one
 * small object per direction for an idle connection, no slab of Node's shared buffer pool
 * pinned. The AES-256-GCM key ("CMSP v1 key") is a KeyObject (export() gives its bytes).
 */
export class DirectionKeys {
  constructor(
    readonly material: Buffer,
    readonly key: KeyObject,
  ) {}

  /** A view of the traffic secret. */
  get secret(): Buffer {
    return this.material.subarray(0, 32);
  }

  /** A view of the IV. */
  get iv(): Buffer {
    return this.material.subarray(32, 44);
  }
}

/** Offset of the IV in DirectionKeys.material. */
export const IV_OFFSET = 32;

export interface SessionSecrets {
  /** SHA-256(ClientHello || ServerHello without its signature). */
  readonly transcriptHash: Buffer;
  /** SHA-256(ClientHello || complete ServerHello), what the Finished MACs cover. */
  readonly finishedHash: Buffer;
  readonly clientToServer: DirectionKeys;
  readonly serverToClient: DirectionKeys;
  readonly clientFinished: Buffer;
  readonly serverFinished: Buffer;
  /**
   * A secret value unique to this session that both sides know (PROTOCOL.md 4, "exporter"): what
   * an application binds its own authentication to (channel binding, as RFC 9266 tls-exporter).
   */
  readonly exporter: Buffer;
}

export function transcriptHash(clientHello: Uint8Array, serverHelloSigned: Uint8Array): Buffer {
  return sha256(clientHello, serverHelloSigned);
}

export function signatureInput(th: Uint8Array): Buffer {
  return Buffer.concat([SIGNATURE_CONTEXT, th]);
}

/**
 * Key and IV of one direction from its traffic secret. Secret and IV live together in one
 * ArrayBuffer of their own (44 bytes) and the key in a KeyObject, so an idle connection's key
 * material pins no slab of Node's shared buffer pool; the raw key bytes are wiped at once.
 */
export function directionKeys(secret: Buffer): DirectionKeys {
  const own = Buffer.allocUnsafeSlow(44);
  own.set(secret.subarray(0, 32), 0);
  // Both labels from one extract: HKDF(T, "", label, L) = Expand(Extract("", T), label, L).
  const prk = hkdfExtract(own.subarray(0, 32), EMPTY);
  const raw = hkdfExpand(prk, 'CMSP v1 key', 32);
  const key = aeadKey(raw);
  raw.fill(0);
  const iv = hkdfExpand(prk, 'CMSP v1 iv', 12);
  prk.fill(0);
  own.set(iv, 32);
  iv.fill(0);
  return new DirectionKeys(own, key);
}

export function nextDirectionKeys(current: DirectionKeys): DirectionKeys {
  const secret = hkdf(current.secret, EMPTY, 'CMSP v1 key update', 32);
  const next = directionKeys(secret);
  secret.fill(0);
  wipeDirection(current);
  return next;
}

/** Wipes secret and IV; the key's KeyObject is cleared by Node when it is collected. */
export function wipeDirection(k: DirectionKeys): void {
  k.material.fill(0);
}

export function deriveSessionSecrets(
  shared: Buffer,
  clientHello: Uint8Array,
  serverHelloSigned: Uint8Array,
  signature: Uint8Array,
): SessionSecrets {
  const th = transcriptHash(clientHello, serverHelloSigned);
  const fh = sha256(clientHello, serverHelloSigned, signature);
  const master = hkdf(shared, th, 'CMSP v1 master', 32);
  // Four labels from one extract of the master secret (same values as four separate HKDFs).
  const prk = hkdfExtract(master, EMPTY);
  const c2sSecret = hkdfExpand(prk, 'CMSP v1 c2s traffic', 32);
  const s2cSecret = hkdfExpand(prk, 'CMSP v1 s2c traffic', 32);
  const c2s = directionKeys(c2sSecret);
  const s2c = directionKeys(s2cSecret);
  c2sSecret.fill(0);
  s2cSecret.fill(0);
  const cFinKey = hkdfExpand(prk, 'CMSP v1 c2s finished', 32);
  const sFinKey = hkdfExpand(prk, 'CMSP v1 s2c finished', 32);
  const exporter = hkdfExpand(prk, 'CMSP v1 exporter', 32);
  prk.fill(0);
  const clientFinished = hmacSha256(cFinKey, fh).subarray(0, FINISHED_LEN);
  const serverFinished = hmacSha256(sFinKey, fh).subarray(0, FINISHED_LEN);
  master.fill(0);
  cFinKey.fill(0);
  sFinKey.fill(0);
  return { transcriptHash: th, finishedHash: fh, clientToServer: c2s, serverToClient: s2c, clientFinished, serverFinished, exporter };
}
