/**
 * A standby's tail of one club's change log (issue 14, "Warm standbys and takeover").
 *
 * The follower reads every entry from the next sequence number it needs, hands each to `apply` in
 * order (the caller writes it into its encrypted replica), and then watches the club's head key:
 * each move of the head triggers a read of the new entries. The chain is checked on every entry
 * (its `prev` digest must be the digest of the entry applied before it), so a replica never
 * applies an entry out of order, twice, or from another history.
 *
 * Takeover (`takeOver`): after this server has acquired the club (ClubLog.acquire), the follower
 * applies the tail up to the head read at acquisition and checks that the last applied digest is
 * the head's digest; only then may the server serve the club.
 *
 * A follower that needs an entry the primary has already trimmed (it was away too long) fails
 * with LOG_CORRUPT "behind": it must start again from a snapshot.
 */
import { EventEmitter } from 'node:events';
import type { Watcher } from 'etcd3';
import { ClubLog, readEntries, readHead, type ClubLogOptions, type LogEntry, type LogHead } from './club-log.js';
import { ClusterError, silentClusterLogger, type ClusterLogger } from './errors.js';
import { cancelWatcher, createWatch, type EtcdGateway } from './etcd-gateway.js';
import { headKey } from './keys.js';

export interface FollowerPosition {
  /** Last applied sequence number (0: nothing yet). */
  seq: number;
  /** Digest of the last applied entry ('' for none). */
  digest: string;
}

export interface LogFollowerOptions {
  gw: EtcdGateway;
  clubId: string;
  logKey: Uint8Array;
  /** Where the replica stands (from its snapshot, or 0/''). */
  from: FollowerPosition;
  /** Apply one entry to the replica; must be idempotent per sequence number or transactional with the position. */
  apply: (entry: LogEntry) => void | Promise<void>;
  logger?: ClusterLogger;
}

/** Events: 'applied' (FollowerPosition), 'error' (ClusterError: the follower stopped). */
export class LogFollower extends EventEmitter {
  private pos: FollowerPosition;
  private watcher: Watcher | undefined;
  private stopped = false;
  private running: Promise<void> | undefined;
  private again = false;
  private readonly logger: ClusterLogger;
  /** Last head seen in etcd (for the lag figure). */
  lastHeadSeq = 0;

  constructor(private readonly opts: LogFollowerOptions) {
    super();
    this.pos = { ...opts.from };
    this.logger = opts.logger ?? silentClusterLogger;
  }

  get position(): FollowerPosition {
    return { ...this.pos };
  }

  /** Whether the follower stopped (stop(), or it failed): it applies nothing more and must be replaced. */
  get isStopped(): boolean {
    return this.stopped;
  }

  /** Entries the replica is behind the last head it saw. */
  get lag(): number {
    return Math.max(0, this.lastHeadSeq - this.pos.seq);
  }

  /** Catch up once, then follow the head. */
  async start(): Promise<void> {
    const head = await readHead(this.opts.gw, this.opts.clubId);
    this.lastHeadSeq = head.seq;
    await this.catchUp();
    const from = head.modRevision === '0' ? undefined : String(BigInt(head.modRevision) + 1n);
    const b = this.opts.gw.kv.watch().key(headKey(this.opts.clubId));
    const w = await createWatch(this.opts.gw, 'watch log head', () => (from ? b.startRevision(from) : b));
    if (this.stopped) {
      await cancelWatcher(w);
      return;
    }
    this.watcher = w;
    w.on('put', (kv) => {
      try {
        const v = JSON.parse(kv.value.toString('utf8')) as { seq?: unknown };
        if (Number.isSafeInteger(v.seq)) this.lastHeadSeq = Math.max(this.lastHeadSeq, v.seq as number);
      } catch {
        // the read below checks everything
      }
      void this.catchUp().catch((e) => this.fail(e));
    });
    w.on('error', () => {
      // Cancelled by etcd (compaction): the head key is all we watch, so reading again is enough.
      if (this.stopped || this.watcher !== w) return;
      this.watcher = undefined;
      void this.restart();
    });
    // The head may have moved between the read and the watch.
    await this.catchUp();
  }

  private async restart(): Promise<void> {
    for (let delay = 50; !this.stopped; delay = Math.min(delay * 2, 1000)) {
      try {
        await this.start();
        return;
      } catch {
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  /** Read and apply every entry after the current position (serialised; concurrent calls coalesce). */
  catchUp(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          for (;;) {
            if (this.stopped) return;
            const entries = await readEntries(this.opts.gw, this.opts.clubId, this.opts.logKey, this.pos.seq + 1, {
              limit: 256,
              ...(this.pos.seq > 0 ? { prevDigest: this.pos.digest } : {}),
            }).catch((e) => {
              if (e instanceof ClusterError && e.code === 'LOG_CORRUPT' && /gap at/.test(e.message)) {
                throw new ClusterError('LOG_CORRUPT', `replica of club ${this.opts.clubId} is behind the trimmed log (needs a snapshot)`, { cause: e });
              }
              throw e;
            });
            if (entries.length === 0) break;
            for (const e of entries) {
              await this.opts.apply(e);
              this.pos = { seq: e.seq, digest: e.digest };
              this.lastHeadSeq = Math.max(this.lastHeadSeq, e.seq);
              this.emit('applied', this.position);
            }
          }
        } while (this.again);
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const w = this.watcher;
    this.watcher = undefined;
    if (w) await cancelWatcher(w);
    if (this.running) await this.running.catch(() => undefined);
  }

  private fail(e: unknown): void {
    const err = e instanceof ClusterError ? e : new ClusterError('ETCD_UNAVAILABLE', `follower of club ${this.opts.clubId} failed`, { cause: e });
    this.logger.warn('log follower stopped', { event: 'cluster.follower.failed', clubId: this.opts.clubId, code: err.code });
    void this.stop();
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }
}

/**
 * Take a club over: acquire its owner key under this server's lease, apply the tail up to the
 * head, and check that the replica's last digest is the head's digest.
 * @returns the ClubLog to append through; the follower is stopped.
 * @throws ClusterError NOT_OWNER (another server was faster), LOG_CORRUPT (the replica does not
 *   reach the head: it must not serve), ETCD_UNAVAILABLE.
 */
export async function takeOver(follower: LogFollower, logOpts: ClubLogOptions): Promise<{ log: ClubLog; head: LogHead }> {
  const log = await ClubLog.acquire(logOpts);
  try {
    await follower.catchUp();
    await follower.stop();
    const head = log.head;
    const pos = follower.position;
    if (pos.seq !== head.seq || pos.digest !== head.digest) {
      throw new ClusterError('LOG_CORRUPT', `club ${logOpts.clubId}: replica at ${pos.seq} does not match the log head ${head.seq}`);
    }
    return { log, head };
  } catch (e) {
    await log.release().catch(() => undefined);
    throw e;
  }
}
