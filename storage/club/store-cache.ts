/**
 * The cache of open club stores: a bounded number of open stores (W-TinyLFU-style admission with a
 * frequency sketch), opened on demand and closed when evicted.
 */
import { StorageError, type StorageLogger, silentLogger } from '../engine/errors.js';
import { ClubStore, openClubStore } from './club-store.js';

/** What the cache needs to open a club: supplied by the storage context from the server db. */
export interface ClubOpenInfo {
  keys: Array<{ key: Buffer; version: number }>;
  create: boolean;
  /** Called once right after a lazily created store got its schema (e.g. insert the admin). */
  afterCreate?: (store: ClubStore) => void;
  /** Called after every open (after afterCreate), e.g. to set per-connection hooks. */
  afterOpen?: (store: ClubStore) => void;
}

export interface ClubStoreCacheOptions {
  dataDir: string;
  maxOpen: number;
  resolve: (clubId: string) => ClubOpenInfo;
  logger?: StorageLogger;
  /**
   * Runs a deferred close later, off the request that caused it (default: setImmediate). Tests
   * pass a function that queues and call `flushClosing()` themselves.
   */
  defer?: (fn: () => void) => void;
}

/** Counters of a store cache since it was created (read by /metrics and `commusicctl status`). */
export interface StoreCacheStats {
  /** get() calls answered by an open store. */
  hits: number;
  /** get() calls that had to open the store. */
  misses: number;
  /** Stores opened (equals misses, plus nothing else: every open is for a get()). */
  opens: number;
  /** Stores closed to make room: the window's or main segment's victim, or a refused newcomer. */
  evictions: number;
  /** Of the evictions, newcomers the admission filter kept out (they were less used than the victim). */
  rejected: number;
  /** Closes that failed (logged at warn; the store is dropped either way). */
  closeErrors: number;
}

/**
 * A frequency sketch for admission, after TinyLFU (Einziger, Friedman, Manes: "TinyLFU: A Highly
 * Efficient Cache Admission Policy", ACM Transactions on Storage 13(4), 2017, section 3.3): count
 * every access, and after `sampleSize` accesses halve all counts ("reset"), so the counts follow
 * recent popularity. Exact counts in a Map instead of a count-min sketch: the keys are club ids,
 * bounded by the clubs on the server, and the reset drops every key whose count reaches zero, so
 * the map holds at most about `sampleSize` keys.
 */
export class FrequencySketch {
  readonly sampleSize: number;
  readonly #counts = new Map<string, number>();
  #additions = 0;

  constructor(sampleSize: number) {
    this.sampleSize = Math.max(16, Math.floor(sampleSize));
  }

  /** Count one access of `key`. */
  increment(key: string): void {
    this.#counts.set(key, Math.min(15, (this.#counts.get(key) ?? 0) + 1));
    if (++this.#additions >= this.sampleSize) this.#reset();
  }

  /** The (aged) access count of `key`, 0..15 (4-bit counters as in the paper). */
  frequency(key: string): number {
    return this.#counts.get(key) ?? 0;
  }

  get size(): number {
    return this.#counts.size;
  }

  #reset(): void {
    this.#additions = 0;
    for (const [k, n] of this.#counts) {
      const h = n >> 1;
      if (h === 0) this.#counts.delete(k);
      else this.#counts.set(k, h);
    }
  }
}

/**
 * Accesses between two sketch resets: 10x the cache size as in the paper, but at least 4,096, so
 * that a round robin over many more clubs than the cache holds still counts each club more than
 * once before the counts are halved (otherwise every count is 0 or 1 and admission is a coin toss).
 */
export function sketchSample(maxOpen: number): number {
  return Math.max(10 * maxOpen, 4096);
}

/**
 * Most evicted stores waiting for their deferred close: a quarter of the cache, at most 64
 * (their descriptors, 3 each, fit in the daemon's FD_RESERVE of 256, daemon/main/store-sizing.ts).
 */
export function closingCap(maxOpen: number): number {
  return Math.min(64, Math.max(1, Math.ceil(maxOpen / 4)));
}

/** Share of the cache given to the admission window, as in W-TinyLFU (Caffeine's default 1%). */
export const WINDOW_SHARE = 0.01;

