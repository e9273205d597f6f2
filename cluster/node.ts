/**
 * One server's part in the cluster (issue 14): the assembly of the cluster/ pieces around a
 * server's Storage. The daemon asks it two things per club request:
 *
 * - `route(club)`: serve here (this server is the club's primary, holds the owner key and its
 *   lease is valid by its own clock), or redirect to the primary's advertised address, or
 *   unavailable (no primary yet, takeover under way);
 * - `commit(club)`: after the command's transactions, drain the captured changes into a
 *   changeset and append it to the club's log; the client's answer waits for this (output gate).
 *
 * Roles follow the placement written by the placement leader (whichever member holds the leader
 * key plans, see placement.ts). Per club and member:
 * - primary: take the club over (acquire the owner key, apply the tail, check the head), write
 *   the full store as the first entries when the log is empty, then serve;
 * - standby: follow the log into the local encrypted replica (applyEntry);
 * - neither: no follower, nothing served.
 * A primary that stops being primary in the placement (drain, rebalancing) stops serving at once
 * (new requests get a redirect), lets queued appends finish, records its log position and hands
 * the owner key back; 'club-moved' tells the daemon to notify and close the club's sessions.
 *
 * Lease: when the member lease expires by this server's own clock, every club stops being served
 * at once ('lease-lost') and the server joins again with a new lease.
 */
import { EventEmitter } from 'node:events';
import { deriveClusterRecordKey, deriveLogKey } from '../crypto/cluster-seal.js';
import { clubDbPath } from '../storage/club/club-store.js';
import { deleteClub } from '../storage/server/provisioning.js';
import { removeSqliteFiles } from '../storage/engine/rekey.js';
import type { Storage } from '../storage/server/storage.js';
import { BanBoard } from './ban-board.js';
import { ackCapture, applyEntry, drainCapture, encodeChangeset, fullImage, installCapture, pendingCapture, readPosition, writePosition } from './capture.js';
import { ClubLog, MAX_ENTRY_BYTES } from './club-log.js';
import { ClusterError, silentClusterLogger, type ClusterLogger } from './errors.js';
import { EtcdGateway, type EtcdGatewayOptions } from './etcd-gateway.js';
import { checkNodeId, CLUBS_PREFIX, DRAIN_PREFIX, MEMBERS_PREFIX, placementKey, PLACEMENT_PREFIX } from './keys.js';
import { LogFollower, takeOver } from './log-follower.js';
import { MemberLease } from './member-lease.js';
import { checkAddress, Membership, setDrain, type MemberInfo } from './membership.js';
import { planPlacement, PlacementLeader, type Placement } from './placement.js';
import { PrefixMirror } from './prefix-mirror.js';
import { openClubRow, REGISTRY_PREFIX, registryKey, sealClubRow } from './registry.js';

export interface ClusterNodeOptions {
  etcd: EtcdGatewayOptions;
  nodeId: string;
  /** HOST:PORT clients are redirected to. */
  address: string;
  storage: Storage;
  /** The shared master key's raw bytes (seals registry and bans). */
  masterKey: Uint8Array;
  /** Member lease TTL in seconds (default 2). */
  ttlSec?: number;
  /** Standbys per club (default 1). */
  standbys?: number;
  /** Planned primary moves per planning round (drain, rebalancing; default 1). */
  movesPerRound?: number;
  /** Time between planning rounds of the leader in ms (default 1000). */
  planEveryMs?: number;
  logger?: ClusterLogger;
}

export type Route = { kind: 'serve' } | { kind: 'redirect'; node: string; address: string } | { kind: 'unavailable'; reason: string };

interface ClubState {
  role: 'primary' | 'standby' | 'none';
  log: ClubLog | undefined;
  follower: LogFollower | undefined;
  serving: boolean;
  drainedUpto: number;
  /** Serialises role changes of this club. */
  chain: Promise<void>;
  /** Commits in flight (a handover waits for them). */
  inflight: number;
  /** The local store may hold changes the log lacks (an append failed): rebuild before use. */
  needsRebuild: boolean;
}

export interface ClusterStatus {
  self: string;
  leader: string | undefined;
  members: Array<{ id: string; address: string; state: string; drained: boolean }>;
  clubs: Array<{ id: string; primary: string | null; standbys: string[]; lag: number | null; epoch: number }>;
}

