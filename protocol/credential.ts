import type { KeyObject } from 'node:crypto';
import { credentialPublicKey, type CredentialKey } from '../crypto/handshake-crypto.js';
import { signTranscript, verifyTranscript, type IdentityKey } from '../crypto/identity.js';
import {
  CREDENTIAL_BACKDATE_MS,
  CREDENTIAL_CLOCK_SKEW_MS,
  CREDENTIAL_CONTEXT,
  CREDENTIAL_LEN,
  CREDENTIAL_LIFETIME_MS,
  CREDENTIAL_MAX_VALIDITY_MS,
  CREDENTIAL_PUBLIC_LEN,
  CREDENTIAL_SCHEME_ED25519,
  CREDENTIAL_SIGNATURE_LEN,
  PROTOCOL_VERSION_3,
} from './constants.js';
import { ProtocolError } from './errors.js';

/**
 * Delegated credentials (docs/PROTOCOL.md 3.5, after RFC 9345 "Delegated Credentials for TLS
 * and DTLS"): the RSA-2048 identity key signs, once per few hours, a short-lived Ed25519 public
 * key with its validity window and the protocol version; version 3 handshakes are signed by
 * that Ed25519 key. Pure: every time is passed in (ms since the epoch).
 */
export interface ServerCredential {
  /** The 52 credential bytes as they travel in the ServerHello. */
  readonly bytes: Buffer;
  /** RSA-PSS by the identity key over credentialSignatureInput(spki, bytes), 256 bytes. */
  readonly signature: Buffer;
  /** The credential's Ed25519 key; its private half exists only in this process's memory. */
  readonly key: CredentialKey;
  /** SPKI of the identity key that signed it (the ServerHello carries this one). */
  readonly spki: Buffer;
  readonly validFrom: number;
  readonly validUntil: number;
}

export interface CredentialFields {
  validFrom: number;
  validUntil: number;
  version: number;
  scheme: number;
  publicRaw: Buffer;
}

/** valid_from u64 || valid_until u64 || version u16 || scheme u16 || public key (32). */
export function encodeCredential(f: CredentialFields): Buffer {
  if (f.publicRaw.length !== CREDENTIAL_PUBLIC_LEN) throw new ProtocolError('BAD_CREDENTIAL', 'credential key has the wrong size');
  const b = Buffer.alloc(CREDENTIAL_LEN);
  b.writeBigUInt64BE(BigInt(f.validFrom), 0);
  b.writeBigUInt64BE(BigInt(f.validUntil), 8);
  b.writeUInt16BE(f.version, 16);
  b.writeUInt16BE(f.scheme, 18);
  f.publicRaw.copy(b, 20);
  return b;
}

export function parseCredential(bytes: Uint8Array): CredentialFields {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length !== CREDENTIAL_LEN) throw new ProtocolError('BAD_CREDENTIAL', 'credential has the wrong length');
  const from = b.readBigUInt64BE(0);
  const until = b.readBigUInt64BE(8);
  if (from > BigInt(Number.MAX_SAFE_INTEGER) || until > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ProtocolError('BAD_CREDENTIAL', 'credential times out of range');
  }
  return { validFrom: Number(from), validUntil: Number(until), version: b.readUInt16BE(16), scheme: b.readUInt16BE(18), publicRaw: Buffer.from(b.subarray(20)) };
}

/** What the identity key signs: "CMSP v3 delegated credential" 0x00 || identity SPKI || credential. */
export function credentialSignatureInput(spki: Uint8Array, credential: Uint8Array): Buffer {
  return Buffer.concat([CREDENTIAL_CONTEXT, spki, credential]);
}

/**
 * Issues a credential for `key` under `identity` (one RSA-PSS signature), valid from
 * `now - CREDENTIAL_BACKDATE_MS` to `now + CREDENTIAL_LIFETIME_MS` unless a window is given.
 */
