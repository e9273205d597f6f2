/**
 * Trimming a club's log (issue 14; docs/CLUSTER.md "Log trimming and snapshots").
 *
 * Standbys publish the position they have applied as `clubs/<club>/pos/<node>` = {"seq": N},
 * bound to their member lease (at most once per `publishEveryMs`, so the published position may
 * trail the real one, never lead it). The club's primary, while it holds the owner key, deletes
 * entries from the start of the log up to a trim point that keeps
 *   - every entry after the lowest published position of the club's current standbys, and
 *   - `keepEntries` more below that (and below the head): the margin;
 * with at most `maxDeletes` entries per round, in one transaction fenced by its owner token (a
 * deposed primary deletes nothing). A standby that has published no position, or whose position
 * is already below the start of the log, does not hold trimming back: it needs a snapshot anyway
 * (`ensureReachable`, snapshot.ts).
 */
import type { ClubLog } from './club-log.js';
import type { ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { logKey, logPrefix, ownerKey, posKey, posPrefix, seqOfLogKey } from './keys.js';
import type { Kv } from './log-format.js';
import type { MemberLease } from './member-lease.js';

export interface TrimInput {
  /** Sequence number of the head (last entry). */
  head: number;
  /** First entry still in etcd (undefined: none). */
  first: number | undefined;
  /** Positions published by the club's current standbys (node id -> seq; absent: none yet). */
  standbys: ReadonlyArray<number | undefined>;
  /** Entries kept below the lowest standby position and below the head. */
  keepEntries: number;
  /** Most entries deleted in one round. */
  maxDeletes: number;
}

/**
 * Which entries to delete this round: `{from, through}` inclusive, or undefined for none. Pure.
 * The trim point is min(head, lowest standby position still inside the log) - keepEntries.
 */
export function trimRange(t: TrimInput): { from: number; through: number } | undefined {
  if (t.first === undefined || t.head < 1) return undefined;
  let point = t.head;
  for (const p of t.standbys) {
    // No position yet, or below the start of the log already: that standby takes a snapshot.
    if (p === undefined || p < t.first - 1) continue;
    point = Math.min(point, p);
  }
  point -= Math.max(1, t.keepEntries);
  if (point < t.first) return undefined;
  return { from: t.first, through: Math.min(point, t.first + Math.max(1, t.maxDeletes) - 1) };
}

/** The first entry still in a club's log, or undefined when it has none. */
export async function firstLogSeq(gw: EtcdGateway, club: string): Promise<number | undefined> {
  const p = logPrefix(club);
  const r = await gw.read('read first log entry', () => gw.kv.getAll().prefix(p).sort('Key', 'Ascend').limit(1).keys());
  return r.length ? seqOfLogKey(club, r[0]!) : undefined;
}

/** Published positions of a club's standbys (node id -> seq), malformed values left out. */
export async function readPositions(gw: EtcdGateway, club: string): Promise<Map<string, number>> {
  const p = posPrefix(club);
  const r = await gw.read('read standby positions', () => gw.kv.getAll().prefix(p).exec());
  const out = new Map<string, number>();
  for (const kv of r.kvs as Kv[]) {
    const node = kv.key.toString('utf8').slice(p.length);
    try {
      const v = JSON.parse(kv.value.toString('utf8')) as { seq?: unknown };
      if (Number.isSafeInteger(v.seq) && (v.seq as number) >= 0) out.set(node, v.seq as number);
    } catch {
      // not a position: ignored (it holds nothing back)
    }
  }
  return out;
}

export interface TrimRoundOptions {
  gw: EtcdGateway;
  club: string;
  log: ClubLog;
  /** The club's current standbys (from the placement). */
  standbys: readonly string[];
  keepEntries: number;
  maxDeletes: number;
  logger: ClusterLogger;
}

/**
 * One trim round of a served club. Returns how many entries were deleted (0 when none, or when
 * this server no longer holds the owner key: the compare fails and nothing is deleted).
 */
export async function trimRound(o: TrimRoundOptions): Promise<number> {
  const { gw, club, log } = o;
  if (log.state !== 'open') return 0;
  const [first, positions] = await Promise.all([firstLogSeq(gw, club), readPositions(gw, club)]);
  const head = log.head.seq;
  const range = trimRange({ head, first, standbys: o.standbys.map((s) => positions.get(s)), keepEntries: o.keepEntries, maxDeletes: o.maxDeletes });
  if (!range) return 0;
  const ok = ownerKey(club);
  const res = await gw.read('trim log', () =>
    gw.kv
      .if(ok, 'Create', '==', log.token)
      .then(gw.kv.delete().inRange({ start: logKey(club, range.from), end: logKey(club, range.through + 1) }))
      .commit(),
  );
  if (!res.succeeded) return 0;
  const n = range.through - range.from + 1;
  o.logger.info('log trimmed', { event: 'cluster.log.trimmed', clubId: club, from: range.from, through: range.through });
  return n;
}

/**
 * A standby's published position: puts `clubs/<club>/pos/<node>` bound to the member lease, at
 * most once per `everyMs`; the newest position noted is sent when the interval has passed.
 */
export class PositionPublisher {
  private latest: number | undefined;
  private sent: number | undefined;
  private lastSentAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private stopped = false;

  constructor(
    private readonly o: { gw: EtcdGateway; club: string; nodeId: string; lease: () => MemberLease; everyMs: number; logger: ClusterLogger },
  ) {}

  /** Note an applied position (sent now or at the end of the interval). */
  note(seq: number): void {
    if (this.stopped) return;
    this.latest = seq;
    if (this.timer || this.busy) return;
    const wait = Math.max(0, this.lastSentAt + this.o.everyMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.send();
    }, wait);
    this.timer.unref?.();
  }

  private async send(): Promise<void> {
    if (this.stopped || this.latest === undefined || this.latest === this.sent) return;
    this.busy = true;
    const seq = this.latest;
    try {
      const lease = this.o.lease();
      if (!lease.isValid()) return;
      await this.o.gw.read('publish standby position', () => this.o.gw.kv.put(posKey(this.o.club, this.o.nodeId)).value(JSON.stringify({ seq })).lease(lease.id).exec());
      this.sent = seq;
    } catch (e) {
      this.o.logger.warn('standby position not published', { event: 'cluster.pos.failed', clubId: this.o.club, code: (e as { code?: string }).code ?? (e as Error).name });
    } finally {
      this.lastSentAt = Date.now();
      this.busy = false;
    }
    if (this.latest !== this.sent) this.note(this.latest);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