/** Events: 'club-moved' (clubId, route), 'lease-lost', 'ban' / 'unban' (from the ban board). */
export class ClusterNode extends EventEmitter {
  readonly nodeId: string;
  readonly address: string;
  readonly gw: EtcdGateway;
  readonly bans: BanBoard;
  private lease!: MemberLease;
  private membership!: Membership;
  private leader!: PlacementLeader;
  private readonly members: PrefixMirror;
  private readonly placement: PrefixMirror;
  private readonly drains: PrefixMirror;
  private readonly registry: PrefixMirror;
  private readonly clubs = new Map<string, ClubState>();
  private readonly storage: Storage;
  private readonly recordKey: Buffer;
  private readonly logger: ClusterLogger;
  private readonly opts: ClusterNodeOptions;
  private planTimer: NodeJS.Timeout | undefined;
  private planScheduled = false;
  private stopped = false;

  private constructor(opts: ClusterNodeOptions) {
    super();
    this.opts = opts;
    this.nodeId = checkNodeId(opts.nodeId);
    this.address = checkAddress(opts.address);
    this.storage = opts.storage;
    this.logger = opts.logger ?? silentClusterLogger;
    this.gw = new EtcdGateway(opts.etcd);
    this.recordKey = deriveClusterRecordKey(opts.masterKey);
    this.bans = new BanBoard(this.gw, { masterKey: opts.masterKey, nodeId: this.nodeId, logger: this.logger });
    this.members = new PrefixMirror(this.gw, MEMBERS_PREFIX);
    this.placement = new PrefixMirror(this.gw, PLACEMENT_PREFIX);
    this.drains = new PrefixMirror(this.gw, DRAIN_PREFIX);
    this.registry = new PrefixMirror(this.gw, REGISTRY_PREFIX);
  }

  /**
   * Join the cluster: lease, member key, registry and placement mirrors, ban board, leader
   * campaign. Clubs this server created before joining are registered.
   * @throws ClusterError ETCD_UNAVAILABLE, INVALID_ARGUMENT (node id in use).
   */
  static async start(opts: ClusterNodeOptions): Promise<ClusterNode> {
    const node = new ClusterNode(opts);
    try {
      await node.join();
      node.registry.on('change', (club: string, v: Buffer | undefined) => node.onRegistry(club, v));
      node.placement.on('change', (club: string) => node.reconcileSoon(club));
      node.placement.on('resync', () => node.reconcileAll());
      node.members.on('change', () => node.schedulePlan());
      node.drains.on('change', () => node.schedulePlan());
      await node.registry.start();
      for (const [club, v] of node.registry.entries()) node.onRegistry(club, v);
      await node.members.start();
      await node.drains.start();
      await node.placement.start();
      await node.bans.start();
      for (const row of opts.storage.server.listClubs()) if (!node.registry.get(row.id) && row.status !== 'deleting') await node.registerClub(row.id);
      node.reconcileAll();
      node.planTimer = setInterval(() => node.schedulePlan(), opts.planEveryMs ?? 1000);
      node.planTimer.unref?.();
      return node;
    } catch (e) {
      await node.stop().catch(() => undefined);
      throw e;
    }
  }

  private async join(): Promise<void> {
    this.lease = await MemberLease.grant(this.gw, { ttlSec: this.opts.ttlSec ?? 2 });
    this.lease.once('expired', () => this.onLeaseExpired());
    this.membership = new Membership(this.gw, this.lease, { id: this.nodeId, address: this.address, state: 'active' });
    await this.membership.register();
    this.leader = new PlacementLeader(this.gw, this.lease, this.nodeId, this.logger);
    this.leader.on('elected', () => this.schedulePlan());
    await this.leader.start();
  }

  private onLeaseExpired(): void {
    if (this.stopped) return;
    this.logger.warn('cluster lease expired by our own clock: stopping to serve every club and joining again', { event: 'cluster.lease.expired', node: this.nodeId });
    for (const [club, st] of this.clubs) {
      if (st.serving) {
        st.serving = false;
        this.emit('club-moved', club, this.route(club));
      }
      st.log?.close(new ClusterError('LEASE_EXPIRED', 'member lease expired'));
      st.log = undefined;
      st.role = 'none';
    }
    this.emit('lease-lost');
    const retry = (delay: number): void => {
      if (this.stopped) return;
      void this.leader
        .stop()
        .catch(() => undefined)
        .then(() => this.join())
        .then(() => this.reconcileAll())
        .catch(() => setTimeout(() => retry(Math.min(delay * 2, 2000)), delay).unref?.());
    };
    retry(100);
  }

