/**
 * The club's change log: an append-only, hash-chained table (`audit_log`, declared in
 * storage/club/model.ts) inside the club's encrypted store.
 *
 * Chain: entry n's hash = SHA-256(hash of entry n-1 (32 bytes; 32 zero bytes for the first)
 * || canonical(entry n)), where canonical() is the UTF-8 JSON of
 * [seq, time, user, ip, session, action, entity, recordId, changes] with object keys of
 * `changes` sorted. Sequence numbers start at 1 and have no gaps.
 *
 * Signed heads: at intervals (every SIGN_EVERY entries, or when the last signature is older than
 * SIGN_MAX_AGE_MS, and whenever `signHead` is called, e.g. at logout) the head (seq, hash) is
 * signed with the server identity key through a `sign(bytes)` callback, so storage imports
 * nothing from the daemon. The signature covers "commusic-audit-head-v1\0" || club id || seq ||
 * hash, and is stored in `audit_heads`. Someone who can write the store but lacks the identity
 * key can rewrite the whole chain consistently, but not the signed heads: `verifyAuditLog`
 * recomputes the chain, checks seq continuity and every signed head, and names the first bad
 * entry. Entries after the last signed head are reported as not yet covered by a signature.
 *
 * Anchors outside the store: heads inside the store prove nothing against someone who can open
 * the store (operators, through the master key): they can delete the tail of the log together with
 * its heads, or rewrite an entry, re-chain and re-sign. So every signed head, once its transaction
 * has committed, is also recorded in an `AnchorStore` kept outside the club store (server.db today:
 * ServerDb.insertAnchor; any append-only place, e.g. the cluster's etcd, can implement the same
 * three methods). An anchor holds the head (seq, hash, signature) and the first 8 bytes of the
 * chain hash of every entry since the previous anchor, so `verifyAuditLog` given the anchors
 * names the exact first entry that is missing or differs from what was anchored, even when the
 * store was rewritten consistently and re-signed. Entries after the last anchor (at most
 * SIGN_EVERY - 1, or SIGN_MAX_AGE_MS old) are reported as `unanchoredTail`.
 *
 * Appending is synchronous and meant to run inside the caller's transaction, so a change and its
 * entry commit together (the stores run synchronous=FULL: durable on return). The anchor is
 * written after the commit (a microtask later), so a rolled-back entry is never anchored.
 */
import { cachedStatement } from '../engine/statements.js';
import type { Db } from '../engine/sqlcipher.js';
import { StorageError } from '../engine/errors.js';
import { ANCHOR_DIGEST_LEN, AnchorStore, AuditEntry, AuditInput, AuditSigner, AuditVerifier, COLS, HeadAnchor, MAX_ANCHOR_SPAN, RawRow, SIGN_EVERY, SIGN_MAX_AGE_MS, ensureAuditTables, entryHash, headMessage, sortKeys, toEntry } from './audit-chain.js';

export { SIGN_EVERY, SIGN_MAX_AGE_MS, ANCHOR_DIGEST_LEN, MAX_ANCHOR_SPAN, ensureAuditTables, canonicalEntry, entryHash, headMessage, type AuditInput, type AuditEntry, type AuditSigner, type AuditVerifier, type HeadAnchor, type AnchorStore } from './audit-chain.js';

/** Appender for one open store; cheap to create, holds prepared statements. */
export class AuditLog {
  readonly #db: Db;
  readonly #clubId: string;
  readonly #signer: AuditSigner | undefined;
  readonly #head;
  readonly #insert;
  readonly #lastSigned;
  readonly #insertHead;
  #now: () => Date;
  readonly #anchors: AnchorStore | undefined;
  readonly #onAnchorError: (e: unknown) => void;
  #anchorQueued = false;

  /**
   * `signer` signs heads; `anchors` records each signed head outside the store (after commit);
   * `onAnchorError` hears an anchor write that failed (the next head is anchored again).
   */
  constructor(db: Db, clubId: string, o: { signer?: AuditSigner; now?: () => Date; anchors?: AnchorStore; onAnchorError?: (e: unknown) => void } = {}) {
    ensureAuditTables(db);
    this.#db = db;
    this.#clubId = clubId;
    this.#signer = o.signer;
    this.#anchors = o.anchors;
    this.#onAnchorError = o.onAnchorError ?? (() => {});
    this.#now = o.now ?? (() => new Date());
    this.#head = db.prepare('SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1');
    this.#insert = db.prepare(`INSERT INTO audit_log (seq, time, "user", ip, session, action, entity, recordId, changes, prevHash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    this.#lastSigned = db.prepare('SELECT seq, time FROM audit_heads ORDER BY seq DESC LIMIT 1');
    this.#insertHead = db.prepare('INSERT OR REPLACE INTO audit_heads (seq, hash, signature, fingerprint, time) VALUES (?, ?, ?, ?, ?)');
  }

