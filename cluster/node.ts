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
import { deriveClusterRecordKey } from '../crypto/cluster-seal.js';
import { listRowAnswers } from '../storage/server/row-answers.js';
import type { Storage } from '../storage/server/storage.js';
import { BanBoard } from './ban-board.js';
import { guardWrites } from './capture.js';
import { dropClub, handBack, reconcileRole } from './club-roles.js';
import { ClusterError, reasonOf, silentClusterLogger, type ClusterLogger } from './errors.js';
import { EtcdGateway } from './etcd-gateway.js';
import { checkNodeId, DRAIN_PREFIX, MEMBERS_PREFIX, PLACEMENT_PREFIX } from './keys.js';
import { ClusterMaintenance, upkeepSettings } from './maintenance.js';
import type { MemberLease } from './member-lease.js';
import { joinCluster, rejoinUntilJoined } from './node-join.js';
import { checkAddress, setDrain, type Membership } from './membership.js';
import type { ClubState, ClusterNodeOptions, ClusterStatus, NodeContext, Route } from './node-types.js';
import { allPlacements, clusterStatus, memberInfo, placementChanges, placementOf } from './node-views.js';
import { holdColdMoves } from './warm-moves.js';
import { registerDocumentPeers, replicateFiles } from './doc-replica.js';
import { commitClub } from './output-gate.js';
import type { PeerTransport } from './peer-types.js';
import type { PlacementLeader, Placement } from './placement.js';
import { PrefixMirror } from './prefix-mirror.js';
import { forgetClubRecords, importClubRecord, REGISTRY_PREFIX, registryKey, sealClubRow } from './registry.js';
import { registerSnapshotProvider } from './snapshot.js';

export type { ClusterNodeOptions, ClusterStatus, Route } from './node-types.js';

