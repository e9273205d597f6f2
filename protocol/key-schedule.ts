import { hkdf, hkdfBlock, hkdfExpand, hkdfExtract, hmacSha256, sha256 } from '../crypto/handshake-crypto.js';
import { FINISHED_LEN, SIGNATURE_CONTEXT, SIGNATURE_CONTEXT_V3 } from './constants.js';

/**
 * The key schedule of docs/PROTOCOL.md ("Key schedule"). Every label is ASCII; HKDF is
 * HKDF-SHA256 with extract and expand in one call.
 */
const EMPTY = Buffer.alloc(0);

/**
 * One direction's keys. `material` is one ArrayBuffer of its own holding the traffic secret
 * (bytes 0..31; the next one is derived from it on KEY_UPDATE), the IV (bytes 32..43) and the
 * AES-256-GCM key (bytes 44..75): one small object per direction for an idle connection, no
 * slab of Node's shared buffer pool pinned, no KeyObject (the record cipher copies the key into
 * its own native state; crypto/record-cipher.ts). wipeDirection() zeroes all three.
 */
export class DirectionKeys {
  constructor(
    readonly material: Buffer,
    /** Which key schedule derives key, IV and next(T) from the secret: 1 (versions 1, 2) or 3 (section 4.1). */
    readonly schedule: 1 | 3 = 1,
  ) {}

  /** A view of the traffic secret. */
  get secret(): Buffer {
    return this.material.subarray(0, 32);
  }

  /** A view of the IV. */
  get iv(): Buffer {
    return this.material.subarray(IV_OFFSET, IV_OFFSET + 12);
  }

  /** A view of the AES-256-GCM key ("CMSP v1 key", or the first 32 bytes of version 3's key and IV). */
  get key(): Buffer {
    return this.material.subarray(KEY_OFFSET, KEY_OFFSET + 32);
  }
}

/** Offset of the IV in DirectionKeys.material. */
export const IV_OFFSET = 32;
/** Offset of the AEAD key in DirectionKeys.material. */
const KEY_OFFSET = 44;
const MATERIAL_LEN = 76;

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
 * Key and IV of one direction from its traffic secret. Secret, IV and key live together in one
 * ArrayBuffer of their own (76 bytes), so an idle connection's key material pins no slab of
 * Node's shared buffer pool; the intermediate values are wiped at once.
 */
export function directionKeys(secret: Buffer): DirectionKeys {
  const own = Buffer.allocUnsafeSlow(MATERIAL_LEN);
  own.set(secret.subarray(0, 32), 0);
  // Both labels from one extract: HKDF(T, "", label, L) = Expand(Extract("", T), label, L).
  const prk = hkdfExtract(own.subarray(0, 32), EMPTY);
  const raw = hkdfExpand(prk, 'CMSP v1 key', 32);
  own.set(raw, KEY_OFFSET);
  raw.fill(0);
  const iv = hkdfExpand(prk, 'CMSP v1 iv', 12);
  prk.fill(0);
  own.set(iv, IV_OFFSET);
  iv.fill(0);
  return new DirectionKeys(own);
}

export function nextDirectionKeys(current: DirectionKeys): DirectionKeys {
  const v3 = current.schedule === 3;
  const secret = v3 ? hkdfExpand(current.secret, 'CMSP v3 key update', 32) : hkdf(current.secret, EMPTY, 'CMSP v1 key update', 32);
  const next = v3 ? directionKeysV3(secret) : directionKeys(secret);
  secret.fill(0);
  wipeDirection(current);
  return next;
}

/** Wipes secret, IV and key. */
export function wipeDirection(k: DirectionKeys): void {
  k.material.fill(0);
}

/**
 * Version 3 (section 4.1): key and IV of an updated traffic secret T, from one expand of T used
 * as the PRK directly (T is already a uniform 32-byte HKDF output, as TLS 1.3 uses its secrets):
 * key || iv = HKDF-Expand(T, "CMSP v3 key iv", 44).
 */
export function directionKeysV3(secret: Buffer): DirectionKeys {
  const keyIv = hkdfExpand(secret.subarray(0, 32), 'CMSP v3 key iv', 44);
  const keys = directionKeysV3From(secret, keyIv);
  keyIv.fill(0);
  return keys;
}

/** DirectionKeys from a version 3 secret and its 44 bytes of key and IV (the caller wipes both). */
function directionKeysV3From(secret: Uint8Array, keyIv: Uint8Array): DirectionKeys {
  const own = Buffer.allocUnsafeSlow(MATERIAL_LEN);
  own.set(secret.subarray(0, 32), 0);
  own.set(keyIv.subarray(32, 44), IV_OFFSET);
  own.set(keyIv.subarray(0, 32), KEY_OFFSET);
  return new DirectionKeys(own, 3);
}

/** Bytes of version 3's key block: two traffic secrets, two key+IV, two FINISHED values. */
export const KEY_BLOCK_V3_LEN = 32 + 32 + 44 + 44 + 32 + 32 + 32; // 248: ... finished values, exporter

/**
 * Version 3's schedule (section 4.1): one HKDF (extract, then expand in one OpenSSL call) over
 * the shared secret with the finished hash (the whole transcript, signature included) as salt
 * gives every secret of the handshake: about 10 µs here against version 1's 15 separate HMACs.
 */
export function deriveSessionSecretsV3(
  shared: Buffer,
  clientHello: Uint8Array,
  serverHelloSigned: Uint8Array,
  signature: Uint8Array,
  /** transcript_hash when the caller has it already (it signed or verified it). */
  knownTranscriptHash?: Buffer,
): SessionSecrets {
  const th = knownTranscriptHash ?? transcriptHash(clientHello, serverHelloSigned);
  const fh = sha256(clientHello, serverHelloSigned, signature);
  const block = hkdfBlock(shared, fh, 'CMSP v3 key block', KEY_BLOCK_V3_LEN);
  const c2s = directionKeysV3From(block.subarray(0, 32), block.subarray(64, 108));
  const s2c = directionKeysV3From(block.subarray(32, 64), block.subarray(108, 152));
  const finished = Buffer.from(block.subarray(152, 216));
  // HKDF-Expand's output blocks do not depend on the length asked for (RFC 5869 2.3), so the
  // exporter after the finished values leaves bytes 0..215 as they were.
  const exporter = Buffer.from(block.subarray(216, 248));
  block.fill(0);
  return {
    transcriptHash: th,
    finishedHash: fh,
    clientToServer: c2s,
    serverToClient: s2c,
    clientFinished: finished.subarray(0, FINISHED_LEN),
    serverFinished: finished.subarray(FINISHED_LEN, 2 * FINISHED_LEN),
    exporter,
  };
}

/** Version 3: "CMSP v3 server signature" 0x00 || transcript_hash, what the credential key signs. */
export function signatureInputV3(th: Uint8Array): Buffer {
  return Buffer.concat([SIGNATURE_CONTEXT_V3, th]);
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