  // ---- the daemon's questions -------------------------------------------------------------

  /** Where a request for `club` goes now. */
  route(club: string): Route {
    const st = this.clubs.get(club);
    if (st?.serving && st.log?.state === 'open' && this.lease.isValid()) return { kind: 'serve' };
    const p = this.placementOf(club);
    if (!p) return { kind: 'unavailable', reason: this.registry.get(club) ? 'club not placed yet' : 'unknown club' };
    if (p.primary === this.nodeId) return { kind: 'unavailable', reason: 'takeover under way' };
    const m = this.memberInfo(p.primary);
    if (!m) return { kind: 'unavailable', reason: 'primary not reachable; takeover under way' };
    return { kind: 'redirect', node: m.id, address: m.address };
  }

  /**
   * The output gate: ship what the last transactions of `club` changed and resolve once it is in
   * etcd. Call after the command's transactions, before answering the client.
   * @throws ClusterError NOT_OWNER (with `owner`) when the club is not served here (any more),
   *   FENCED / LEASE_EXPIRED / ETCD_UNAVAILABLE when the append failed (the club stops being
   *   served here at once).
   */
  async commit(club: string): Promise<void> {
    const st = this.clubs.get(club);
    if (!st?.serving || !st.log) {
      const r = this.route(club);
      throw new ClusterError('NOT_OWNER', `club ${club} is not served by this server`, r.kind === 'redirect' ? { owner: r.node } : {});
    }
    // Held in a local: a handover, a lost lease or another commit's failure may clear st.log while
    // this append is in flight; an append that succeeded still sets the store's position.
    const log = st.log;
    const db = this.storage.openClub(club, { allowSuspended: true }).db;
    const d = drainCapture(db, st.drainedUpto);
    if (!d) return;
    st.drainedUpto = d.upto;
    st.inflight++;
    try {
      await log.append(encodeChangeset(d.changeset));
      // The store holds every change up to the log head (its own), so that is its position.
      const db2 = this.storage.openClub(club, { allowSuspended: true }).db;
      const head = log.head;
      db2.transaction(() => {
        ackCapture(db2, d.upto);
        writePosition(db2, { seq: head.seq, digest: head.digest });
      })();
    } catch (e) {
      this.loseClub(club, st, e);
      throw e;
    } finally {
      st.inflight--;
    }
  }

  /** Whether the club's store holds changes not yet shipped (the command just run changed it). */
  hasPendingChanges(club: string): boolean {
    const st = this.clubs.get(club);
    if (!st?.serving) return false;
    const db = this.storage.openClub(club, { allowSuspended: true }).db;
    return db.prepare('SELECT 1 FROM _cluster_capture WHERE seq > ? LIMIT 1').get(st.drainedUpto) !== undefined;
  }

  /** Put a club's server-database row into the shared registry (after `club create`). */
  async registerClub(club: string): Promise<void> {
    const row = this.storage.server.mustGetClub(club);
    await this.gw.read('register club', () => this.gw.kv.put(registryKey(club)).value(sealClubRow(this.recordKey, row)).exec());
    this.schedulePlan();
  }

  /**
   * Remove a deleted club from etcd: registry record, placement, owner, log, then compact the
   * history so the wrapped key and the sealed entries are gone from etcd as well (SECURITY.md).
   */
  async forgetClub(club: string): Promise<void> {
    await this.gw.read('forget club', () =>
      this.gw.kv
        .if(registryKey(club), 'Create', '>', 0)
        .then(this.gw.kv.delete().key(registryKey(club)), this.gw.kv.delete().key(placementKey(club)), this.gw.kv.delete().prefix(`${CLUBS_PREFIX}${club}/`))
        .else(this.gw.kv.delete().prefix(`${CLUBS_PREFIX}${club}/`))
        .commit(),
    );
    await this.gw.compact(await this.gw.revision());
  }

  /** Mark a member drained (its clubs move away at the planned rate) or clear the mark. */
  async drain(nodeId: string, drained: boolean): Promise<void> {
    await setDrain(this.gw, nodeId, drained);
  }

