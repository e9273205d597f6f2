/**
 * A member's upkeep of the shared log (issue 14; docs/CLUSTER.md "Log trimming and snapshots"):
 * trim rounds for the clubs it serves (log-trim.ts), compaction of etcd's history while it leads
 * placement (compaction.ts), and, before a replica follows a log, the check that the log still
 * holds the entry after the replica's position, or else a snapshot (snapshot.ts).
 */
import { installCapture, readPosition } from './capture.js';
import { readHead, type ClubLog } from './club-log.js';
import { HistoryCompactor } from './compaction.js';
import { ClusterError, type ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { firstLogSeq, trimRound } from './log-trim.js';
import type { NodeContext, UpkeepSettings } from './node-types.js';
import { obtainSnapshot, type SnapshotLimits } from './snapshot.js';

export const DEFAULT_UPKEEP: UpkeepSettings = {
  logKeepEntries: 100,
  trimEveryMs: 5000,
  trimMaxDeletes: 1000,
  compactAfterMs: 300_000,
  compactEveryMs: 60_000,
  publishEveryMs: 1000,
  snapshot: {},
};

/** The settings from a node's options, defaults filled in. */
export function upkeepSettings(o: Partial<Omit<UpkeepSettings, 'snapshot'>> & { snapshot?: SnapshotLimits }): UpkeepSettings {
  return {
    logKeepEntries: o.logKeepEntries ?? DEFAULT_UPKEEP.logKeepEntries,
    trimEveryMs: o.trimEveryMs ?? DEFAULT_UPKEEP.trimEveryMs,
    trimMaxDeletes: o.trimMaxDeletes ?? DEFAULT_UPKEEP.trimMaxDeletes,
    compactAfterMs: o.compactAfterMs ?? DEFAULT_UPKEEP.compactAfterMs,
    compactEveryMs: o.compactEveryMs ?? DEFAULT_UPKEEP.compactEveryMs,
    publishEveryMs: o.publishEveryMs ?? DEFAULT_UPKEEP.publishEveryMs,
    snapshot: o.snapshot ?? {},
  };
}

/**
 * Make sure a replica can follow the log from its position: when entry position+1 is trimmed
 * already, obtain a snapshot from the club's other members (standbys first, then the primary)
 * and install it. No-op when the log still has that entry (or the replica is at the head).
 * @throws ClusterError SNAPSHOT_UNAVAILABLE (no usable snapshot now, or no peer channel: the
 *   caller retries), ETCD_UNAVAILABLE.
 */
export async function ensureReachable(ctx: NodeContext, club: string, logKey: Uint8Array): Promise<void> {
  const db = ctx.storage.openClub(club, { allowSuspended: true }).db;
  installCapture(db);
  const pos = readPosition(db);
  const head = await readHead(ctx.gw, club);
  if (head.seq <= pos.seq) return;
  const first = await firstLogSeq(ctx.gw, club);
  if (first !== undefined && first <= pos.seq + 1) return;
  if (!ctx.peers) throw new ClusterError('SNAPSHOT_UNAVAILABLE', `replica of club ${club} is behind the trimmed log and this server has no peer channel for a snapshot`);
  const p = ctx.placementOf(club);
  const sources = [...(p?.standbys ?? []), ...(p ? [p.primary] : [])].filter((n, i, a) => n !== ctx.nodeId && a.indexOf(n) === i);
  ctx.logger.info('replica is behind the trimmed log: fetching a snapshot', { event: 'cluster.snapshot.needed', clubId: club, seq: pos.seq, first: first ?? null });
  await obtainSnapshot({ storage: ctx.storage, gw: ctx.gw, club, logKey, logger: ctx.logger, peers: ctx.peers, sources, ...ctx.upkeep.snapshot });
}

export interface MaintenanceOptions {
  gw: EtcdGateway;
  logger: ClusterLogger;
  settings: UpkeepSettings;
  /** Trim only with a peer channel: a standby left behind needs a snapshot. */
  trim: boolean;
  isLeader(): boolean;
  /** Clubs served here now, with their log and current standbys. */
  served(): Array<{ club: string; log: ClubLog; standbys: string[] }>;
}

/** The timers of trimming and compaction on one member. */
export class ClusterMaintenance {
  private trimTimer: NodeJS.Timeout | undefined;
  private compactTimer: NodeJS.Timeout | undefined;
  private trimming = false;
  private compacting = false;
  readonly compactor: HistoryCompactor | undefined;
  /** Trim rounds finished (metrics, tests). */
  trimRounds = 0;

  constructor(private readonly o: MaintenanceOptions) {
    if (o.settings.compactAfterMs > 0) this.compactor = new HistoryCompactor({ gw: o.gw, retainMs: o.settings.compactAfterMs, logger: o.logger });
  }

  start(): void {
    if (this.o.trim) {
      this.trimTimer = setInterval(() => void this.trimAll(), this.o.settings.trimEveryMs);
      this.trimTimer.unref?.();
    }
    if (this.compactor) {
      this.compactTimer = setInterval(() => void this.compact(), this.o.settings.compactEveryMs);
      this.compactTimer.unref?.();
    }
  }

  stop(): void {
    if (this.trimTimer) clearInterval(this.trimTimer);
    if (this.compactTimer) clearInterval(this.compactTimer);
  }

  /** One trim round over every club served here (rounds do not overlap). */
  async trimAll(): Promise<void> {
    if (this.trimming) return;
    this.trimming = true;
    try {
      for (const s of this.o.served()) {
        await trimRound({ gw: this.o.gw, club: s.club, log: s.log, standbys: s.standbys, keepEntries: this.o.settings.logKeepEntries, maxDeletes: this.o.settings.trimMaxDeletes, logger: this.o.logger }).catch((e: unknown) =>
          this.o.logger.warn('trim round failed', { event: 'cluster.log.trim-failed', clubId: s.club, code: (e as { code?: string }).code ?? (e as Error).name }),
        );
      }
    } finally {
      this.trimming = false;
      this.trimRounds++;
    }
  }

  private async compact(): Promise<void> {
    if (this.compacting || !this.compactor) return;
    this.compacting = true;
    try {
      await this.compactor.round(this.o.isLeader());
    } catch (e) {
      this.o.logger.warn('compaction round failed', { event: 'cluster.etcd.compact-failed', code: (e as { code?: string }).code ?? (e as Error).name });
    } finally {
      this.compacting = false;
    }
  }
}
