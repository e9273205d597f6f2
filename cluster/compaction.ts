/**
 * Periodic compaction of etcd's history (issue 14; docs/CLUSTER.md "Log trimming and snapshots",
 * OPERATIONS.md "etcd size and compaction").
 *
 * Deleting a key (a trimmed log entry, an old head value, a deleted club) leaves its old values
 * in etcd's history until the history is compacted. The placement leader compacts: every member
 * samples the current revision on each round (`sample`); the leader compacts at the newest sample
 * that is at least `retainMs` old (default 5 minutes), so watchers and readers working from a
 * revision younger than that are never cut off. A compaction that finds the revision already
 * compacted (a club delete compacts at once) counts as done.
 *
 * The alternative is etcd's own `--auto-compaction-mode=periodic --auto-compaction-retention=5m`;
 * with that set, turn this off (`compactAfterSec: 0`).
 */
import type { ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';

/** Samples kept at most (one per round; older ones beyond the window are dropped). */
const MAX_SAMPLES = 4096;

export class HistoryCompactor {
  private readonly samples: Array<{ at: number; rev: bigint }> = [];
  private compacted = 0n;
  /** Compactions made by this member (metrics, tests). */
  count = 0;

  constructor(private readonly o: { gw: EtcdGateway; retainMs: number; logger: ClusterLogger }) {}

  /** The revision this member compacted at last ('0' for none). */
  get compactedAt(): string {
    return String(this.compacted);
  }

  /**
   * One round: sample the revision; when `leader`, compact at the newest sample older than the
   * retention window if that is newer than the last compaction. Errors other than "already
   * compacted" pass to the caller (the next round tries again).
   */
  async round(leader: boolean, now = Date.now()): Promise<void> {
    const rev = BigInt(await this.o.gw.revision());
    this.samples.push({ at: now, rev });
    let target: bigint | undefined;
    while (this.samples.length > 1 && this.samples[1]!.at <= now - this.o.retainMs) this.samples.shift();
    if (this.samples[0]!.at <= now - this.o.retainMs) target = this.samples[0]!.rev;
    if (this.samples.length > MAX_SAMPLES) this.samples.splice(0, this.samples.length - MAX_SAMPLES);
    if (!leader || target === undefined || target <= this.compacted) return;
    try {
      await this.o.gw.compact(String(target));
    } catch (e) {
      if (!/compacted/i.test(String((e as Error).message))) throw e;
    }
    this.compacted = target;
    this.count++;
    this.o.logger.info('etcd history compacted', { event: 'cluster.etcd.compacted', revision: String(target) });
  }
}
