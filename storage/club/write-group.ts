/**
 * Group commit for one club store (issue 13): writes that arrive from several connections in the
 * same turn of the event loop are applied in one SQLite transaction and made durable by one
 * commit (one WAL fsync under synchronous=FULL) instead of one each.
 *
 * How a group forms. better-sqlite3 is synchronous, so a commit blocks the event loop for its
 * fsync; requests that arrive meanwhile wait in the socket buffers and are all read in the next
 * I/O phase. `run(work)` queues the work and, if no commit is scheduled, schedules one with
 * `setImmediate`: that runs right after the current I/O phase, so a write that is alone is
 * committed at once (no timer, no added wait), and every write read in the same phase joins it.
 * Bounds: at most `maxGroup` writes per transaction (the rest form the next group, one turn
 * later, so other connections' I/O runs in between) and at most `maxQueued` waiting (past it
 * `run` refuses with STORE_BUSY).
 *
 * Isolation inside a group: each work runs in a SAVEPOINT of its own. A work that throws is
 * rolled back to its savepoint, its change-log entries and signed heads included, and its promise
 * rejects with its own error; the others are unaffected. The change log's hash chain stays
 * valid and in commit order: `AuditLog.append` reads the chain head inside the transaction, so
 * each work chains onto what the works before it left. If SQLite rolled the whole transaction
 * back (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM can), or COMMIT fails, every work of the group
 * that was not yet answered is refused with that error: nothing of them is durable.
 *
 * Answers: every promise settles only after the group's COMMIT returned, i.e. after the WAL
 * fsync: an acknowledged write is durable, as with one transaction per write.
 *
 * What a work sees: works run in arrival order, after the I/O phase that queued them, on the
 * group's connection; a work must be synchronous (its effect belongs to this transaction) and
 * must use this store's connection only. Reads by other requests between the queueing and the
 * commit see the state before the group (nothing uncommitted is ever visible to them).
 *
 * `flush()` applies and commits everything queued now; `ClubStore.close()` calls it before
 * closing, so an evicted or locked store never drops a queued write.
 */
import { StorageError } from '../engine/errors.js';
import type { Db } from '../engine/sqlcipher.js';

/** Most writes applied in one transaction. */
export const MAX_GROUP = 64;
/** Most writes waiting for a group at once, per store; past it `run` refuses with STORE_BUSY. */
export const MAX_QUEUED = 4096;

export interface WriteGroupOptions {
  maxGroup?: number;
  maxQueued?: number;
  /** Schedules the commit after the current I/O phase (default setImmediate; tests may pass their own). */
  schedule?: (fn: () => void) => void;
}

/** Counters since the group was created (tests, monitoring). */
export interface WriteGroupStats {
  /** Transactions committed (or attempted) by `flush`. */
  groups: number;
  /** Works that committed. */
  committed: number;
  /** Works refused (their own error, or the group's failed commit). */
  failed: number;
  /** Most works in one transaction so far. */
  largest: number;
}

interface Pending {
  settled: boolean;
  work: () => unknown;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

interface Statements {
  begin: { run(): unknown };
  commit: { run(): unknown };
  rollback: { run(): unknown };
  savepoint: { run(): unknown };
  release: { run(): unknown };
  rollbackTo: { run(): unknown };
}

export class WriteGroup {
  readonly stats: WriteGroupStats = { groups: 0, committed: 0, failed: 0, largest: 0 };
  readonly #db: Db;
  readonly #maxGroup: number;
  readonly #maxQueued: number;
  readonly #schedule: (fn: () => void) => void;
  #queue: Pending[] = [];
  #scheduled = false;
  #stmts: Statements | undefined;

  constructor(db: Db, o: WriteGroupOptions = {}) {
    this.#db = db;
    this.#maxGroup = Math.max(1, o.maxGroup ?? MAX_GROUP);
    this.#maxQueued = Math.max(1, o.maxQueued ?? MAX_QUEUED);
    this.#schedule = o.schedule ?? ((fn) => void setImmediate(fn));
  }

