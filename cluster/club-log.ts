/**
 * A club's replicated change log in etcd, with fenced appends (issue 14, "No acknowledged write
 * lost").
 *
 * Ownership: the primary creates `clubs/<club>/owner` bound to its member lease, only if the key
 * does not exist. The key's create revision is the fencing token: it changes whenever ownership
 * changes hands, and the key vanishes with the owner's lease.
 *
 * Append: one etcd transaction
 *     IF owner.createRevision == token AND head.modRevision == the head we last saw
 *     THEN put log/<seq+1> = sealed entry, put head = {seq+1, digest}
 *     ELSE get owner, get head
 * A refused compare with another owner means this server was fenced: the log closes and every
 * waiting and later append fails with FENCED, so the server stops serving the club at once.
 * A call that ends without a clear outcome (deadline, lost answer) is never blindly resent (the
 * etcd3 client's own retries are off, see etcd-gateway.ts): the head is read back, and the entry
 * counts as committed exactly when the head names it (same sequence number and digest). Because
 * every append compares the head's mod revision, at most one of two attempts for a position can
 * commit, so nothing is applied twice.
 *
 * Group commit: one append in flight per club; payloads queued meanwhile ride together in the next
 * entry, bounded by MAX_ENTRY_BYTES (etcd's default request limit is 1.5 MiB).
 *
 * Entries are sealed (crypto/cluster-seal.ts) under the club's log key with the club id and the
 * sequence number as associated data, and carry the digest of the previous entry, so a follower
 * checks both the position and the chain.
 */
import { createHash } from 'node:crypto';
import { decode, encode } from 'cborg';
import { openRecord, sealRecord } from '../crypto/cluster-seal.js';
import { ClusterError } from './errors.js';
import { EtcdOutcomeUnclear, type EtcdGateway } from './etcd-gateway.js';
import { checkClubId, headKey, logKey, logPrefix, ownerKey, seqOfLogKey } from './keys.js';
import type { MemberLease } from './member-lease.js';

/** Largest sealed entry (bytes); a single payload above it is refused with ENTRY_TOO_LARGE. */
export const MAX_ENTRY_BYTES = 1024 * 1024;
/** Most payloads one entry carries. */
export const MAX_ITEMS_PER_ENTRY = 1024;
const ENTRY_VERSION = 1;
const SEAL_AND_FRAME_OVERHEAD = 512;

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

const sha256hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const aadFor = (clubId: string, seq: number) => Buffer.from(`commusic-log|${clubId}|${seq}`, 'utf8');

