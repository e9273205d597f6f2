/** The club log's layout in etcd: head and owner records, sealed entries, and reading them back (club-log.ts appends). */
import { createHash } from 'node:crypto';
import { decode } from 'cborg';
import { openRecord } from '../crypto/cluster-seal.js';
import { ClusterError } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { checkClubId, headKey, logKey, logPrefix, ownerKey, seqOfLogKey } from './keys.js';

/** Largest sealed entry (bytes); a single payload above it is refused with ENTRY_TOO_LARGE. */
export const MAX_ENTRY_BYTES = 1024 * 1024;
/** Most payloads one entry carries. */
export const MAX_ITEMS_PER_ENTRY = 1024;
export const ENTRY_VERSION = 1;
export const SEAL_AND_FRAME_OVERHEAD = 512;

export interface LogHead {
  /** Sequence number of the last entry (0: empty log). */
  seq: number;
  /** Hex SHA-256 of the last sealed entry ('' for an empty log). */
  digest: string;
  /** etcd mod revision of the head key ('0' when it does not exist). */
  modRevision: string;
}

export interface LogEntry {
  seq: number;
  /** Club store schema version the payloads were captured under (migrations are not changesets). */
  schema: number;
  /** Digest of the previous entry ('' for the first entry). */
  prev: string;
  /** Digest of this entry's sealed bytes. */
  digest: string;
  /** The payloads, in the order they were appended. */
  items: Uint8Array[];
}

export interface OwnerInfo {
  node: string;
  /** Create revision of the owner key: the fencing token. */
  token: string;
  lease: string;
}

export const sha256hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
export const aadFor = (clubId: string, seq: number) => Buffer.from(`commusic-log|${clubId}|${seq}`, 'utf8');

export function parseHead(value: Buffer | undefined, modRevision: string | undefined): LogHead {
  if (!value) return { seq: 0, digest: '', modRevision: '0' };
  let v: unknown;
  try {
    v = JSON.parse(value.toString('utf8'));
  } catch (e) {
    throw new ClusterError('LOG_CORRUPT', 'log head is not JSON', { cause: e });
  }
  const h = v as { seq?: unknown; digest?: unknown };
  if (!Number.isSafeInteger(h.seq) || (h.seq as number) < 1 || typeof h.digest !== 'string' || !/^[0-9a-f]{64}$/.test(h.digest)) {
    throw new ClusterError('LOG_CORRUPT', 'log head has an invalid shape');
  }
  return { seq: h.seq as number, digest: h.digest, modRevision: modRevision ?? '0' };
}

export interface Kv {
  key: Buffer;
  value: Buffer;
  create_revision: string;
  mod_revision: string;
  lease: string;
}

export function parseOwner(kv: Kv | undefined): OwnerInfo | undefined {
  if (!kv) return undefined;
  return { node: kv.value.toString('utf8'), token: kv.create_revision, lease: kv.lease };
}

/** Read a club's log head (linearizable, retried within the gateway's read budget). */
export async function readHead(gw: EtcdGateway, clubId: string): Promise<LogHead> {
  const r = await gw.read('read log head', () => gw.kv.get(headKey(clubId)).exec());
  const kv = r.kvs[0] as Kv | undefined;
  return parseHead(kv?.value, kv?.mod_revision);
}

/** Who owns a club right now (linearizable read), or undefined. */
export async function readOwner(gw: EtcdGateway, clubId: string): Promise<OwnerInfo | undefined> {
  const r = await gw.read('read owner', () => gw.kv.get(ownerKey(clubId)).exec());
  return parseOwner(r.kvs[0] as Kv | undefined);
}

/**
 * Open one sealed entry found at `seq`.
 * @throws ClusterError LOG_CORRUPT when it fails authentication, is at the wrong place or malformed.
 */
export function openEntry(key: Uint8Array, clubId: string, seq: number, sealed: Uint8Array): LogEntry {
  let plain: Buffer;
  try {
    plain = openRecord(key, sealed, aadFor(clubId, seq));
  } catch (e) {
    throw new ClusterError('LOG_CORRUPT', `log entry ${seq} of club ${clubId} failed authentication`, { cause: e });
  }
  let v: unknown;
  try {
    v = decode(plain);
  } catch (e) {
    throw new ClusterError('LOG_CORRUPT', `log entry ${seq} of club ${clubId} is not CBOR`, { cause: e });
  }
  const e = v as { v?: unknown; seq?: unknown; schema?: unknown; prev?: unknown; items?: unknown };
  if (
    e.v !== ENTRY_VERSION ||
    e.seq !== seq ||
    !Number.isSafeInteger(e.schema) ||
    typeof e.prev !== 'string' ||
    !Array.isArray(e.items) ||
    e.items.length > MAX_ITEMS_PER_ENTRY ||
    !e.items.every((i) => i instanceof Uint8Array)
  ) {
    throw new ClusterError('LOG_CORRUPT', `log entry ${seq} of club ${clubId} has an invalid shape`);
  }
  return { seq, schema: e.schema as number, prev: e.prev, digest: sha256hex(sealed), items: e.items as Uint8Array[] };
}

/**
 * Read entries `fromSeq` .. head (at most `limit`), opened and chain-checked: each entry's `prev`
 * must be the digest of the one before it (checked from the second entry read on; pass
 * `prevDigest` to check the first as well).
 * @throws ClusterError LOG_CORRUPT on a gap, a broken chain or a bad entry.
 */
export async function readEntries(
  gw: EtcdGateway,
  clubId: string,
  key: Uint8Array,
  fromSeq: number,
  opts: { limit?: number; prevDigest?: string } = {},
): Promise<LogEntry[]> {
  checkClubId(clubId);
  const limit = opts.limit ?? 1000;
  const r = await gw.read('read log entries', () =>
    gw.kv.getAll().inRange({ start: logKey(clubId, fromSeq), end: `${logPrefix(clubId)}\u00ff` }).sort('Key', 'Ascend').limit(limit).exec(),
  );
  const out: LogEntry[] = [];
  let expect = fromSeq;
  let prev = opts.prevDigest;
  for (const kv of r.kvs as Kv[]) {
    const seq = seqOfLogKey(clubId, kv.key.toString('utf8'));
    if (seq !== expect) throw new ClusterError('LOG_CORRUPT', `log of club ${clubId} has a gap at ${expect}`);
    const entry = openEntry(key, clubId, seq, kv.value);
    if (prev !== undefined && entry.prev !== prev) throw new ClusterError('LOG_CORRUPT', `log of club ${clubId} breaks its chain at ${seq}`);
    out.push(entry);
    prev = entry.digest;
    expect++;
  }
  return out;
}