  /** Members, leader and every club's primary, standbys and (for clubs followed here) lag. */
  async status(): Promise<ClusterStatus> {
    const drained = new Set(this.drains.entries().map(([k]) => k));
    const placements = this.allPlacements();
    const clubs: ClusterStatus['clubs'] = [];
    for (const [club] of this.registry.entries()) {
      const p = placements[club];
      const st = this.clubs.get(club);
      // lag is known for the clubs this server follows (its replica) or serves (0); others: null
      const lag = st?.follower ? st.follower.lag : st?.serving ? 0 : null;
      clubs.push({ id: club, primary: p?.primary ?? null, standbys: p?.standbys ?? [], lag, epoch: p?.epoch ?? 0 });
    }
    return {
      self: this.nodeId,
      leader: await this.leader.currentLeader().catch(() => undefined),
      members: this.memberList().map((m) => ({ id: m.id, address: m.address, state: drained.has(m.id) ? 'draining' : m.state, drained: drained.has(m.id) })),
      clubs: clubs.sort((a, b) => (a.id < b.id ? -1 : 1)),
    };
  }

  /** Whether this server is the placement leader now. */
  isLeader(): boolean {
    return this.leader.isLeader();
  }

  /** Clubs this server serves now. */
  served(): string[] {
    return [...this.clubs.entries()].filter(([, s]) => s.serving).map(([c]) => c);
  }

  /** Lag of this server's replica of `club` (entries behind), or undefined when it follows none. */
  lagOf(club: string): number | undefined {
    return this.clubs.get(club)?.follower?.lag;
  }

  /** Leave the cluster: hand served clubs back, stop following, revoke the lease. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.planTimer) clearInterval(this.planTimer);
    for (const [club, st] of this.clubs) {
      await st.chain.catch(() => undefined);
      await st.follower?.stop();
      if (st.log && st.log.state === 'open') {
        st.serving = false;
        await this.handBack(club, st).catch(() => undefined);
      }
    }
    await Promise.all([this.members.stop(), this.placement.stop(), this.drains.stop(), this.registry.stop(), this.bans.stop()]);
    if (this.leader) await this.leader.stop().catch(() => undefined);
    if (this.membership) await this.membership.leave().catch(() => undefined);
    if (this.lease) await this.lease.revoke();
    this.gw.close();
  }

  /** Stop as a crash would (tests, drills): no handover, no revoke; etcd expires the lease. */
  async crash(): Promise<void> {
    this.stopped = true;
    if (this.planTimer) clearInterval(this.planTimer);
    for (const st of this.clubs.values()) {
      st.serving = false;
      st.log?.close();
      await st.follower?.stop();
    }
    await Promise.all([this.members.stop(), this.placement.stop(), this.drains.stop(), this.registry.stop(), this.bans.stop(), this.leader?.abandon()]);
    this.lease?.abandon();
    this.gw.close();
  }

  // ---- placement ----------------------------------------------------------------------------