function parseHead(value: Buffer | undefined, modRevision: string | undefined): LogHead {
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

interface Kv {
  key: Buffer;
  value: Buffer;
  create_revision: string;
  mod_revision: string;
  lease: string;
}

function parseOwner(kv: Kv | undefined): OwnerInfo | undefined {
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

interface Pending {
  payload: Uint8Array;
  resolve: (seq: number) => void;
  reject: (e: unknown) => void;
}

export interface ClubLogOptions {
  gw: EtcdGateway;
  lease: MemberLease;
  nodeId: string;
  clubId: string;
  /** The club's log key (crypto/cluster-seal.ts deriveLogKey). */
  logKey: Uint8Array;
  /** Schema version of the club store, written into each entry. */
  schema: number;
  /** How long one append may keep settling an unclear outcome before the log gives up (ms). */
  appendBudgetMs?: number;
}

export type ClubLogState = 'open' | 'fenced' | 'closed';

/** The primary's handle on one club's log: holds ownership and appends. See the file comment. */
export class ClubLog {
  readonly clubId: string;
  readonly nodeId: string;
  /** The fencing token (create revision of the owner key). */
  readonly token: string;
  private headValue: LogHead;
  private stateValue: ClubLogState = 'open';
  private closeError: ClusterError | undefined;
  private queue: Pending[] = [];
  private busy = false;
  private readonly opts: ClubLogOptions;
  private readonly budgetMs: number;
  /** Appends that needed a read to settle an unclear outcome (for metrics and tests). */
  settled = 0;

  private constructor(opts: ClubLogOptions, token: string, head: LogHead) {
    this.opts = opts;
    this.clubId = opts.clubId;
    this.nodeId = opts.nodeId;
    this.token = token;
    this.headValue = head;
    this.budgetMs = opts.appendBudgetMs ?? opts.gw.readBudgetMs;
  }

  /**
   * Take ownership of a club: create its owner key under this server's lease if nobody holds it.
   * @throws ClusterError NOT_OWNER (with `owner`) when another server holds it; LEASE_EXPIRED;
   *   ETCD_UNAVAILABLE.
   */
  static async acquire(opts: ClubLogOptions): Promise<ClubLog> {
    const { gw, lease, nodeId, clubId } = opts;
    checkClubId(clubId);
    const deadline = Date.now() + gw.readBudgetMs;
    for (;;) {
      lease.assertValid();
      const ok = ownerKey(clubId);
      try {
        const res = await gw.once('acquire club', () =>
          gw.kv
            .if(ok, 'Create', '==', 0)
            .then(gw.kv.put(ok).value(nodeId).lease(lease.id), gw.kv.get(headKey(clubId)))
            .else(gw.kv.get(ok))
            .commit(),
        );
        if (res.succeeded) {
          const kv = (res.responses[1]?.response_range?.kvs?.[0] ?? undefined) as Kv | undefined;
          return new ClubLog(opts, res.header.revision, parseHead(kv?.value, kv?.mod_revision));
        }
        const owner = parseOwner(res.responses[0]?.response_range?.kvs?.[0] as Kv | undefined);
        if (owner && owner.node === nodeId && owner.lease === lease.id) {
          return new ClubLog(opts, owner.token, await readHead(gw, clubId));
        }
        throw new ClusterError('NOT_OWNER', `club ${clubId} is owned by ${owner?.node ?? 'another server'}`, owner ? { owner: owner.node } : {});
      } catch (e) {
        if (!(e instanceof EtcdOutcomeUnclear)) throw e;
        // Settle by reading: the put may have committed.
        const owner = await readOwner(gw, clubId);
        if (owner && owner.node === nodeId && owner.lease === lease.id) return new ClubLog(opts, owner.token, await readHead(gw, clubId));
        if (owner) throw new ClusterError('NOT_OWNER', `club ${clubId} is owned by ${owner.node}`, { owner: owner.node });
        if (Date.now() > deadline) throw new ClusterError('ETCD_UNAVAILABLE', `etcd did not settle the ownership of club ${clubId}`, { cause: e });
      }
    }
  }

  get head(): LogHead {
    return { ...this.headValue };
  }

  get state(): ClubLogState {
    return this.stateValue;
  }

  /** Why the log closed (FENCED, LEASE_EXPIRED, ETCD_UNAVAILABLE, CLOSED), if it did. */
  get error(): ClusterError | undefined {
    return this.closeError;
  }

  /**
   * Append one payload; resolves with the sequence number of the entry that carries it, once that
   * entry is committed in etcd (the output gate waits for this before answering the client).
   * @throws ClusterError FENCED | LEASE_EXPIRED | ETCD_UNAVAILABLE (the log is closed after any of
   *   these: stop serving the club), ENTRY_TOO_LARGE (the log stays open).
   */
  append(payload: Uint8Array): Promise<number> {
    if (this.closeError) return Promise.reject(this.closeError);
    if (payload.length + SEAL_AND_FRAME_OVERHEAD > MAX_ENTRY_BYTES) {
      return Promise.reject(new ClusterError('ENTRY_TOO_LARGE', `a change of ${payload.length} bytes exceeds the ${MAX_ENTRY_BYTES}-byte log entry bound`));
    }
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ payload, resolve, reject });
      void this.pump();
    });
  }

  /** Close the log locally (ownership stays in etcd until released or the lease ends). */
  close(error?: ClusterError): void {
    if (this.closeError) return;
    this.closeError = error ?? new ClusterError('CLOSED', `log of club ${this.clubId} closed`);
    this.stateValue = error?.code === 'FENCED' ? 'fenced' : 'closed';
    const q = this.queue;
    this.queue = [];
    for (const p of q) p.reject(this.closeError);
  }

  /**
   * Hand ownership back (planned handover, drain): waits for queued appends, then deletes the owner
   * key if it still carries this log's token.
   */
  async release(): Promise<void> {
    while (this.busy || this.queue.length > 0) await new Promise((r) => setImmediate(r));
    this.close();
    const ok = ownerKey(this.clubId);
    await this.opts.gw.read('release club', () => this.opts.gw.kv.if(ok, 'Create', '==', this.token).then(this.opts.gw.kv.delete().key(ok)).commit());
  }

  /** Delete entries 1..`seq` once every standby has applied them (only while owner). */
  async trimThrough(seq: number): Promise<void> {
    if (seq < 1) return;
    const gw = this.opts.gw;
    const ok = ownerKey(this.clubId);
    await gw.read('trim log', () =>
      gw.kv
        .if(ok, 'Create', '==', this.token)
        .then(gw.kv.delete().inRange({ start: logKey(this.clubId, 1), end: logKey(this.clubId, seq + 1) }))
        .commit(),
    );
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      while (this.queue.length > 0 && !this.closeError) {
        const batch: Pending[] = [];
        let bytes = SEAL_AND_FRAME_OVERHEAD;
        while (this.queue.length > 0 && batch.length < MAX_ITEMS_PER_ENTRY) {
          const next = this.queue[0]!;
          if (batch.length > 0 && bytes + next.payload.length + 16 > MAX_ENTRY_BYTES) break;
          bytes += next.payload.length + 16;
          batch.push(this.queue.shift()!);
        }
        try {
          const seq = await this.commit(batch.map((p) => p.payload));
          for (const p of batch) p.resolve(seq);
        } catch (e) {
          const err = e instanceof ClusterError ? e : new ClusterError('ETCD_UNAVAILABLE', `append to club ${this.clubId} failed`, { cause: e });
          for (const p of batch) p.reject(err);
          this.close(err);
        }
      }
    } finally {
      this.busy = false;
    }
  }

  private async commit(items: Uint8Array[]): Promise<number> {
    const { gw, lease, clubId, logKey: key, schema } = this.opts;
    const before = this.headValue;
    const seq = before.seq + 1;
    const plain = encode({ v: ENTRY_VERSION, seq, schema, prev: before.digest, items });
    const sealed = sealRecord(key, plain, aadFor(clubId, seq));
    const digest = sha256hex(sealed);
    const headJson = JSON.stringify({ seq, digest });
    const ok = ownerKey(clubId);
    const hk = headKey(clubId);
    const deadline = Date.now() + this.budgetMs;
    for (;;) {
      lease.assertValid();
      let owner: OwnerInfo | undefined;
      let head: LogHead;
      try {
        const res = await gw.once('append', () =>
          gw.kv
            .if(ok, 'Create', '==', this.token)
            .and(hk, 'Mod', '==', before.modRevision)
            .then(gw.kv.put(logKey(clubId, seq)).value(sealed), gw.kv.put(hk).value(headJson))
            .else(gw.kv.get(ok), gw.kv.get(hk))
            .commit(),
        );
        if (res.succeeded) {
          this.headValue = { seq, digest, modRevision: res.header.revision };
          return seq;
        }
        owner = parseOwner(res.responses[0]?.response_range?.kvs?.[0] as Kv | undefined);
        const hkv = res.responses[1]?.response_range?.kvs?.[0] as Kv | undefined;
        head = parseHead(hkv?.value, hkv?.mod_revision);
      } catch (e) {
        if (!(e instanceof EtcdOutcomeUnclear)) throw e;
        this.settled++;
        if (Date.now() > deadline) throw new ClusterError('ETCD_UNAVAILABLE', `append to club ${clubId} not settled within ${this.budgetMs} ms`, { cause: e });
        head = await readHead(gw, clubId);
        owner = await readOwner(gw, clubId);
      }
      if (head.seq === seq && head.digest === digest) {
        // Our entry is the head: the earlier attempt committed.
        this.headValue = head;
        return seq;
      }
      if (!owner || owner.token !== this.token) {
        throw new ClusterError('FENCED', `club ${clubId}: this server was fenced (owner is now ${owner?.node ?? 'nobody'})`, owner ? { owner: owner.node } : {});
      }
      if (head.seq !== before.seq || head.digest !== before.digest || head.modRevision !== before.modRevision) {
        throw new ClusterError('FENCED', `club ${clubId}: the log head moved under this server's token`);
      }
      if (Date.now() > deadline) throw new ClusterError('ETCD_UNAVAILABLE', `append to club ${clubId} not committed within ${this.budgetMs} ms`);
      // Not committed and still ours: send the same entry again (its compare keeps it single).
    }
  }
}