export function issueCredential(identity: IdentityKey, key: CredentialKey, now: number, window?: { validFrom: number; validUntil: number }): ServerCredential {
  const validFrom = window?.validFrom ?? now - CREDENTIAL_BACKDATE_MS;
  const validUntil = window?.validUntil ?? now + CREDENTIAL_LIFETIME_MS;
  const bytes = encodeCredential({ validFrom, validUntil, version: PROTOCOL_VERSION_3, scheme: CREDENTIAL_SCHEME_ED25519, publicRaw: key.publicRaw });
  const signature = signTranscript(identity, credentialSignatureInput(identity.spki, bytes));
  return { bytes, signature, key, spki: identity.spki, validFrom, validUntil };
}

/**
 * Remembers credentials whose identity signature verified (the same SPKI, credential and
 * signature bytes), so a client pays the RSA verification once per credential, not per
 * handshake. Times are checked on every use, never cached. At most `limit` entries, oldest
 * dropped first.
 */
export class CredentialCache {
  private readonly entries = new Map<string, KeyObject>();

  constructor(private readonly limit = 32) {}

  get size(): number {
    return this.entries.size;
  }

  get(id: string): KeyObject | undefined {
    return this.entries.get(id);
  }

  set(id: string, key: KeyObject): void {
    if (this.entries.size >= this.limit) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(id, key);
  }
}

/**
 * The client's checks of a credential (PROTOCOL.md 3.5), in this order: layout, version 3,
 * scheme Ed25519, window no longer than CREDENTIAL_MAX_VALIDITY_MS, the identity key's
 * signature, then `now` inside the window widened by CREDENTIAL_CLOCK_SKEW_MS at both ends (a
 * time error, which makes the SDK fall back to version 2, only for a credential the identity
 * key really signed: a forged expired one is BAD_CREDENTIAL, not a downgrade). Returns the
 * credential's public key. Errors: BAD_CREDENTIAL, CREDENTIAL_EXPIRED, CREDENTIAL_NOT_YET_VALID.
 */
export function checkCredential(spki: Buffer, credential: Buffer, signature: Buffer, now: number, cache?: CredentialCache): KeyObject {
  const f = parseCredential(credential);
  if (f.version !== PROTOCOL_VERSION_3) throw new ProtocolError('BAD_CREDENTIAL', `credential is for version ${f.version}`);
  if (f.scheme !== CREDENTIAL_SCHEME_ED25519) throw new ProtocolError('BAD_CREDENTIAL', `credential scheme ${f.scheme} is not Ed25519`);
  if (f.validUntil <= f.validFrom || f.validUntil - f.validFrom > CREDENTIAL_MAX_VALIDITY_MS) {
    throw new ProtocolError('BAD_CREDENTIAL', 'credential validity window is empty or longer than allowed');
  }
  if (signature.length !== CREDENTIAL_SIGNATURE_LEN) throw new ProtocolError('BAD_CREDENTIAL', 'credential signature has the wrong length');
  const id = cache ? `${spki.toString('base64')}.${credential.toString('base64')}.${signature.toString('base64')}` : '';
  let key = cache?.get(id);
  if (!key) {
    if (!verifyTranscript(spki, credentialSignatureInput(spki, credential), signature)) {
      throw new ProtocolError('BAD_CREDENTIAL', 'the identity key did not sign this credential');
    }
    key = credentialPublicKey(f.publicRaw);
    if (!key) throw new ProtocolError('BAD_CREDENTIAL', 'credential key is not an Ed25519 key');
    cache?.set(id, key);
  }
  if (now > f.validUntil + CREDENTIAL_CLOCK_SKEW_MS) throw new ProtocolError('CREDENTIAL_EXPIRED', 'the server credential has expired (or this clock is fast)');
  if (now < f.validFrom - CREDENTIAL_CLOCK_SKEW_MS) throw new ProtocolError('CREDENTIAL_NOT_YET_VALID', 'the server credential is not valid yet (or this clock is slow)');
  return key;
}