  private memberList(): MemberInfo[] {
    const out: MemberInfo[] = [];
    for (const [, v] of this.members.entries()) {
      try {
        out.push(JSON.parse(v.toString('utf8')) as MemberInfo);
      } catch {
        // ignored: membership.ts validates on write
      }
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  private memberInfo(id: string): MemberInfo | undefined {
    const v = this.members.get(id);
    if (!v) return undefined;
    try {
      return JSON.parse(v.toString('utf8')) as MemberInfo;
    } catch {
      return undefined;
    }
  }

  private placementOf(club: string): Placement | undefined {
    const v = this.placement.get(club);
    if (!v) return undefined;
    try {
      return JSON.parse(v.toString('utf8')) as Placement;
    } catch {
      return undefined;
    }
  }

  private allPlacements(): Record<string, Placement> {
    const out: Record<string, Placement> = {};
    for (const [club] of this.placement.entries()) {
      const p = this.placementOf(club);
      if (p) out[club] = p;
    }
    return out;
  }

  private schedulePlan(): void {
    if (this.planScheduled || this.stopped) return;
    this.planScheduled = true;
    setImmediate(() => {
      this.planScheduled = false;
      if (!this.leader?.isLeader()) return;
      void this.plan().catch((e) => this.logger.warn('placement round failed', { event: 'cluster.plan.failed', code: (e as ClusterError).code }));
    });
  }

  private async plan(): Promise<void> {
    const drained = new Set(this.drains.entries().map(([k]) => k));
    const members = this.memberList().map((m) => ({ id: m.id, state: m.state, drained: drained.has(m.id) }));
    const clubs = this.registry.entries().map(([club]) => ({ id: club, bytes: this.localBytes(club) }));
    const current = this.allPlacements();
    const next = planPlacement({ members, clubs, current, standbys: this.opts.standbys ?? 1, maxMoves: this.opts.movesPerRound ?? 1 });
    const changed: Record<string, Placement> = {};
    for (const [club, p] of Object.entries(next)) if (JSON.stringify(current[club]) !== JSON.stringify(p)) changed[club] = p;
    if (Object.keys(changed).length > 0) await this.leader.write(changed);
  }

  private localBytes(club: string): number {
    try {
      const db = this.storage.cache.isOpen(club) ? this.storage.openClub(club, { allowSuspended: true }).db : undefined;
      if (!db) return 0;
      const r = db.prepare('SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()').get() as { n: number };
      return r.n;
    } catch {
      return 0;
    }
  }

  // ---- registry -----------------------------------------------------------------------------

  private onRegistry(club: string, value: Buffer | undefined): void {
    if (!value) {
      void this.dropClub(club);
      return;
    }
    try {
      const row = openClubRow(this.recordKey, club, value);
      // The store is created on first use here too; the administrator row the primary ships in
      // its first entries overwrites the one made locally (same row id).
      if (!this.storage.server.getClub(club)) this.storage.server.insertClub({ ...row, storeState: 'pending' });
      this.reconcileSoon(club);
    } catch (e) {
      this.logger.warn('registry record not imported', { event: 'cluster.registry.bad', clubId: club, code: (e as ClusterError).code ?? (e as Error).name });
    }
  }

  /** The club was deleted (its registry record is gone): stop everything and delete the local copy. */
  private async dropClub(club: string): Promise<void> {
    const st = this.clubs.get(club);
    if (st) {
      st.serving = false;
      await st.chain.catch(() => undefined);
      await st.follower?.stop();
      st.log?.close();
      this.clubs.delete(club);
    }
    if (!this.storage.server.getClub(club)) return;
    try {
      await deleteClub(this.storage, club);
      this.logger.info('deleted club removed here too', { event: 'cluster.club.deleted', clubId: club });
    } catch (e) {
      this.logger.warn('deleted club not removed here', { event: 'cluster.club.delete-failed', clubId: club, code: (e as { code?: string }).code ?? (e as Error).name });
    }
  }

  // ---- roles --------------------------------------------------------------------------------

  private state(club: string): ClubState {
    let st = this.clubs.get(club);
    if (!st) {
      st = { role: 'none', log: undefined, follower: undefined, serving: false, drainedUpto: 0, chain: Promise.resolve(), inflight: 0, needsRebuild: false };
      this.clubs.set(club, st);
    }
    return st;
  }

  private reconcileAll(): void {
    for (const [club] of this.placement.entries()) this.reconcileSoon(club);
  }

  private reconcileSoon(club: string): void {
    if (this.stopped) return;
    const st = this.state(club);
    st.chain = st.chain
      .then(() => this.reconcile(club, st))
      .catch((e) => {
        this.logger.warn('club role change failed; retrying', { event: 'cluster.role.failed', clubId: club, code: (e as ClusterError).code ?? (e as Error).name });
        setTimeout(() => this.reconcileSoon(club), 250).unref?.();
      });
  }

  private logKeyOf(club: string): Buffer {
    const row = this.storage.server.mustGetClub(club);
    const keys = this.storage.clubKeys(row);
    const k = deriveLogKey(keys[0]!.key, club);
    for (const x of keys) x.key.fill(0);
    return k;
  }

  private async reconcile(club: string, st: ClubState): Promise<void> {
    if (this.stopped || !this.lease.isValid()) return;
    const p = this.placementOf(club);
    if (!p || !this.storage.server.getClub(club)) return;
    const want: ClubState['role'] = p.primary === this.nodeId ? 'primary' : p.standbys.includes(this.nodeId) ? 'standby' : 'none';
    if (want === 'primary') {
      if (st.serving && st.log?.state === 'open') return;
      await this.becomePrimary(club, st);
      return;
    }
    if (st.log) {
      st.serving = false;
      await this.handBack(club, st);
      this.emit('club-moved', club, this.route(club));
    }
    if (want === 'standby') {
      this.rebuildIfAhead(club, st);
      await this.follow(club, st);
    }
    else {
      await st.follower?.stop();
      st.follower = undefined;
    }
    st.role = want;
  }

  private async follow(club: string, st: ClubState): Promise<void> {
    if (st.follower) return;
    const db = this.storage.openClub(club, { allowSuspended: true }).db;
    installCapture(db);
    const f = new LogFollower({
      gw: this.gw,
      clubId: club,
      logKey: this.logKeyOf(club),
      from: readPosition(db),
      apply: (e) => void applyEntry(this.storage.openClub(club, { allowSuspended: true }).db, e),
      logger: this.logger,
    });
    f.on('error', () => {
      if (st.follower === f) st.follower = undefined;
      setTimeout(() => this.reconcileSoon(club), 500).unref?.();
    });
    st.follower = f;
    await f.start();
  }

  /**
   * A local store with changes that never reached the log (this server crashed, or lost the club,
   * between a commit and its append) is ahead of the log: those changes were never acknowledged.
   * Such a store is dropped and built again from the log (which is kept from entry 1).
   */
  private rebuildIfAhead(club: string, st: ClubState): void {
    if (st.follower) return;
    const db = this.storage.openClub(club, { allowSuspended: true }).db;
    installCapture(db);
    if (pendingCapture(db) === 0 && !st.needsRebuild) return;
    this.logger.warn('local store is ahead of the log (unacknowledged changes); rebuilding it from the log', { event: 'cluster.replica.rebuild', clubId: club });
    const release = this.storage.cache.lock(club);
    try {
      removeSqliteFiles(clubDbPath(this.storage.dataDir, club));
      this.storage.server.db.prepare(`UPDATE clubs SET store_state = 'pending', pending_admin = NULL WHERE id = ?`).run(club);
    } finally {
      release();
    }
    st.needsRebuild = false;
  }

  private async becomePrimary(club: string, st: ClubState): Promise<void> {
    this.rebuildIfAhead(club, st);
    await this.follow(club, st);
    const follower = st.follower!;
    const logKey = this.logKeyOf(club);
    const schema = this.storage.openClub(club, { allowSuspended: true }).db.pragma('user_version', { simple: true }) as number;
    const opts = { gw: this.gw, lease: this.lease, nodeId: this.nodeId, clubId: club, logKey, schema };
    let taken: { log: ClubLog } | undefined;
    for (let delay = 20; !taken; delay = Math.min(delay * 2, 200)) {
      if (this.stopped || !this.lease.isValid() || this.placementOf(club)?.primary !== this.nodeId) {
        return;
      }
      try {
        taken = await takeOver(follower, opts);
      } catch (e) {
        if (!(e instanceof ClusterError) || e.code !== 'NOT_OWNER') throw e;
        // The previous owner still holds the key: its lease has not ended or it is handing over.
        await new Promise((r) => setTimeout(r, delay));
      }
    }
    st.follower = undefined;
    const db = this.storage.openClub(club, { allowSuspended: true }).db;
    installCapture(db);
    const head = taken.log.head;
    if (head.seq === 0) {
      for (const cs of fullImage(db, MAX_ENTRY_BYTES - 4096)) await taken.log.append(cs);
      writePosition(db, { seq: taken.log.head.seq, digest: taken.log.head.digest });
    }
    st.drainedUpto = (db.prepare('SELECT coalesce(max(seq), 0) AS m FROM _cluster_capture').get() as { m: number }).m;
    st.log = taken.log;
    st.role = 'primary';
    st.serving = true;
    this.logger.info('serving club as primary', { event: 'cluster.primary', clubId: club, seq: taken.log.head.seq });
  }

  /** Planned handover: wait for appends in flight, record the position, release the owner key. */
  private async handBack(club: string, st: ClubState): Promise<void> {
    const log = st.log;
    if (!log) return;
    while (st.inflight > 0) await new Promise((r) => setImmediate(r));
    try {
      if (log.state === 'open') {
        const db = this.storage.openClub(club, { allowSuspended: true }).db;
        writePosition(db, { seq: log.head.seq, digest: log.head.digest });
        await log.release();
      }
    } finally {
      st.log = undefined;
      st.role = 'none';
    }
  }

  private loseClub(club: string, st: ClubState, e: unknown): void {
    if (!st.serving) return;
    st.serving = false;
    st.log = undefined;
    st.role = 'none';
    st.needsRebuild = true;
    this.logger.warn('club no longer served here', { event: 'cluster.club.lost', clubId: club, code: (e as ClusterError).code ?? (e as Error).name });
    this.emit('club-moved', club, this.route(club));
    setTimeout(() => this.reconcileSoon(club), 250).unref?.();
  }
}

