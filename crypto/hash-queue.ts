/**
 * The wait in front of the password hasher (scrypt, 128 MiB and about 0.45 s per hash): at most
 * `concurrency` hashes run at once, and the ones waiting are taken ROUND-ROBIN BETWEEN SOURCES
 * (one job of each waiting source in turn), not first come, first served. So a source that
 * queues many hashes delays another source's next hash by at most one hash per other waiting
 * source plus the ones running, however many it queued (issue: one connection could block logins
 * for the whole server). A source may have at most `perSourceQueued` hashes waiting; one more is
 * refused at once (HASH_BUSY; jobs without a source are not capped). A job whose AbortSignal fires while it waits leaves the queue at
 * once (HASH_CANCELLED); one already running finishes (scrypt cannot be stopped) but its result
 * is discarded and the caller gets HASH_CANCELLED, so nothing is counted for it.
 *
 * No I/O and no timers of its own: the hasher is passed in (tests pass a fake one).
 */
import { CryptoError } from './errors.js';

/** Who asks and whether the answer is still wanted. */
export interface HashJobOptions {
  /**
   * The fairness key: the client's source address. Jobs without one (the operator's own work)
   * share the key '' and are not capped by perSourceQueued.
   */
  readonly source?: string | undefined;
  /** Aborted: the job leaves the queue, or its result is discarded if it already runs. */
  readonly signal?: AbortSignal | undefined;
}

interface Job {
  readonly source: string;
  readonly start: () => void;
  readonly fail: (e: unknown) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
}

function cancelled(): CryptoError {
  return new CryptoError('HASH_CANCELLED', 'the password check was cancelled (connection closed or source banned)');
}

export class HashQueue {
  private running = 0;
  /** Waiting jobs per source; the Map's order is the round-robin order (next source first). */
  private readonly waiting = new Map<string, Job[]>();

  /**
   * @param concurrency hashes running at once (each scrypt holds 128 MiB); 0 holds every job.
   * @param perSourceQueued waiting jobs one source may have; more are refused with HASH_BUSY.
   */
  constructor(
    private concurrency: number,
    private perSource: number,
  ) {}

  /** Waiting jobs one source may have; more are refused with HASH_BUSY. */
  get perSourceQueued(): number {
    return this.perSource;
  }

  /** Changes the per-source bound (jobs already waiting stay; new ones are judged by it). */
  setPerSourceQueued(n: number): void {
    if (!Number.isInteger(n) || n < 1) throw new RangeError('per-source bound must be a positive integer');
    this.perSource = n;
  }

  /** Hashes that may run at once. */
  get concurrencyLimit(): number {
    return this.concurrency;
  }

  /** Hashes running now. */
  get active(): number {
    return this.running;
  }

  /** Jobs waiting, of one source or in all. */
  queued(source?: string): number {
    if (source !== undefined) return this.waiting.get(source)?.length ?? 0;
    let n = 0;
    for (const q of this.waiting.values()) n += q.length;
    return n;
  }

  /** Changes how many hashes may run at once (an operator's memory budget; tests hold the queue with 0). */
  setConcurrency(n: number): void {
    if (!Number.isInteger(n) || n < 0) throw new RangeError('concurrency must be a non-negative integer');
    this.concurrency = n;
    this.pump();
  }

  /**
   * Runs `work` when its turn comes. Rejects with CryptoError HASH_BUSY (the source has
   * `perSourceQueued` jobs waiting already) or HASH_CANCELLED (the signal fired before or while
   * it waited, or while it ran: the result is then discarded); otherwise `work`'s result.
   */
  async run<T>(work: () => Promise<T>, opts: HashJobOptions = {}): Promise<T> {
    const { signal } = opts;
    const source = opts.source ?? '';
    if (signal?.aborted) throw cancelled();
    if (this.running >= this.concurrency || this.waiting.size > 0) {
      const q = this.waiting.get(source);
      // Work without a source (the operator's commusicctl, provisioning) is not capped: it is
      // one share of the round-robin like any client address.
      if (opts.source !== undefined && q && q.length >= this.perSourceQueued) throw new CryptoError('HASH_BUSY', 'too many password checks from this address are waiting; retry shortly');
      await new Promise<void>((resolve, reject) => {
        const job: Job = {
          source,
          signal,
          start: () => {
            signal?.removeEventListener('abort', job.onAbort);
            resolve();
          },
          fail: reject,
          onAbort: () => {
            this.remove(job);
            reject(cancelled());
          },
        };
        signal?.addEventListener('abort', job.onAbort, { once: true });
        if (q) q.push(job);
        else this.waiting.set(source, [job]);
      });
      // pump() counted this job as running when it started it.
    } else {
      this.running++;
    }
    try {
      const result = await work();
      if (signal?.aborted) throw cancelled();
      return result;
    } finally {
      this.running--;
      this.pump();
    }
  }

  private remove(job: Job): void {
    const q = this.waiting.get(job.source);
    if (!q) return;
    const i = q.indexOf(job);
    if (i >= 0) q.splice(i, 1);
    if (q.length === 0) this.waiting.delete(job.source);
  }

  /** Starts waiting jobs while there is room: the first job of the next source, which then goes to the back. */
  private pump(): void {
    while (this.running < this.concurrency && this.waiting.size > 0) {
      const [source, q] = this.waiting.entries().next().value as [string, Job[]];
      const job = q.shift()!;
      this.waiting.delete(source);
      if (q.length > 0) this.waiting.set(source, q);
      // Counted as running from now on: its continuation runs a microtask later.
      this.running++;
      job.start();
    }
  }
}
