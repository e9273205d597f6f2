/**
 * The change log as a hash chain: entries and their canonical form and hash, the signed heads and
 * anchors, the tables, and the row conversion.
 */
import { createHash } from 'node:crypto';
import type { Db } from '../engine/sqlcipher.js';

export const SIGN_EVERY = 64;
export const SIGN_MAX_AGE_MS = 10_000;
const ZERO = Buffer.alloc(32);
const HEAD_CONTEXT = Buffer.from('commusic-audit-head-v1\0', 'utf8');

export interface AuditInput {
  user: string | null;
  ip: string | null;
  session: string | null;
  /** e.g. login, login.failed, logout, create, update, delete, rights.set, export, backup. */
  action: string;
  entity: string | null;
  recordId: number | null;
  /** For create/update/delete: {field: {old, new}}; otherwise any JSON detail. */
  changes: unknown;
}

export interface AuditEntry extends AuditInput {
  seq: number;
  time: string;
  prevHash: string | null;
  hash: string;
}

export interface AuditSigner {
  /** Sign bytes with the server identity key. */
  sign(bytes: Uint8Array): Uint8Array;
  /** Fingerprint of the signing key (stored next to each signature). */
  fingerprint: string;
}

export interface AuditVerifier {
  verify(bytes: Uint8Array, signature: Uint8Array, fingerprint: string): boolean;
}

/** Bytes of each entry's chain hash kept in an anchor (enough to name the first altered entry). */
export const ANCHOR_DIGEST_LEN = 8;
/** An anchor covers at most this many entries (a longer stretch is anchored in the next one). */
export const MAX_ANCHOR_SPAN = 100_000;

/** One signed head recorded outside the club store. */
export interface HeadAnchor {
  clubId: string;
  /** The head: entry `seq` had chain hash `hash` (hex). */
  seq: number;
  hash: string;
  /** First entry whose digest is in `digests` (previous anchor's seq + 1). */
  fromSeq: number;
  /** ANCHOR_DIGEST_LEN bytes of the chain hash of each entry fromSeq..seq, in order. */
  digests: Buffer;
  /** Signature over headMessage(clubId, seq, hash) by the identity key; its fingerprint. */
  signature: Buffer;
  fingerprint: string;
  /** ISO time the anchor was written. */
  time: string;
}

/**
 * Where anchors live: append-only, outside the store they protect (ServerDb implements it; the
 * cluster's etcd can later). `lastAnchor` returns the highest seq anchored for the club.
 */
export interface AnchorStore {
  insertAnchor(a: HeadAnchor): void;
  lastAnchor(clubId: string): { seq: number; hash: string } | undefined;
  listAnchors(clubId: string): HeadAnchor[];
}

/** Tables the chain needs besides audit_log (created on first use; idempotent). */
export function ensureAuditTables(db: Db): void {
  db.exec(`CREATE TABLE IF NOT EXISTS audit_heads (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL CHECK (length(hash) = 64),
    signature BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    time TEXT NOT NULL
  ) STRICT`);
}

export function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v as Record<string, unknown>).sort()) o[k] = sortKeys((v as Record<string, unknown>)[k]);
    return o;
  }
  return v === undefined ? null : v;
}

export function canonicalEntry(e: Omit<AuditEntry, 'prevHash' | 'hash'>): Buffer {
  return Buffer.from(JSON.stringify([e.seq, e.time, e.user, e.ip, e.session, e.action, e.entity, e.recordId, sortKeys(e.changes ?? null)]), 'utf8');
}

export function entryHash(prevHash: string | null, e: Omit<AuditEntry, 'prevHash' | 'hash'>): string {
  return createHash('sha256').update(prevHash ? Buffer.from(prevHash, 'hex') : ZERO).update(canonicalEntry(e)).digest('hex');
}

export function headMessage(clubId: string, seq: number, hash: string): Buffer {
  const s = Buffer.alloc(8);
  s.writeBigUInt64BE(BigInt(seq));
  return Buffer.concat([HEAD_CONTEXT, Buffer.from(clubId, 'utf8'), Buffer.from([0]), s, Buffer.from(hash, 'hex')]);
}

export interface RawRow {
  seq: number;
  time: string;
  user: string | null;
  ip: string | null;
  session: string | null;
  action: string;
  entity: string | null;
  recordId: number | null;
  changes: string | null;
  prevHash: string | null;
  hash: string;
}

export function toEntry(r: RawRow): AuditEntry {
  let changes: unknown = null;
  if (r.changes !== null) {
    try {
      changes = JSON.parse(r.changes);
    } catch {
      changes = r.changes;
    }
  }
  return { seq: r.seq, time: r.time, user: r.user, ip: r.ip, session: r.session, action: r.action, entity: r.entity, recordId: r.recordId, changes, prevHash: r.prevHash, hash: r.hash };
}

export const COLS = 'seq, time, "user", ip, session, action, entity, recordId, changes, prevHash, hash';
