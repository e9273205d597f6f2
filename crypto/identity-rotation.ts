/**
 * The signed statement of an identity key rollover (docs/PROTOCOL.md section 7.7): "the server
 * whose identity key was `old` now uses `new`", signed by both keys. The old key's signature says
 * the holder of the key clients pin designated the successor; the new key's signature proves the
 * server holds the successor's private key (the proof OpenSSH's hostkeys-prove-00@openssh.com
 * asks for). Pure: bytes in, bytes out, no files.
 *
 *   rotation_message = "CMSP identity rotation v1" || 0x00 || old_spki (294) || new_spki (294) || time (u64, ms)
 *   old_signature    = RSA-PSS-SHA256(old key, rotation_message), salt length 32
 *   new_signature    = RSA-PSS-SHA256(new key, rotation_message), salt length 32
 *
 * The context string separates these signatures from every other use of the identity key (the
 * handshake's "CMSP v1 server signature", change-log heads, archive origins).
 */
import { fingerprintOf, IDENTITY_SIGNATURE_LEN, IDENTITY_SPKI_LEN, signTranscript, verifyTranscript, type IdentityKey } from './identity.js';

export const ROTATION_CONTEXT = Buffer.from('CMSP identity rotation v1\0', 'latin1');
/** context 26 + two SPKIs + time u64. */
export const ROTATION_MESSAGE_LEN = ROTATION_CONTEXT.length + 2 * IDENTITY_SPKI_LEN + 8;
/** A rotation time is milliseconds since the epoch, at most this (JavaScript's safe integers). */
export const MAX_ROTATION_TIME = Number.MAX_SAFE_INTEGER;

export interface RotationStatement {
  /** SubjectPublicKeyInfo (DER) of the key being replaced. */
  readonly old: Buffer;
  /** SubjectPublicKeyInfo (DER) of its successor. */
  readonly new: Buffer;
  /** When the successor was added, milliseconds since the epoch. */
  readonly time: number;
  readonly oldSignature: Buffer;
  readonly newSignature: Buffer;
}

/** The signed bytes; throws RangeError on a wrong SPKI length or a time out of range. */
export function rotationMessage(oldSpki: Uint8Array, newSpki: Uint8Array, time: number): Buffer {
  if (oldSpki.length !== IDENTITY_SPKI_LEN || newSpki.length !== IDENTITY_SPKI_LEN) throw new RangeError('identity keys are RSA-2048 SubjectPublicKeyInfo, 294 bytes');
  if (!Number.isSafeInteger(time) || time < 0) throw new RangeError('rotation time must be a non-negative integer (ms)');
  const t = Buffer.alloc(8);
  t.writeBigUInt64BE(BigInt(time));
  return Buffer.concat([ROTATION_CONTEXT, oldSpki, newSpki, t]);
}

/** Both signatures over the rollover from `oldKey` to `newKey` at `time` (ms). */
export function signRotation(oldKey: IdentityKey, newKey: IdentityKey, time: number): RotationStatement {
  if (oldKey.fingerprint === newKey.fingerprint) throw new RangeError('the next identity key must differ from the current one');
  const msg = rotationMessage(oldKey.spki, newKey.spki, time);
  return { old: Buffer.from(oldKey.spki), new: Buffer.from(newKey.spki), time, oldSignature: signTranscript(oldKey, msg), newSignature: signTranscript(newKey, msg) };
}

/**
 * True when the statement is well formed (lengths, distinct keys, time in range) and BOTH
 * signatures verify. Never throws.
 */
export function verifyRotation(s: RotationStatement): boolean {
  try {
    if (s.oldSignature.length !== IDENTITY_SIGNATURE_LEN || s.newSignature.length !== IDENTITY_SIGNATURE_LEN) return false;
    if (Buffer.from(s.old).equals(s.new)) return false;
    const msg = rotationMessage(s.old, s.new, s.time);
    return verifyTranscript(s.old, msg, s.oldSignature) && verifyTranscript(s.new, msg, s.newSignature);
  } catch {
    return false;
  }
}

/** Fingerprints (lower-case hex SHA-256 of the SPKI) of a statement's two keys. */
export function rotationFingerprints(s: RotationStatement): { old: string; new: string } {
  return { old: fingerprintOf(s.old), new: fingerprintOf(s.new) };
}
