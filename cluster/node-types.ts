/** The types cluster/node.ts and its helper modules share: options, routes, status and a club's state. */
import type { AuditVerifier } from '../storage/club/audit-log.js';
import type { Storage } from '../storage/server/storage.js';
import type { SnapshotPool } from '../storage/backup/snapshot-pool.js';
import type { ClubLog } from './club-log.js';
import type { ClusterLogger } from './errors.js';
import type { EtcdGateway, EtcdGatewayOptions } from './etcd-gateway.js';
import type { LogFollower } from './log-follower.js';
import type { MemberLease } from './member-lease.js';
import type { PeerTransport } from './peer-types.js';
import type { Placement } from './placement.js';
import type { SnapshotLimits } from './snapshot.js';

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
  /**
   * The peer channel (cluster/peer-channel.ts): documents go to the standbys over it before the
   * entry that references them, and a standby pulls what it lacks. Without it a club with
   * standbys refuses to commit a document (nothing is acknowledged that only one server holds), and
   * the log is never trimmed (a standby left behind has no snapshot to come back through).
   */
  peers?: PeerTransport;
  /** Log entries kept below the slowest standby and the head (default 100; docs/CLUSTER.md). */
  logKeepEntries?: number;
  /** Time between trim rounds in ms (default 5000). */
  trimEveryMs?: number;
  /** History younger than this is not compacted (ms, default 300000; 0: etcd's own auto-compaction is used). */
  compactAfterMs?: number;
  /** Time between compaction rounds in ms (default 60000). */
  compactEveryMs?: number;
  /** A standby publishes its applied position at most this often (ms, default 2000). */
  publishEveryMs?: number;
  /** Bounds of snapshot transfers. */
  snapshot?: SnapshotLimits;
  /** The storage worker threads snapshots are copied on (the daemon's one pool); default a pool of the process. */
  workers?: SnapshotPool;
  /**
   * Verifies the signed heads of a received snapshot's change log: the cluster's shared identity
   * keys (current and those of a rollover; daemon/cluster/setup.ts). Asked at each snapshot, so a
   * rollover is seen. Without it a snapshot whose change log has signed heads is refused.
   */
  auditVerifier?: () => AuditVerifier | undefined;
}

export type Route = { kind: 'serve' } | { kind: 'redirect'; node: string; address: string } | { kind: 'unavailable'; reason: string };

export interface ClubState {
  role: 'primary' | 'standby' | 'none';
  log: ClubLog | undefined;
  follower: LogFollower | undefined;
  serving: boolean;
  drainedUpto: number;
  /** Serialises role changes of this club. */
  chain: Promise<void>;
  /** Commits in flight (a handover waits for them). */
  inflight: number;
  /** The newest append of drained changes in flight (output-gate.ts: a commit with nothing left to drain waits for it). */
  shipping?: Promise<void> | undefined;
  /** The local store may hold changes the log lacks (an append failed): rebuild before use. */
  needsRebuild: boolean;
  /** Local time (ms) this member first saw itself named the club's primary while not serving it (status `waitingMs`). */
  namedPrimaryAt?: number | undefined;
}

export interface ClusterStatus {
  self: string;
  leader: string | undefined;
  members: Array<{ id: string; address: string; state: string; drained: boolean }>;
  /**
   * `served`: this member answers the club's requests now (route = serve). A member named primary
   * with `served` false is taking the club over; `waitingMs` says for how long (null otherwise).
   */
  clubs: Array<{ id: string; primary: string | null; standbys: string[]; lag: number | null; epoch: number; served: boolean; waitingMs: number | null }>;
}

/**
 * What the role and output-gate helpers need from the node (passed in, so they never import
 * node.ts back). `lease` is read each time: the node joins again with a new one after expiry.
 */
export interface NodeContext {
  readonly gw: EtcdGateway;
  readonly nodeId: string;
  readonly storage: Storage;
  readonly logger: ClusterLogger;
  readonly lease: MemberLease;
  readonly stopped: boolean;
  /** The peer channel, when configured (snapshots). */
  readonly peers: PeerTransport | undefined;
  readonly upkeep: UpkeepSettings;
  placementOf(club: string): Placement | undefined;
  /** The verifier of snapshots' signed change-log heads (ClusterNodeOptions.auditVerifier), if any. */
  auditVerifier(): AuditVerifier | undefined;
  /** Node ids of the live members (from `members/`). */
  memberIds(): string[];
  /** Schedules a role change of `club` on its chain (retried on failure). */
  reconcileSoon(club: string): void;
  /** Emits 'club-moved' with the club's current route. */
  clubMoved(club: string): void;
}

/** Settings of trimming, compaction and snapshots (ClusterNodeOptions; CONFIG.md `cluster.*`). */
export interface UpkeepSettings {
  /** Entries kept below the slowest standby and below the head (default 100). */
  logKeepEntries: number;
  /** Time between trim rounds (ms, default 5000). */
  trimEveryMs: number;
  /** Most entries one trim round deletes per club (default 1000). */
  trimMaxDeletes: number;
  /** History younger than this stays uncompacted (ms, default 300000); 0: no compaction by us. */
  compactAfterMs: number;
  /** Time between compaction rounds (ms, default 60000). */
  compactEveryMs: number;
  /** A standby publishes its position at most this often (ms, default 2000). */
  publishEveryMs: number;
  snapshot: SnapshotLimits;
}