  /** Append one entry; call inside the transaction of the change it records. */
  append(input: AuditInput): AuditEntry {
    const head = this.#head.get() as { seq: number; hash: string } | undefined;
    const seq = (head?.seq ?? 0) + 1;
    const time = this.#now().toISOString();
    const base = { seq, time, user: input.user, ip: input.ip, session: input.session, action: input.action, entity: input.entity, recordId: input.recordId, changes: input.changes ?? null };
    const prevHash = head?.hash ?? null;
    const hash = entryHash(prevHash, base);
    const changesJson = base.changes === null ? null : JSON.stringify(sortKeys(base.changes));
    if (changesJson !== null && changesJson.length > 1_000_000) throw new StorageError('VALIDATION_FAILED', 'change-log entry too large');
    this.#insert.run(seq, time, base.user, base.ip, base.session, base.action, base.entity, base.recordId, changesJson, prevHash, hash);
    const entry: AuditEntry = { ...base, prevHash, hash };
    this.#maybeSign(entry);
    return entry;
  }

  /**
   * Sign the head every SIGN_EVERY entries and when the newest signed head is SIGN_MAX_AGE_MS old.
   * The newest signed head is read from the store each time, not kept in memory: a head signed in
   * a transaction or write-group savepoint that rolled back is gone from the store, and a time
   * kept in memory would still count it (the next entries then went unsigned for up to
   * SIGN_MAX_AGE_MS). One indexed read per entry.
   */
  #maybeSign(e: AuditEntry): void {
    if (!this.#signer) return;
    const last = this.#lastSigned.get() as { seq: number; time: string } | undefined;
    if (!last || e.seq % SIGN_EVERY === 0 || e.seq - last.seq >= SIGN_EVERY || Date.now() - Date.parse(last.time) >= SIGN_MAX_AGE_MS) this.#sign(e.seq, e.hash);
  }

