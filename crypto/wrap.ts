/**
 * Key wrapping: a 256-bit key encrypted under a key-encryption key (KEK) with AES-256-GCM.
 * The wrapped blob names the parent key by its public id and is bound, through the AAD, to what
 * the key is for (purpose, club id, key version or document id), so a wrapped key copied to
 * another club's row, or presented as another document's key, fails to unwrap.
 *
 * One key, one job: the AES key that wraps is never the parent key itself but a sub-key,
 * HKDF-SHA256(parent, info "commusic/wrap/v2/kek/<purpose>") (RFC 5869; NIST SP 800-57 Part 1
 * 5.2: a key is used for one purpose). So the master key is only ever HKDF/HMAC input, and a club
 * data key wraps document keys under a sub-key distinct from its SQLCipher page key
 * (`clubPageKey`). Version 1 blobs (wrapped directly under the parent, before this rule) are
 * still read; storage migrates them to version 2 when it opens a data folder or a store.
 *
 *   offset len  field
 *   0      1    version = 2 (1: legacy, KEK = parent key)
 *   1      8    parent key id (keyIdOf(parent))
 *   9      12   random nonce
 *   21     32   encrypted key
 *   53     16   GCM tag; AAD = bytes 0..20 || utf8(context label)
 *   total  69
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { CryptoError } from './errors.js';
import { keyIdOf } from './master-key.js';

export const WRAP_VERSION = 2;
/** Blobs wrapped directly under the parent key (before sub-keys); read, never written. */
export const WRAP_VERSION_LEGACY = 1;
/** HKDF info of a club store's SQLCipher page key, derived from the club data key. */
export const CLUB_PAGE_KEY_INFO = 'commusic/club/v2/page-key';
export const WRAPPED_KEY_LEN = 69;
export const DATA_KEY_LEN = 32;

export type WrapContext =
  | { purpose: 'club-data-key'; clubId: string; keyVersion: number }
  | { purpose: 'document-key'; clubId: string; docFile: string }
  | { purpose: 'other'; label: string };

export function contextLabel(ctx: WrapContext): string {
  switch (ctx.purpose) {
    case 'club-data-key':
      return `commusic/wrap/v1/club-data-key/${ctx.clubId}/${ctx.keyVersion}`;
    case 'document-key':
      return `commusic/wrap/v1/document-key/${ctx.clubId}/${ctx.docFile}`;
    case 'other':
      return `commusic/wrap/v1/other/${ctx.label}`;
  }
}

export function newDataKey(): Buffer {
  return randomBytes(DATA_KEY_LEN);
}

/** The AES key that wraps keys of `purpose` under `parent` (version 2 blobs). */
function wrappingSubkey(parent: Buffer, purpose: WrapContext['purpose']): Buffer {
  return deriveSubkey(parent, `commusic/wrap/v2/kek/${purpose}`);
}

/**
 * The SQLCipher page key of a club store: HKDF-SHA256(club data key, CLUB_PAGE_KEY_INFO). The
 * data key itself encrypts nothing; it is the root of the club's sub-keys.
 */
export function clubPageKey(dataKey: Buffer): Buffer {
  if (dataKey.length !== DATA_KEY_LEN) throw new CryptoError('BAD_KEY_LENGTH', 'a club data key is 32 bytes');
  return deriveSubkey(dataKey, CLUB_PAGE_KEY_INFO);
}

/** Wrap `key` (32 bytes) under a purpose sub-key of `parent` (32 bytes), bound to `ctx`. */
export function wrapKey(parent: Buffer, key: Buffer, ctx: WrapContext): Buffer {
  if (parent.length !== 32 || key.length !== DATA_KEY_LEN) throw new CryptoError('BAD_KEY_LENGTH', 'wrapKey needs a 32-byte KEK and a 32-byte key');
  const out = Buffer.alloc(WRAPPED_KEY_LEN);
  out[0] = WRAP_VERSION;
  keyIdOf(parent).copy(out, 1);
  randomBytes(12).copy(out, 9);
  const kek = wrappingSubkey(parent, ctx.purpose);
  try {
    const c = createCipheriv('aes-256-gcm', kek, out.subarray(9, 21));
    c.setAAD(Buffer.concat([out.subarray(0, 21), Buffer.from(contextLabel(ctx), 'utf8')]));
    Buffer.concat([c.update(key), c.final()]).copy(out, 21);
    c.getAuthTag().copy(out, 53);
  } finally {
    kek.fill(0);
  }
  return out;
}

/** The blob's format version (WRAP_VERSION, or WRAP_VERSION_LEGACY: to be re-wrapped). */
export function wrappedVersion(wrapped: Uint8Array): number {
  return wrapped[0] ?? 0;
}

/** The id of the KEK a wrapped blob claims (public; for diagnostics and recovery). */
export function wrappedKekId(wrapped: Uint8Array): string {
  return Buffer.from(wrapped.subarray(1, 9)).toString('hex');
}

/**
 * Unwrap. WRONG_KEY when the blob was wrapped under another KEK (ids differ), UNWRAP_FAILED when
 * the KEK matches but the blob or its context does not (tampering, copied between clubs).
 */
export function unwrapKey(kek: Buffer, wrapped: Uint8Array, ctx: WrapContext): Buffer {
  const w = Buffer.from(wrapped.buffer, wrapped.byteOffset, wrapped.byteLength);
  if (w.length !== WRAPPED_KEY_LEN || (w[0] !== WRAP_VERSION && w[0] !== WRAP_VERSION_LEGACY)) {
    throw new CryptoError('UNWRAP_FAILED', `wrapped key for ${contextLabel(ctx)} is malformed`);
  }
  if (!keyIdOf(kek).equals(w.subarray(1, 9))) {
    throw new CryptoError('WRONG_KEY', `wrapped key for ${contextLabel(ctx)} was wrapped under key id ${wrappedKekId(w)}, not under the loaded key ${keyIdOf(kek).toString('hex')}`);
  }
  const sub = w[0] === WRAP_VERSION ? wrappingSubkey(kek, ctx.purpose) : kek;
  try {
    const d = createDecipheriv('aes-256-gcm', sub, w.subarray(9, 21));
    d.setAAD(Buffer.concat([w.subarray(0, 21), Buffer.from(contextLabel(ctx), 'utf8')]));
    d.setAuthTag(w.subarray(53, 69));
    return Buffer.concat([d.update(w.subarray(21, 53)), d.final()]);
  } catch {
    throw new CryptoError('UNWRAP_FAILED', `wrapped key for ${contextLabel(ctx)} failed authentication (tampered or bound to another context)`);
  } finally {
    if (sub !== kek) sub.fill(0);
  }
}

/** HKDF-SHA256 to a 32-byte subkey; `info` names the use (domain separation). */
export function deriveSubkey(ikm: Buffer, info: string, salt: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from(info, 'utf8'), 32));
}
