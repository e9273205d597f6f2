/**
 * Archive origin: proof that a backup archive was made by this server (or by a server whose key
 * the operator named), over the archive's header and its manifest. The manifest carries the
 * SHA-256 of the store image and of every document, and the reader checks each against it, so
 * the proof covers the whole content.
 *
 * Why: a club archive is sealed to the club's *public* key, so anyone who has seen one header
 * can seal an archive of their own to the same club; the encryption proves nothing about who
 * made it. The origin entry does (issue 10, docs/BACKUPS.md "Origin").
 *
 *   message = "commusic/backup/v2/origin\0" || SHA-256(header bytes) || SHA-256(manifest bytes)
 *   - "rsa-pss": RSA-PSS-SHA256 (salt 32) with the server identity key (the key clients pin);
 *     the entry names the key (SubjectPublicKeyInfo and its SHA-256 fingerprint). Verifiable on
 *     another server when its operator names this key (--trust-key).
 *   - "hmac": HMAC-SHA256 under HKDF(server archive key, "commusic/backup/v2/origin"), used
 *     when the data folder has no identity key; only the server holding server.db verifies it.
 */
import { createHash, createHmac, createPublicKey, hkdfSync, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fingerprintOf, loadIdentity, normalizeFingerprint, signTranscript, verifyTranscript, type IdentityKey } from '../../crypto/identity.js';
import { BackupError } from './backup-errors.js';

export const ORIGIN_ENTRY = 'origin.json';
const ORIGIN_CONTEXT = Buffer.from('commusic/backup/v2/origin\0', 'ascii');
const ORIGIN_MAC_INFO = 'commusic/backup/v2/origin-mac';
const MAX_ORIGIN_JSON = 8192;

/** How this server proves origin: its identity key, or a MAC key derived from its archive key. */
export type OriginSigner = { kind: 'rsa-pss'; identity: IdentityKey } | { kind: 'hmac'; macKey: Buffer };

/** What a reader accepts: keys by SubjectPublicKeyInfo (own identity plus --trust-key), fingerprints to match, and this server's MAC key. */
export interface OriginTrust {
  /** Trusted identity public keys (DER SubjectPublicKeyInfo). */
  keys: Buffer[];
  /** Trusted fingerprints (lower-case hex SHA-256 of the SPKI); the SPKI comes from the entry. */
  fingerprints: string[];
  macKey?: Buffer;
  /** Further MAC keys accepted for reading: those of this server's retired archive keys (storage/backup/archive-keys.ts). */
  retiredMacKeys?: Buffer[];
}

/** The entry inside the archive (JSON, second tar entry). */
export interface OriginEntry {
  v: 1;
  alg: 'rsa-pss' | 'hmac';
  /** rsa-pss: base64 SPKI of the signing key. */
  spki?: string;
  fingerprint?: string;
  /** base64 signature or MAC. */
  proof: string;
}

/** What a verified origin says (reported by verify and restore). */
export interface VerifiedOrigin {
  alg: 'rsa-pss' | 'hmac';
  /** rsa-pss: the signing key's fingerprint. */
  fingerprint?: string;
  /** 'this-server' or 'trusted-key' (named by the operator). */
  trustedAs: 'this-server' | 'trusted-key';
}

/** Derive the MAC key from the server archive key (32 bytes in, 32 bytes out). */
export function originMacKey(serverArchiveKey: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', serverArchiveKey, Buffer.alloc(0), ORIGIN_MAC_INFO, 32));
}

/** The identity key file of a data folder (the same file the daemon loads: keys/identity.pem). */
export function identityKeyPath(dataDir: string): string {
  return join(dataDir, 'keys', 'identity.pem');
}

/** The identity key of a data folder when it has one (checked like the daemon checks it), else undefined. */
export function loadDataDirIdentity(dataDir: string): IdentityKey | undefined {
  const p = identityKeyPath(dataDir);
  return existsSync(p) ? loadIdentity(p) : undefined;
}

function originMessage(header: Buffer, manifest: Buffer): Buffer {
  return Buffer.concat([ORIGIN_CONTEXT, createHash('sha256').update(header).digest(), createHash('sha256').update(manifest).digest()]);
}