  #sign(seq: number, hash: string): void {
    const sig = this.#signer!.sign(headMessage(this.#clubId, seq, hash));
    this.#insertHead.run(seq, hash, Buffer.from(sig), this.#signer!.fingerprint, new Date().toISOString());
    this.#queueAnchor();
  }

  /** Anchor after the surrounding transaction is over (committed or rolled back). */
  #queueAnchor(): void {
    if (!this.#anchors) return;
    if (!this.#db.inTransaction) {
      this.#anchorSafely();
      return;
    }
    if (this.#anchorQueued) return;
    this.#anchorQueued = true;
    queueMicrotask(() => {
      this.#anchorQueued = false;
      this.#anchorSafely();
    });
  }

  #anchorSafely(): void {
    try {
      this.anchorNow();
    } catch (e) {
      this.#onAnchorError(e);
    }
  }

  /**
   * Record the newest committed signed head in the anchor store, with the digests of every entry
   * since the previous anchor. Does nothing when it is already anchored or nothing is signed.
   */
  anchorNow(): void {
    const anchors = this.#anchors;
    if (!anchors || !this.#db.open || this.#db.inTransaction) return;
    const head = this.#db.prepare('SELECT seq, hash, signature, fingerprint FROM audit_heads ORDER BY seq DESC LIMIT 1').get() as
      | { seq: number; hash: string; signature: Buffer; fingerprint: string }
      | undefined;
    if (!head) return;
    const last = anchors.lastAnchor(this.#clubId);
    if (last && last.seq >= head.seq) return;
    const fromSeq = Math.max((last?.seq ?? 0) + 1, head.seq - MAX_ANCHOR_SPAN + 1);
    const rows = this.#db.prepare('SELECT seq, hash FROM audit_log WHERE seq >= ? AND seq <= ? ORDER BY seq').all(fromSeq, head.seq) as Array<{ seq: number; hash: string }>;
    if (rows.length !== head.seq - fromSeq + 1 || rows[rows.length - 1]!.hash !== head.hash) return;
    const digests = Buffer.concat(rows.map((r) => Buffer.from(r.hash, 'hex').subarray(0, ANCHOR_DIGEST_LEN)));
    anchors.insertAnchor({ clubId: this.#clubId, seq: head.seq, hash: head.hash, fromSeq, digests, signature: head.signature, fingerprint: head.fingerprint, time: new Date().toISOString() });
  }

  /** Sign the current head now (logout, shutdown, before a backup) and anchor it. */
  signHead(): void {
    if (!this.#signer) return;
    const head = this.#head.get() as { seq: number; hash: string } | undefined;
    if (head) this.#sign(head.seq, head.hash);
  }
}

export interface AuditQuery {
  from?: string;
  to?: string;
  user?: string;
  action?: string;
  entity?: string;
  recordId?: number;
  /** Return entries with seq > afterSeq (pagination cursor). */
  afterSeq?: number;
  limit?: number;
  /** Newest first (default oldest first). */
  descending?: boolean;
}

export const MAX_QUERY_LIMIT = 1000;

/** Read entries by time range, user, action, entity; parameterised, paginated by seq. */
export function queryAuditLog(db: Db, q: AuditQuery): { entries: AuditEntry[]; nextAfterSeq: number | null } {
  const where: string[] = [];
  const args: unknown[] = [];
  if (q.from !== undefined) where.push('time >= ?'), args.push(new Date(q.from).toISOString());
  if (q.to !== undefined) where.push('time < ?'), args.push(new Date(q.to).toISOString());
  if (q.user !== undefined) where.push('"user" = ?'), args.push(q.user);
  // `action` names itself or its family ("export" also finds "export.x"): an index range on action.
  if (q.action !== undefined) where.push('(action = ? OR (action >= ? AND action < ?))'), args.push(q.action, q.action + '.', q.action + '/');
  if (q.entity !== undefined) where.push('entity = ?'), args.push(q.entity);
  if (q.recordId !== undefined) where.push('recordId = ?'), args.push(q.recordId);
  if (q.afterSeq !== undefined) where.push(q.descending ? 'seq < ?' : 'seq > ?'), args.push(q.afterSeq);
  const limit = Math.min(Math.max(1, q.limit ?? 100), MAX_QUERY_LIMIT);
  const sql = `SELECT ${COLS} FROM audit_log ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq ${q.descending ? 'DESC' : 'ASC'} LIMIT ?`;
  const rows = cachedStatement(db, sql).all(...args, limit + 1) as RawRow[];
  const more = rows.length > limit;
  const entries = rows.slice(0, limit).map(toEntry);
  return { entries, nextAfterSeq: more ? entries[entries.length - 1]!.seq : null };
}

export interface VerifyResult {
  ok: boolean;
  entries: number;
  signedHeads: number;
  /** Highest seq covered by a valid signed head (0: none). */
  signedUpTo: number;
  /** Entries after the last signed head: chained, but not yet covered by a signature. */
  unsignedTail: number;
  /** Anchors (outside the store) given and checked; the highest seq they cover (0: none). */
  anchors: number;
  anchoredUpTo: number;
  /** Entries after the last anchor (not yet recorded outside the store). */
  unanchoredTail: number;
  /** The first bad entry (or head) when !ok. */
  firstBad?: { seq: number; reason: string };
}

/**
 * Recompute the chain from the first entry, check seq continuity and stored hashes, then every
 * signed head (its hash must equal the chain's hash at that seq and the signature must verify).
 * Names the first entry where anything disagrees.
 */
export function verifyAuditLog(db: Db, clubId: string, verifier: AuditVerifier | undefined, anchors: readonly HeadAnchor[] = []): VerifyResult {
  ensureAuditTables(db);
  const heads = db.prepare('SELECT seq, hash, signature, fingerprint FROM audit_heads ORDER BY seq').all() as Array<{ seq: number; hash: string; signature: Buffer; fingerprint: string }>;
  let prev: string | null = null;
  let expected = 1;
  let n = 0;
  let signedUpTo = 0;
  let firstBad: { seq: number; reason: string } | undefined;
  const chainHash = new Map<number, string>();
  for (const r of db.prepare(`SELECT ${COLS} FROM audit_log ORDER BY seq`).iterate() as IterableIterator<RawRow>) {
    n++;
    if (firstBad) continue;
    if (r.seq !== expected) {
      firstBad = r.seq > expected ? { seq: expected, reason: `entry ${expected} is missing (next present entry is ${r.seq})` } : { seq: r.seq, reason: `entry ${r.seq} is out of order` };
      continue;
    }
    const e = toEntry(r);
    // Recompute from the stored changes text as written (parsed then canonicalised).
    const h = entryHash(prev, e);
    if ((r.prevHash ?? null) !== prev) firstBad = { seq: r.seq, reason: `entry ${r.seq} does not link to entry ${r.seq - 1} (prevHash differs)` };
    else if (h !== r.hash) firstBad = { seq: r.seq, reason: `entry ${r.seq} was altered (its content does not match its hash)` };
    else {
      chainHash.set(r.seq, h);
      prev = h;
      expected++;
    }
  }
  let validHeads = 0;
  for (const hd of heads) {
    const at = chainHash.get(hd.seq);
    if (at === undefined) {
      if (!firstBad && hd.seq >= expected) firstBad = { seq: expected, reason: `signed head ${hd.seq} refers to entries that are missing (the log ends at ${expected - 1})` };
      continue;
    }
    if (at !== hd.hash) {
      firstBad = pickFirst(firstBad, { seq: hd.seq, reason: `entry ${hd.seq} differs from its signed head (the chain up to it was rewritten)` });
      continue;
    }
    if (!verifier || !verifier.verify(headMessage(clubId, hd.seq, hd.hash), hd.signature, hd.fingerprint)) {
      firstBad = pickFirst(firstBad, { seq: hd.seq, reason: verifier ? `the signature of the head at entry ${hd.seq} does not verify` : 'no verifier given' });
      continue;
    }
    validHeads++;
    signedUpTo = Math.max(signedUpTo, hd.seq);
  }
  const last = expected - 1;
  let anchoredUpTo = 0;
  for (const a of [...anchors].sort((x, y) => x.seq - y.seq)) {
    const bad = checkAnchor(a, clubId, verifier, chainHash, last);
    if (bad) {
      firstBad = pickFirst(firstBad, bad);
      break;
    }
    anchoredUpTo = Math.max(anchoredUpTo, a.seq);
  }
  return {
    ok: firstBad === undefined,
    entries: n,
    signedHeads: validHeads,
    signedUpTo,
    unsignedTail: Math.max(0, last - signedUpTo),
    anchors: anchors.length,
    anchoredUpTo,
    unanchoredTail: Math.max(0, last - anchoredUpTo),
    ...(firstBad ? { firstBad } : {}),
  };
}

/**
 * One anchor against the recomputed chain: its signature (public key only), then each entry it
 * covers, in order. Returns the first entry that is missing or differs, or undefined.
 */
function checkAnchor(a: HeadAnchor, clubId: string, verifier: AuditVerifier | undefined, chainHash: ReadonlyMap<number, string>, last: number): { seq: number; reason: string } | undefined {
  const span = a.seq - a.fromSeq + 1;
  if (!verifier || !verifier.verify(headMessage(clubId, a.seq, a.hash), a.signature, a.fingerprint)) {
    return { seq: a.seq, reason: verifier ? `the anchor of entry ${a.seq} (outside the store) does not carry a valid signature (anchor tampered)` : 'no verifier given' };
  }
  if (span < 1 || a.digests.length !== span * ANCHOR_DIGEST_LEN) return { seq: a.fromSeq, reason: `the anchor of entry ${a.seq} is malformed` };
  for (let s = a.fromSeq; s <= a.seq; s++) {
    const at = chainHash.get(s);
    const want = a.digests.subarray((s - a.fromSeq) * ANCHOR_DIGEST_LEN, (s - a.fromSeq + 1) * ANCHOR_DIGEST_LEN);
    if (at === undefined) {
      return { seq: s, reason: `entry ${s} is missing: the anchor outside the store (written ${a.time}) records the log up to entry ${a.seq}, the store's intact log ends at entry ${last} (truncated)` };
    }
    if (!Buffer.from(at, 'hex').subarray(0, ANCHOR_DIGEST_LEN).equals(want)) {
      return { seq: s, reason: `entry ${s} differs from what was anchored outside the store on ${a.time} (rewritten; the chain and heads after it were recomputed)` };
    }
  }
  if (chainHash.get(a.seq) !== a.hash) return { seq: a.seq, reason: `entry ${a.seq} differs from its anchored head` };
  return undefined;
}

function pickFirst(a: { seq: number; reason: string } | undefined, b: { seq: number; reason: string }): { seq: number; reason: string } {
  return !a || b.seq < a.seq ? b : a;
}

