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
import { encode } from 'cborg';
import { sealRecord } from '../crypto/cluster-seal.js';
import { ClusterError } from './errors.js';
import { EtcdOutcomeUnclear, type EtcdGateway } from './etcd-gateway.js';
import { checkClubId, headKey, logKey, ownerKey } from './keys.js';
import { aadFor, ENTRY_VERSION, MAX_ENTRY_BYTES, MAX_ITEMS_PER_ENTRY, parseHead, parseOwner, readHead, readOwner, SEAL_AND_FRAME_OVERHEAD, sha256hex, type Kv, type LogHead, type OwnerInfo } from './log-format.js';
import type { MemberLease } from './member-lease.js';

export { MAX_ENTRY_BYTES, MAX_ITEMS_PER_ENTRY, openEntry, readEntries, readHead, readOwner, type LogEntry, type LogHead, type OwnerInfo } from './log-format.js';

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
    while (this.busy || this.queue.length > 0) await new Promise((r) => setTimeout(r, 5));
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
