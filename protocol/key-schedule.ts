import { hkdf, hmacSha256, sha256 } from '../crypto/handshake-crypto.js';
import { FINISHED_LEN, SIGNATURE_CONTEXT } from './constants.js';

/**
 * The key schedule of docs/PROTOCOL.md ("Key schedule"). Every label is ASCII; HKDF is
 * HKDF-SHA256 with extract and expand in one call.
 */
const EMPTY = Buffer.alloc(0);

export interface DirectionKeys {
  /** Traffic secret; the next one is derived from it on KEY_UPDATE. */
  secret: Buffer;
  key: Buffer;
  iv: Buffer;
}

export interface SessionSecrets {
  /** SHA-256(ClientHello || ServerHello without its signature). */
  readonly transcriptHash: Buffer;
  /** SHA-256(ClientHello || complete ServerHello), what the Finished MACs cover. */
  readonly finishedHash: Buffer;
  readonly clientToServer: DirectionKeys;
  readonly serverToClient: DirectionKeys;
  readonly clientFinished: Buffer;
  readonly serverFinished: Buffer;
}

export function transcriptHash(clientHello: Uint8Array, serverHelloSigned: Uint8Array): Buffer {
  return sha256(clientHello, serverHelloSigned);
}

export function signatureInput(th: Uint8Array): Buffer {
  return Buffer.concat([SIGNATURE_CONTEXT, th]);
}

export function directionKeys(secret: Buffer): DirectionKeys {
  return { secret, key: hkdf(secret, EMPTY, 'CMSP v1 key', 32), iv: hkdf(secret, EMPTY, 'CMSP v1 iv', 12) };
}

export function nextDirectionKeys(current: DirectionKeys): DirectionKeys {
  const next = directionKeys(hkdf(current.secret, EMPTY, 'CMSP v1 key update', 32));
  wipeDirection(current);
  return next;
}

export function wipeDirection(k: DirectionKeys): void {
  k.secret.fill(0);
  k.key.fill(0);
  k.iv.fill(0);
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
  const c2s = directionKeys(hkdf(master, EMPTY, 'CMSP v1 c2s traffic', 32));
  const s2c = directionKeys(hkdf(master, EMPTY, 'CMSP v1 s2c traffic', 32));
  const cFinKey = hkdf(master, EMPTY, 'CMSP v1 c2s finished', 32);
  const sFinKey = hkdf(master, EMPTY, 'CMSP v1 s2c finished', 32);
  const clientFinished = hmacSha256(cFinKey, fh).subarray(0, FINISHED_LEN);
  const serverFinished = hmacSha256(sFinKey, fh).subarray(0, FINISHED_LEN);
  master.fill(0);
  cFinKey.fill(0);
  sFinKey.fill(0);
  return { transcriptHash: th, finishedHash: fh, clientToServer: c2s, serverToClient: s2c, clientFinished, serverFinished };
}
