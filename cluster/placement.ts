/**
 * Placement (issue 14): one leader, elected through etcd, assigns every club a primary and
 * standbys; the plan itself is a pure function so it is tested without etcd.
 *
 * Election: the etcd election recipe with one key. A candidate creates `leader` bound to its member
 * lease only if the key does not exist (compare create revision == 0); the others watch the key
 * and try again when it is deleted (the leader's lease ended or it resigned). The leader's writes
 * compare that `leader` is still bound to its lease, so a deposed leader cannot write a plan.
 */
import { EventEmitter } from 'node:events';
import type { Watcher } from 'etcd3';
import { ClusterError, silentClusterLogger, type ClusterLogger } from './errors.js';
import { cancelWatcher, createWatch, type EtcdGateway } from './etcd-gateway.js';
import { checkClubId, LEADER_KEY, placementKey, PLACEMENT_PREFIX } from './keys.js';
import type { MemberLease } from './member-lease.js';
import type { MemberInfo } from './membership.js';

export interface Placement {
  primary: string;
  standbys: string[];
  /** Increases each time the primary changes. */
  epoch: number;
}

export interface PlanInput {
  members: Array<Pick<MemberInfo, 'id' | 'state'> & { drained?: boolean }>;
  /** Every club with its size in bytes (store plus documents). */
  clubs: Array<{ id: string; bytes: number }>;
  current: Record<string, Placement>;
  /** Standbys per club (default 1; fewer when there are not enough members). */
  standbys?: number;
  /** Planned primary moves per round toward balance (default 1): the bounded rate of drains and joins. */
  maxMoves?: number;
}

/**
 * Compute the next placement. Rules, in order:
 * 1. A club keeps its primary while that member is active and not drained; a drained member's
 *    clubs move away at most `maxMoves` per round (a dead member's clubs all move at once).
 * 2. Otherwise an eligible standby of the club is promoted (it is warm), else the least loaded
 *    active member takes it (a new club, or all its servers gone).
 * 3. Standbys: current ones that are still eligible stay; missing ones come from the least loaded
 *    eligible members. A joining member is added as an extra standby (first in the list) to its
 *    share of clubs, so it catches up while the old standby stays; once it is active it keeps
 *    the place and the extra standby drops off.
 * 4. Balance: up to `maxMoves` clubs move their primary from the most to the least loaded active
 *    member, only onto a member that already is that club's standby (so every move is warm), and
 *    a drained member's clubs move first.
 * Load of a member = its share of clubs plus its share of bytes (count and size weigh equally).
 */