/**
 * The open club stores, at most `maxOpen` at once, under W-TinyLFU (the TinyLFU paper above,
 * section 4; the policy of Caffeine): a newcomer enters a small LRU window; when the window is
 * full its oldest store competes with the main segment's least recently used store, and stays
 * only if the sketch counts it as used more often. The main segment is plain LRU.
 *
 * Why not plain LRU: under round-robin use of more clubs than `maxOpen` (a federation's clubs all
 * busy at once), LRU always evicts the store needed next and never hits; W-TinyLFU keeps a
 * stable set and hits about maxOpen/N of the time, and one pass over all clubs (a backup, a
 * scan) does not flush the stores the busy clubs use.
 *
 * Evicted stores are closed off the request path (`defer`, default setImmediate), so the
 * request that caused a miss pays for its own open only, and a store handed out by get() stays
 * usable until the current synchronous run ends. A get() for a store still waiting to be closed
 * takes it back (a hit). Explicit evict()/lock()/closeAll() close at once.
 */
export class ClubStoreCache {
  #maxOpen: number;
  readonly #dataDir: string;
  readonly #resolve: (clubId: string) => ClubOpenInfo;
  readonly #log: StorageLogger;
  readonly #defer: (fn: () => void) => void;
  /** Admission window, insertion order = recency order (re-inserted on every hit). */
  readonly #window = new Map<string, ClubStore>();
  /** Main segment, insertion order = recency order. */
  readonly #main = new Map<string, ClubStore>();
  /** Evicted, waiting for the deferred close. */
  readonly #closing = new Map<string, ClubStore>();
  readonly #locked = new Set<string>();
  #sketch: FrequencySketch;
  #flushScheduled = false;
  #closed = false;
  readonly stats: StoreCacheStats = { hits: 0, misses: 0, opens: 0, evictions: 0, rejected: 0, closeErrors: 0 };

  constructor(o: ClubStoreCacheOptions) {
    if (!(Number.isInteger(o.maxOpen) && o.maxOpen >= 1)) throw new StorageError('INVALID_ARGUMENT', 'maxOpen must be an integer of at least 1');
    this.#maxOpen = o.maxOpen;
    this.#dataDir = o.dataDir;
    this.#resolve = o.resolve;
    this.#log = o.logger ?? silentLogger;
    this.#defer = o.defer ?? ((fn) => setImmediate(fn));
    this.#sketch = new FrequencySketch(sketchSample(o.maxOpen));
  }

  /** The most stores kept open at once. */
  get maxOpen(): number {
    return this.#maxOpen;
  }

  /** Stores open now (kept in the cache; stores waiting for their deferred close not counted). */
  get size(): number {
    return this.#window.size + this.#main.size;
  }

  /** Stores evicted and waiting for their deferred close. */
  get closingCount(): number {
    return this.#closing.size;
  }

  /** hits / (hits + misses) since start; null before the first get(). */
  get hitRatio(): number | null {
    const n = this.stats.hits + this.stats.misses;
    return n === 0 ? null : this.stats.hits / n;
  }