/** Events: 'club-moved' (clubId, route), 'lease-lost', 'ban' / 'unban' (from the ban board). */
export class ClusterNode extends EventEmitter {
  readonly nodeId: string;
  readonly address: string;
  readonly gw: EtcdGateway;
  readonly bans: BanBoard;
  /** The peer channel (documents, snapshots), when configured. */
  readonly peers: PeerTransport | undefined;
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
  readonly upkeep: ClusterMaintenance; // trimming and compaction (maintenance.ts)
  private planScheduled = false;
  private stopped = false;
  /** What the role and output-gate helpers see of this node. */
  private readonly ctx: NodeContext;

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
    this.peers = opts.peers;
    if (opts.peers) registerDocumentPeers(opts.peers, this.storage);
    this.storage.onClubOpen = (club, db) => guardWrites(db, () => this.route(club).kind === 'serve'); // no local write unless served here
    const node = this;
    const upkeep = upkeepSettings(opts);
    const served = () => [...this.clubs.entries()].filter(([, s]) => s.serving && s.log?.state === 'open').map(([club, s]) => ({ club, log: s.log!, standbys: this.placementOf(club)?.standbys ?? [] }));
    this.upkeep = new ClusterMaintenance({ gw: this.gw, logger: this.logger, settings: upkeep, trim: opts.peers !== undefined, isLeader: () => this.isLeader(), served });
    this.ctx = {
      upkeep,
      gw: this.gw,
      nodeId: this.nodeId,
      storage: this.storage,
      logger: this.logger,
      peers: this.peers,
      memberIds: () => this.members.entries().map(([id]) => id),
      auditVerifier: () => opts.auditVerifier?.(),
      get lease() {
        return node.lease;
      },
      get stopped() {
        return node.stopped;
      },
      placementOf: (club) => this.placementOf(club),
      reconcileSoon: (club) => this.reconcileSoon(club),
      clubMoved: (club) => this.emit('club-moved', club, this.route(club)),
    };
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
      if (opts.peers) registerSnapshotProvider(opts.peers, opts.storage, node.logger, opts.snapshot, opts.workers);
      node.upkeep.start();
      return node;
    } catch (e) {
      await node.stop().catch(() => undefined);
      throw e;
    }
  }

  /** Take a seat (node-join.ts joinCluster); only a complete join replaces the node's lease. */
  private async join(): Promise<MemberLease> {
    const seat = await joinCluster({ gw: this.gw, nodeId: this.nodeId, address: this.address, ttlSec: this.opts.ttlSec ?? 2, logger: this.logger, onElected: () => this.schedulePlan(), onExpired: (l) => this.lease === l && this.onLeaseExpired(), stopped: () => this.stopped });
    ({ lease: this.lease, membership: this.membership, leader: this.leader } = seat);
    // Expired while joining (a long pause): its listener saw a lease that was not yet current.
    if (!seat.lease.isValid() && !this.rejoining) this.onLeaseExpired();
    return seat.lease;
  }

  private rejoining = false;
  private onLeaseExpired(): void {
    if (this.stopped || this.rejoining) return;
    this.rejoining = true;
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
    rejoinUntilJoined({
      nodeId: this.nodeId,
      logger: this.logger,
      stopped: () => this.stopped,
      leave: () => this.leader.stop(),
      join: () => this.join(),
      done: (joined) => {
        this.rejoining = false;
        if (joined) this.reconcileAll();
      },
    });
  }

  // ---- the daemon's questions -------------------------------------------------------------

  /** Where a request for `club` goes now. */
  route(club: string): Route {
    const st = this.clubs.get(club);
    if (st?.serving && st.log?.state === 'open' && this.lease.isValid()) return { kind: 'serve' };
    const p = this.placementOf(club);
    if (!p) return { kind: 'unavailable', reason: this.registry.get(club) ? 'club not placed yet' : 'unknown club' };
    if (p.primary === this.nodeId) return { kind: 'unavailable', reason: 'takeover under way' };
    const m = memberInfo(this.members, p.primary);
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
    await commitClub(this.ctx, club, st, st.log);
  }

  /** Copy a stored document file of a served club to its standbys before its row is recorded (doc-replica.ts replicateFiles). */
  async replicateDocument(club: string, file: string): Promise<void> {
    if (!this.clubs.get(club)?.serving) throw new ClusterError('NOT_OWNER', `club ${club} is not served by this server`);
    await replicateFiles({ peers: this.peers, storage: this.storage, nodeId: this.nodeId, club, placement: this.placementOf(club), logger: this.logger }, [file]);
    // The club may have moved while the copies went out: then the row must not be written here.
    if (!this.clubs.get(club)?.serving) throw new ClusterError('NOT_OWNER', `club ${club} is not served by this server`);
  }

  /** Put a club's server-database row into the shared registry (after `club create`). */
  async registerClub(club: string): Promise<void> {
    const row = this.storage.server.mustGetClub(club);
    const sealed = sealClubRow(this.recordKey, row, listRowAnswers(this.storage.server.db, club));
    await this.gw.read('register club', () => this.gw.kv.put(registryKey(club)).value(sealed).exec());
    this.schedulePlan();
  }

  /** Remove a deleted club's records from etcd and compact its history (registry.ts forgetClubRecords). */
  async forgetClub(club: string): Promise<void> {
    await forgetClubRecords(this.gw, club);
  }

  /** Mark a member drained (its clubs move away at the planned rate) or clear the mark. */
  async drain(nodeId: string, drained: boolean): Promise<void> {
    await setDrain(this.gw, nodeId, drained);
  }

  /** Members, leader and every club's primary, standbys and (for clubs followed here) lag. */
  async status(): Promise<ClusterStatus> {
    const leader = await this.leader.currentLeader().catch(() => undefined);
    return clusterStatus({ self: this.nodeId, leader, members: this.members, placement: this.placement, drains: this.drains, registry: this.registry, clubs: this.clubs, served: (club) => this.route(club).kind === 'serve', now: Date.now() });
  }

  /** A current member's advertised HOST:PORT (the peer channel's directory), or undefined. */
  memberAddress(nodeId: string): string | undefined {
    return memberInfo(this.members, nodeId)?.address;
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
    this.upkeep.stop();
    for (const [club, st] of this.clubs) {
      await st.chain.catch(() => undefined);
      await st.follower?.stop();
      if (st.log && st.log.state === 'open') {
        st.serving = false;
        await handBack(this.storage, club, st, this.logger).catch(() => undefined);
      }
    }
    await Promise.all([this.members.stop(), this.placement.stop(), this.drains.stop(), this.registry.stop(), this.bans.stop()]);
    if (this.leader) await this.leader.stop().catch(() => undefined);
    if (this.membership) await this.membership.leave().catch(() => undefined);
    if (this.lease) await this.lease.revoke();
    this.gw.close();
  }

  /**
   * Stop renewing the current lease without telling etcd, as a partition or a long pause would
   * (tests, drills): the lease runs out by this server's clock, the server stops serving every
   * club and joins again with a new lease.
   */
  suspendLeaseKeepalive(): void {
    this.lease.suspendKeepalive();
  }

  /** Stop as a crash would (tests, drills): no handover, no revoke; etcd expires the lease. */
  async crash(): Promise<void> {
    this.stopped = true;
    if (this.planTimer) clearInterval(this.planTimer);
    this.upkeep.stop();
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

  private placementOf(club: string): Placement | undefined {
    return placementOf(this.placement, club);
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
    const opts = { standbys: this.opts.standbys ?? 1, maxMoves: this.opts.movesPerRound ?? 1 };
    const changed = placementChanges({ members: this.members, drains: this.drains, registry: this.registry, placement: this.placement, storage: this.storage, ...opts });
    if (Object.keys(changed).length === 0) return;
    // Planned moves wait until their target has caught up (warm-moves.ts).
    const held = await holdColdMoves({ gw: this.gw, current: allPlacements(this.placement), changed, alive: new Set(this.ctx.memberIds()), keepEntries: this.ctx.upkeep.logKeepEntries, logger: this.logger });
    if (Object.keys(held).length > 0) await this.leader.write(held);
  }

  // ---- registry -----------------------------------------------------------------------------

  private onRegistry(club: string, value: Buffer | undefined): void {
    if (!value) {
      void dropClub(this.storage, this.logger, this.clubs, club);
      return;
    }
    if (importClubRecord(this.storage, this.recordKey, this.logger, club, value)) this.reconcileSoon(club);
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
    if (this.placementOf(club)?.primary !== this.nodeId || st.serving) st.namedPrimaryAt = undefined;
    else st.namedPrimaryAt ??= Date.now();
    st.chain = st.chain
      .then(() => reconcileRole(this.ctx, club, st))
      .catch((e) => {
        this.logger.warn('club role change failed; retrying', { event: 'cluster.role.failed', clubId: club, code: (e as ClusterError).code ?? (e as Error).name, reason: reasonOf(e) });
        setTimeout(() => this.reconcileSoon(club), 250).unref?.();
      });
  }
}