export function planPlacement(input: PlanInput): Record<string, Placement> {
  const wantStandbys = input.standbys ?? 1;
  const maxMoves = input.maxMoves ?? 1;
  const primaryOk = new Set(input.members.filter((m) => m.state === 'active' && !m.drained).map((m) => m.id));
  const standbyOk = new Set(input.members.filter((m) => m.state !== 'draining' && !m.drained).map((m) => m.id));
  const totalBytes = Math.max(1, input.clubs.reduce((s, c) => s + Math.max(0, c.bytes), 0));
  const totalClubs = Math.max(1, input.clubs.length);
  const bytesOf = new Map(input.clubs.map((c) => [c.id, Math.max(0, c.bytes)]));
  const count = new Map<string, number>();
  const bytes = new Map<string, number>();
  const sbCount = new Map<string, number>();
  for (const m of input.members) {
    count.set(m.id, 0);
    bytes.set(m.id, 0);
    sbCount.set(m.id, 0);
  }
  const load = (id: string) => (count.get(id) ?? 0) / totalClubs + (bytes.get(id) ?? 0) / totalBytes;
  const byLoad = (ids: Iterable<string>, f: (id: string) => number) => [...ids].sort((a, b) => f(a) - f(b) || (a < b ? -1 : a > b ? 1 : 0));
  const out: Record<string, Placement> = {};
  const addPrimary = (id: string, club: string, d: number) => {
    count.set(id, (count.get(id) ?? 0) + d);
    bytes.set(id, (bytes.get(id) ?? 0) + d * (bytesOf.get(club) ?? 0));
  };
  const clubs = [...input.clubs].sort((a, b) => b.bytes - a.bytes || (a.id < b.id ? -1 : 1));
  // 1 and 2: primaries (a drained member's clubs leave at most `maxMoves` per round)
  const alive = new Set(input.members.map((m) => m.id));
  const drained = new Set(input.members.filter((m) => m.drained || m.state === 'draining').map((m) => m.id));
  let drainMoves = maxMoves;
  for (const c of clubs) {
    const cur = input.current[c.id];
    let primary: string | undefined;
    let epoch = cur?.epoch ?? 0;
    if (cur && primaryOk.has(cur.primary)) primary = cur.primary;
    else if (cur && alive.has(cur.primary) && drained.has(cur.primary) && drainMoves <= 0) primary = cur.primary;
    else {
      if (cur && alive.has(cur.primary) && drained.has(cur.primary)) drainMoves--;
      const warm = (cur?.standbys ?? []).filter((s) => primaryOk.has(s));
      primary = warm.length > 0 ? byLoad(warm, load)[0] : byLoad(primaryOk, load)[0];
      if (primary !== undefined) epoch++;
    }
    if (primary === undefined) {
      if (cur) out[c.id] = { ...cur, standbys: [...cur.standbys] };
      continue;
    }
    addPrimary(primary, c.id, 1);
    out[c.id] = { primary, standbys: (cur?.standbys ?? []).filter((s) => s !== primary), epoch };
  }
  // 4: balance (drained members are already excluded from primaryOk, so their clubs moved above)
  for (let moves = 0; moves < maxMoves; moves++) {
    const ranked = byLoad(primaryOk, (id) => count.get(id) ?? 0);
    const lo = ranked[0];
    const hi = ranked[ranked.length - 1];
    if (lo === undefined || hi === undefined || (count.get(hi) ?? 0) - (count.get(lo) ?? 0) <= 1) break;
    const club = Object.keys(out)
      .sort()
      .find((id) => out[id]!.primary === hi && out[id]!.standbys.includes(lo));
    if (!club) {
      // make `lo` a standby of one of hi's clubs so a later round can move it warm
      const target = Object.keys(out).sort().find((id) => out[id]!.primary === hi);
      if (target && !out[target]!.standbys.includes(lo)) out[target]!.standbys = [lo, ...out[target]!.standbys];
      break;
    }
    const p = out[club]!;
    addPrimary(hi, club, -1);
    addPrimary(lo, club, 1);
    out[club] = { primary: lo, standbys: [hi, ...p.standbys.filter((s) => s !== lo && s !== hi)], epoch: p.epoch + 1 };
  }
  // 3: standbys
  const joining = new Set(input.members.filter((m) => m.state === 'joining').map((m) => m.id));
  for (const c of clubs) {
    const p = out[c.id];
    if (!p) continue;
    const eligible = p.standbys.filter((s, i, a) => standbyOk.has(s) && s !== p.primary && a.indexOf(s) === i);
    // A joining member rides as an extra standby while it catches up, then takes the place.
    const extra = eligible.some((s) => joining.has(s)) ? 1 : 0;
    const keep = eligible.slice(0, wantStandbys + extra);
    for (const s of keep) sbCount.set(s, (sbCount.get(s) ?? 0) + 1);
    const candidates = byLoad(
      [...standbyOk].filter((s) => s !== p.primary && !keep.includes(s)),
      (id) => (sbCount.get(id) ?? 0) + (count.get(id) ?? 0),
    );
    while (keep.length < wantStandbys && candidates.length > 0) {
      const s = candidates.shift()!;
      keep.push(s);
      sbCount.set(s, (sbCount.get(s) ?? 0) + 1);
    }
    p.standbys = keep;
  }
  // A joining member with fewer than its share of standbys is added (first) to the clubs of the
  // most loaded primaries, so it becomes warm for the clubs it will receive.
  const share = Math.ceil(clubs.length / Math.max(1, primaryOk.size + joining.size));
  for (const j of joining) {
    if (!standbyOk.has(j)) continue;
    let have = sbCount.get(j) ?? 0;
    const targets = Object.keys(out)
      .filter((id) => out[id]!.primary !== j && !out[id]!.standbys.includes(j))
      .sort((x, y) => load(out[y]!.primary) - load(out[x]!.primary) || (x < y ? -1 : 1));
    for (const id of targets) {
      if (have >= share) break;
      out[id]!.standbys = [j, ...out[id]!.standbys];
      have++;
    }
    sbCount.set(j, have);
  }
  return out;
}

function parsePlacement(raw: string): Placement | undefined {
  try {
    const v = JSON.parse(raw) as Placement;
    if (typeof v.primary !== 'string' || !Array.isArray(v.standbys) || !v.standbys.every((s) => typeof s === 'string') || !Number.isSafeInteger(v.epoch)) return undefined;
    return v;
  } catch {
    return undefined;
  }
}

/** The placement of every club as etcd holds it. */
export async function readPlacement(gw: EtcdGateway): Promise<Record<string, Placement>> {
  const res = await gw.read('read placement', () => gw.kv.getAll().prefix(PLACEMENT_PREFIX).strings());
  const out: Record<string, Placement> = {};
  for (const [k, v] of Object.entries(res)) {
    const p = parsePlacement(v);
    if (p) out[k.slice(PLACEMENT_PREFIX.length)] = p;
  }
  return out;
}