/** Sign header and manifest bytes; returns the JSON entry bytes to store as origin.json. */
export function signOrigin(signer: OriginSigner, header: Buffer, manifest: Buffer): Buffer {
  const msg = originMessage(header, manifest);
  let entry: OriginEntry;
  if (signer.kind === 'rsa-pss') {
    entry = { v: 1, alg: 'rsa-pss', spki: signer.identity.spki.toString('base64'), fingerprint: signer.identity.fingerprint, proof: signTranscript(signer.identity, msg).toString('base64') };
  } else {
    entry = { v: 1, alg: 'hmac', proof: createHmac('sha256', signer.macKey).update(msg).digest('base64') };
  }
  return Buffer.from(JSON.stringify(entry) + '\n', 'utf8');
}

/**
 * Check an origin entry against the trust. Throws BackupError ORIGIN_UNVERIFIED with a sentence
 * saying why (no entry, damaged, key not trusted, signature wrong); returns what was verified.
 */
export function verifyOrigin(entryBytes: Buffer | undefined, header: Buffer, manifest: Buffer, trust: OriginTrust, clubId: string): VerifiedOrigin {
  if (!entryBytes) throw new BackupError('ORIGIN_UNVERIFIED', `archive of club ${clubId} carries no origin proof; it was not made by a ComMusic server of this version and is refused`);
  if (entryBytes.length > MAX_ORIGIN_JSON) throw new BackupError('ORIGIN_UNVERIFIED', 'archive origin entry is too large');
  let e: OriginEntry;
  try {
    e = JSON.parse(entryBytes.toString('utf8')) as OriginEntry;
  } catch {
    throw new BackupError('ORIGIN_UNVERIFIED', 'archive origin entry is damaged (not JSON)');
  }
  if (!e || e.v !== 1 || typeof e.proof !== 'string') throw new BackupError('ORIGIN_UNVERIFIED', 'archive origin entry is damaged');
  const proof = Buffer.from(e.proof, 'base64');
  const msg = originMessage(header, manifest);
  if (e.alg === 'hmac') {
    if (!trust.macKey) throw new BackupError('ORIGIN_UNVERIFIED', `archive of club ${clubId} is authenticated with another server's archive key; only that server verifies it`);
    const matches = (k: Buffer) => {
      const want = createHmac('sha256', k).update(msg).digest();
      return proof.length === want.length && timingSafeEqual(proof, want);
    };
    if (!matches(trust.macKey) && !(trust.retiredMacKeys ?? []).some(matches)) throw new BackupError('ORIGIN_UNVERIFIED', `archive of club ${clubId} was not made by this server (its origin MAC does not verify): forged, altered, or made by another server without an identity key`);
    return { alg: 'hmac', trustedAs: 'this-server' };
  }
  if (e.alg !== 'rsa-pss' || typeof e.spki !== 'string') throw new BackupError('ORIGIN_UNVERIFIED', 'archive origin entry names an unknown algorithm');
  const spki = Buffer.from(e.spki, 'base64');
  const fp = fingerprintOf(spki);
  const own = trust.keys.some((k) => k.equals(spki));
  const named = trust.fingerprints.includes(fp);
  if (!own && !named) {
    throw new BackupError('ORIGIN_UNVERIFIED', `archive of club ${clubId} was signed by server key ${fp}, which is not this server's key; if that server is yours, name its key with --trust-key ${fp}`);
  }
  if (!verifyTranscript(spki, msg, proof)) throw new BackupError('ORIGIN_UNVERIFIED', `archive of club ${clubId} has an origin signature that does not verify under key ${fp}: forged or altered`);
  return { alg: 'rsa-pss', fingerprint: fp, trustedAs: own ? 'this-server' : 'trusted-key' };
}

/**
 * Parse `--trust-key` values: a SHA-256 fingerprint (hex, colons allowed, "sha256:" prefix) or a
 * PEM file holding the other server's public key (or its identity.pem). Returns fingerprints.
 * Throws BackupError BAD_TRUST_KEY naming the value it cannot read.
 */
export function parseTrustKeys(values: readonly string[]): string[] {
  const out: string[] = [];
  for (const v of values) {
    const fp = normalizeFingerprint(v);
    if (fp) {
      out.push(fp);
      continue;
    }
    let pem: string;
    try {
      pem = readFileSync(v, 'utf8');
    } catch {
      throw new BackupError('BAD_TRUST_KEY', `--trust-key ${v}: neither a SHA-256 fingerprint nor a readable PEM key file`);
    }
    try {
      const spki = createPublicKey({ key: pem, format: 'pem' }).export({ type: 'spki', format: 'der' });
      out.push(fingerprintOf(spki));
    } catch {
      throw new BackupError('BAD_TRUST_KEY', `--trust-key ${v}: the file holds no PEM public or private key`);
    }
  }
  return out;
}
