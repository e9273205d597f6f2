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
import { pullMissingFiles } from './doc-replica.js';
import { obtainSnapshot, type SnapshotLimits } from './snapshot.js';

export const DEFAULT_UPKEEP: UpkeepSettings = {
  logKeepEntries: 100,
  trimEveryMs: 5000,
  trimMaxDeletes: 1000,
  compactAfterMs: 300_000,
  compactEveryMs: 60_000,
  publishEveryMs: 2000,
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
  // Attempts after a failure wait 0.5, 1, 2, 4, then 5 s (each asks every source, which copies its store).
  const key = `${ctx.nodeId}/${club}`;
  const failures = snapshotFailures.get(key) ?? 0;
  if (failures > 0) await new Promise((r) => setTimeout(r, Math.min(250 * 2 ** failures, 5000)));
  if (ctx.stopped) throw new ClusterError('CLOSED', 'server stopping');
  const p = ctx.placementOf(club);
  // The club's standbys first, then its primary, then any other member that may still hold it.
  const sources = [...(p?.standbys ?? []), ...(p ? [p.primary] : []), ...ctx.memberIds()].filter((n, i, a) => n !== ctx.nodeId && a.indexOf(n) === i);
  ctx.logger.info('replica is behind the trimmed log: fetching a snapshot', { event: 'cluster.snapshot.needed', clubId: club, seq: pos.seq, first: first ?? null });
  try {
    const peers = ctx.peers;
    await obtainSnapshot({
      storage: ctx.storage,
      gw: ctx.gw,
      club,
      logKey,
      logger: ctx.logger,
      peers,
      sources,
      ...ctx.upkeep.snapshot,
      auditVerifier: ctx.auditVerifier(),
      // The files the snapshot's rows name, before it is installed: a takeover by this replica
      // must find every document its rows promise (RPO 0 for documents, as for rows).
      documents: (files) => pullMissingFiles({ peers, storage: ctx.storage, club, files, sources, logger: ctx.logger }),
    });
    snapshotFailures.delete(key);
  } catch (e) {
    snapshotFailures.set(key, Math.min(failures + 1, 8));
    throw e;
  }
}

/** Consecutive failed snapshot attempts per node and club (the back-off of ensureReachable). */
const snapshotFailures = new Map<string, number>();

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
  /**
   * Per club: the head of the last round that found nothing (more) to delete and how many rounds
   * ago; such a club is skipped until its head moves or 12 rounds have passed (a standby that
   * held trimming back may have caught up since).
   */
  private readonly idleAt = new Map<string, { head: number; skipped: number }>();
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
      const served = this.o.served();
      for (const club of this.idleAt.keys()) if (!served.some((s) => s.club === club)) this.idleAt.delete(club);
      for (const s of served) {
        const head = s.log.head.seq;
        const idle = this.idleAt.get(s.club);
        if (idle && idle.head === head && idle.skipped < 12) {
          idle.skipped++;
          continue;
        }
        try {
          const n = await trimRound({ gw: this.o.gw, club: s.club, log: s.log, standbys: s.standbys, keepEntries: this.o.settings.logKeepEntries, maxDeletes: this.o.settings.trimMaxDeletes, logger: this.o.logger });
          if (n < this.o.settings.trimMaxDeletes) this.idleAt.set(s.club, { head, skipped: 0 });
          else this.idleAt.delete(s.club);
        } catch (e) {
          this.o.logger.warn('trim round failed', { event: 'cluster.log.trim-failed', clubId: s.club, code: (e as { code?: string }).code ?? (e as Error).name });
        }
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