/**
 * Competes for placement leadership and, while leading, writes plans fenced by the leader key.
 * Events: 'elected', 'deposed'.
 */
export class PlacementLeader extends EventEmitter {
  private leading = false;
  private watcher: Watcher | undefined;
  private stopped = false;
  private readonly logger: ClusterLogger;

  constructor(
    private readonly gw: EtcdGateway,
    private readonly lease: MemberLease,
    private readonly nodeId: string,
    logger?: ClusterLogger,
  ) {
    super();
    this.logger = logger ?? silentClusterLogger;
    lease.once('expired', () => this.depose());
  }

  /** Whether this server leads now (lease valid by its own clock and elected). */
  isLeader(): boolean {
    return this.leading && this.lease.isValid();
  }

  /** Try to become leader now, then keep watching the key to try again when it is freed. */
  async start(): Promise<void> {
    await this.campaign();
    const w = await createWatch(this.gw, 'watch leader', () => this.gw.kv.watch().key(LEADER_KEY));
    if (this.stopped) {
      await cancelWatcher(w);
      return;
    }
    this.watcher = w;
    w.on('delete', () => {
      if (this.leading) this.depose();
      this.campaignUntilSettled(250);
    });
    w.on('error', () => {
      // etcd cancelled the watch (compaction): watch again and campaign in case the key is free.
      if (this.stopped || this.watcher !== w) return;
      this.watcher = undefined;
      const retry = (): void => {
        if (this.stopped) return;
        this.start().catch(() => setTimeout(retry, 250).unref?.());
      };
      retry();
    });
  }

  /** The current leader's node id, if any. */
  async currentLeader(): Promise<string | undefined> {
    const v = await this.gw.read('read leader', () => this.gw.kv.get(LEADER_KEY).string());
    return v ?? undefined;
  }

  /**
   * Write placements for the given clubs, only while this server still holds the leader key.
   * @throws ClusterError FENCED when it no longer leads.
   */
  async write(plan: Record<string, Placement>): Promise<void> {
    this.lease.assertValid();
    const entries = Object.entries(plan);
    for (let i = 0; i < entries.length; i += 64) {
      const chunk = entries.slice(i, i + 64);
      const res = await this.gw.read('write placement', () =>
        this.gw.kv
          .if(LEADER_KEY, 'Lease', '==', this.lease.id)
          .then(...chunk.map(([club, p]) => this.gw.kv.put(placementKey(checkClubId(club))).value(JSON.stringify(p))))
          .commit(),
      );
      if (!res.succeeded) {
        this.depose();
        throw new ClusterError('FENCED', 'this server no longer leads placement');
      }
    }
  }

  /** Stop watching without resigning (a crash drill: the key goes with the lease). */
  async abandon(): Promise<void> {
    this.stopped = true;
    this.leading = false;
    const w = this.watcher;
    this.watcher = undefined;
    if (w) await cancelWatcher(w);
  }

  /** Give leadership up (clean stop). */
  async stop(): Promise<void> {
    this.stopped = true;
    const w = this.watcher;
    this.watcher = undefined;
    if (w) await cancelWatcher(w);
    if (this.leading) {
      this.leading = false;
      await this.gw.read('resign', () => this.gw.kv.if(LEADER_KEY, 'Lease', '==', this.lease.id).then(this.gw.kv.delete().key(LEADER_KEY)).commit()).catch(() => undefined);
    }
  }

  private depose(): void {
    if (!this.leading) return;
    this.leading = false;
    this.emit('deposed');
  }

  /**
   * Campaign after the leader key vanished, again after each failure (250 ms doubling to 2 s)
   * until a campaign got an answer: won, or another member leads. A single failed attempt (etcd
   * electing its own leader at that moment) left the cluster without a placement leader when
   * every member's attempt failed, and a dead member's clubs were never given to their standbys.
   */
  private campaignUntilSettled(delay: number): void {
    if (this.stopped) return;
    this.campaign().catch((e) => {
      this.logger.warn('placement campaign failed; retrying', { event: 'cluster.leader.campaign', code: (e as ClusterError).code });
      setTimeout(() => this.campaignUntilSettled(Math.min(delay * 2, 2000)), delay).unref?.();
    });
  }

  private async campaign(): Promise<void> {
    if (this.stopped || !this.lease.isValid()) return;
    const res = await this.gw.read('campaign', () =>
      this.gw.kv
        .if(LEADER_KEY, 'Create', '==', 0)
        .then(this.gw.kv.put(LEADER_KEY).value(this.nodeId).lease(this.lease.id))
        .else(this.gw.kv.get(LEADER_KEY))
        .commit(),
    );
    const mine = res.succeeded || res.responses[0]?.response_range?.kvs?.[0]?.lease === this.lease.id;
    if (mine && !this.leading) {
      this.leading = true;
      this.emit('elected');
    }
  }
}