  #windowCap(): number {
    return Math.max(1, Math.ceil(this.#maxOpen * WINDOW_SHARE));
  }

  isOpen(clubId: string): boolean {
    return this.#window.has(clubId) || this.#main.has(clubId) || this.#closing.has(clubId);
  }

  get(clubId: string): ClubStore {
    if (this.#closed) throw new StorageError('STORE_BUSY', 'store cache is closed (server shutting down)');
    if (this.#locked.has(clubId)) throw new StorageError('STORE_BUSY', `club ${clubId} is being maintained (key rotation or deletion); retry shortly`);
    this.#sketch.increment(clubId);
    for (const seg of [this.#main, this.#window]) {
      const hit = seg.get(clubId);
      if (hit) {
        seg.delete(clubId);
        seg.set(clubId, hit);
        this.stats.hits++;
        return hit;
      }
    }
    const rescued = this.#closing.get(clubId);
    if (rescued) {
      this.#closing.delete(clubId);
      this.stats.hits++;
      this.#admit(clubId, rescued);
      return rescued;
    }
    this.stats.misses++;
    const info = this.#resolve(clubId);
    try {
      const store = openClubStore({ dataDir: this.#dataDir, clubId, keys: info.keys, create: info.create });
      this.stats.opens++;
      if (info.create && info.afterCreate) {
        try {
          info.afterCreate(store);
        } catch (e) {
          store.close();
          throw e;
        }
      }
      if (info.afterOpen) {
        try {
          info.afterOpen(store);
        } catch (e) {
          store.close();
          throw e;
        }
      }
      this.#admit(clubId, store);
      return store;
    } finally {
      for (const k of info.keys) k.key.fill(0);
    }
  }

  /** Put a newcomer into the window; settle the window's overflow against the main segment. */
  #admit(clubId: string, store: ClubStore): void {
    this.#window.set(clubId, store);
    while (this.#window.size > this.#windowCap()) {
      const [candId, cand] = this.#window.entries().next().value as [string, ClubStore];
      this.#window.delete(candId);
      const mainCap = this.#maxOpen - this.#windowCap();
      if (this.#main.size < mainCap) {
        this.#main.set(candId, cand);
        continue;
      }
      if (mainCap <= 0) {
        this.#retire(candId, cand, false);
        continue;
      }
      const [victimId, victim] = this.#main.entries().next().value as [string, ClubStore];
      if (this.#sketch.frequency(candId) > this.#sketch.frequency(victimId)) {
        this.#main.delete(victimId);
        this.#main.set(candId, cand);
        this.#retire(victimId, victim, false);
      } else {
        this.#retire(candId, cand, true);
      }
    }
    // A lowered limit (setMaxOpen) drains the main segment down to its new share.
    while (this.#main.size > Math.max(0, this.#maxOpen - this.#windowCap())) {
      const [victimId, victim] = this.#main.entries().next().value as [string, ClubStore];
      this.#main.delete(victimId);
      this.#retire(victimId, victim, false);
    }
  }

  /** Queue an evicted store for the deferred close. */
  #retire(clubId: string, store: ClubStore, rejected: boolean): void {
    this.stats.evictions++;
    if (rejected) this.stats.rejected++;
    const earlier = this.#closing.get(clubId);
    if (earlier && earlier !== store) this.#closeQuietly(clubId, earlier);
    this.#closing.set(clubId, store);
    // Bounded: past the cap the oldest waiting store is closed now, so open files stay within
    // maxOpen + closingCap(maxOpen) stores however many misses one synchronous run has.
    while (this.#closing.size > closingCap(this.#maxOpen)) {
      const [oldId, old] = this.#closing.entries().next().value as [string, ClubStore];
      this.#closing.delete(oldId);
      this.#closeQuietly(oldId, old);
    }
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      this.#defer(() => this.flushClosing());
    }
  }

  /** Close every store waiting for its deferred close (the deferred task; tests call it too). */
  flushClosing(): void {
    this.#flushScheduled = false;
    for (const [id, s] of this.#closing) this.#closeQuietly(id, s);
    this.#closing.clear();
  }

  #closeQuietly(clubId: string, s: ClubStore): void {
    try {
      s.close();
    } catch (e) {
      this.stats.closeErrors++;
      this.#log.warn('club store close failed', { clubId, error: (e as { code?: string }).code ?? (e as Error)?.name });
    }
  }

  /**
   * Change the limit (the daemon's `storeCache.maxOpen` on reload). A lower limit closes the
   * least recently used stores on the next miss; the sketch is sized for the new limit.
   */
  setMaxOpen(n: number): void {
    if (!(Number.isInteger(n) && n >= 1)) throw new StorageError('INVALID_ARGUMENT', 'maxOpen must be an integer of at least 1');
    this.#maxOpen = n;
    this.#sketch = new FrequencySketch(sketchSample(n));
  }

  /** Close a club's store if open (before rotation, deletion, or to drop a suspended club). */
  evict(clubId: string): void {
    for (const seg of [this.#window, this.#main, this.#closing]) {
      const s = seg.get(clubId);
      if (s) {
        seg.delete(clubId);
        s.close();
      }
    }
  }

  /** Whether the club is locked for maintenance (lock()): `get()` refuses it with STORE_BUSY. */
  isLocked(clubId: string): boolean {
    return this.#locked.has(clubId);
  }

  /** Close the store and refuse `get()` for it until the returned release is called. */
  lock(clubId: string): () => void {
    if (this.#locked.has(clubId)) throw new StorageError('STORE_BUSY', `club ${clubId} is already being maintained`);
    this.evict(clubId);
    this.#locked.add(clubId);
    return () => {
      this.#locked.delete(clubId);
    };
  }

  closeAll(): void {
    for (const seg of [this.#window, this.#main, this.#closing]) {
      for (const s of seg.values()) s.close();
      seg.clear();
    }
    this.#closed = true;
  }
}