  /** Writes waiting for their group. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Queue `work` (synchronous, on this store's connection) for the next group; resolves with its
   * result once the group's commit is durable, rejects with its own error (rolled back alone) or
   * with the group's commit error.
   * @throws (rejects) StorageError STORE_BUSY when `maxQueued` writes are waiting already.
   */
  run<T>(work: () => T): Promise<T> {
    if (this.#queue.length >= this.#maxQueued) return Promise.reject(new StorageError('STORE_BUSY', 'too many writes waiting for this club store; retry shortly'));
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ settled: false, work, resolve: resolve as (v: unknown) => void, reject });
      this.#arm();
    });
  }

  /** Apply and commit every write queued now, group after group (ClubStore.close calls it). */
  flush(): void {
    while (this.#queue.length > 0) this.#commitNext();
  }

  #arm(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    this.#schedule(() => {
      this.#scheduled = false;
      this.#commitNext();
      if (this.#queue.length > 0) this.#arm();
    });
  }

  #statements(): Statements {
    const db = this.#db;
    this.#stmts ??= {
      begin: db.prepare('BEGIN IMMEDIATE'),
      commit: db.prepare('COMMIT'),
      rollback: db.prepare('ROLLBACK'),
      savepoint: db.prepare('SAVEPOINT write_group'),
      release: db.prepare('RELEASE write_group'),
      rollbackTo: db.prepare('ROLLBACK TO write_group'),
    };
    return this.#stmts;
  }

  /** One transaction over the next at most maxGroup queued works. */
  #commitNext(): void {
    const batch = this.#queue.length <= this.#maxGroup ? this.#queue : this.#queue.slice(0, this.#maxGroup);
    this.#queue = batch === this.#queue ? [] : this.#queue.slice(batch.length);
    if (batch.length === 0) return;
    const db = this.#db;
    if (!db.open || db.inTransaction) {
      // Closed under us, or called from inside someone's transaction (whose fate we cannot
      // promise): refuse rather than write outside the promised durability.
      this.#fail(batch, new StorageError('STORE_BUSY', 'the club store is not available for writing right now; retry shortly'));
      return;
    }
    this.stats.groups++;
    // Works applied in the open transaction, answered only once it committed.
    let applied: Array<{ p: Pending; value: unknown }> = [];
    try {
      const s = this.#statements();
      for (const p of batch) {
        if (!db.inTransaction) {
          // First work, or an earlier work's error made SQLite roll the whole transaction back
          // (the works applied before it were refused with that error): start again.
          s.begin.run();
        }
        s.savepoint.run();
        try {
          const value = p.work();
          if (value !== null && typeof value === 'object' && typeof (value as { then?: unknown }).then === 'function') {
            throw new StorageError('INVALID_ARGUMENT', 'a grouped write must be synchronous');
          }
          s.release.run();
          applied.push({ p, value });
        } catch (e) {
          if (db.inTransaction) {
            s.rollbackTo.run();
            s.release.run();
          } else {
            this.#fail(applied.map((a) => a.p), e);
            applied = [];
          }
          this.#fail([p], e);
        }
      }
      if (db.inTransaction) s.commit.run();
    } catch (e) {
      // BEGIN, a savepoint statement or COMMIT failed: nothing of this group is durable.
      if (db.open && db.inTransaction) {
        try {
          this.#statements().rollback.run();
        } catch {
          // The connection refuses even the rollback; closing it discards the transaction.
        }
      }
      this.#fail(applied.map((a) => a.p), e);
      for (const p of batch) if (!p.settled) this.#fail([p], e);
      return;
    }
    this.stats.committed += applied.length;
    if (applied.length > this.stats.largest) this.stats.largest = applied.length;
    for (const a of applied) {
      a.p.settled = true;
      a.p.resolve(a.value);
    }
  }

  #fail(ps: readonly Pending[], e: unknown): void {
    for (const p of ps) {
      if (p.settled) continue;
      p.settled = true;
      this.stats.failed++;
      p.reject(e);
    }
  }
}
