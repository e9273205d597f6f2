import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { DaemonStats } from '../edge/server.js';

/**
 * Prometheus metrics of one daemon, in a registry of its own (never prom-client's global one, so
 * tests and several daemons in one process do not mix). Every figure is read at scrape time in a
 * collect() callback from the Daemon's counters and from providers; the connection hot path
 * stays untouched.
 */
export type KeyWatchState = 'ok' | 'alarm' | 'off';
export const KEY_WATCH_STATES: readonly KeyWatchState[] = ['ok', 'alarm', 'off'];

/** What the metrics read; everything but the daemon figures is optional. */
export interface MetricsSources {
  readonly daemon: {
    readonly stats: DaemonStats;
    readonly connectionCount: number;
    readonly pendingHandshakes: number;
    readonly preLoginSessions?: number;
    readonly startedAt: number;
  };
  readonly activeBans?: () => number;
  readonly openStores?: () => number;
  /** Club store cache figures (storage/club/store-cache.ts ClubStoreCache). */
  readonly storeCache?: () => StoreCacheFigures;
  readonly outboxLength?: () => number;
  readonly keyWatchState?: () => KeyWatchState;
  /** Last successful backup per destination, ms since the epoch. */
  readonly lastBackups?: () => Iterable<[destination: string, time: number]>;
}

/** The store cache's limit and counters since start, as /metrics and `status` show them. */
export interface StoreCacheFigures {
  readonly open: number;
  readonly limit: number;
  readonly hits: number;
  readonly misses: number;
  readonly opens: number;
  readonly evictions: number;
  /** Of the evictions: newcomers the admission filter closed again (used less than the victim). */
  readonly rejected: number;
}

export interface DaemonMetrics {
  readonly registry: Registry;
  /** Record a successful backup (for code that has no provider to offer). */
  setLastBackup(destination: string, timeMs: number): void;
  /** The exposition text and its content type. */
  render(): Promise<{ body: string; contentType: string }>;
}

export const METRIC_PREFIX = 'commusic_';

export function createDaemonMetrics(src: MetricsSources, opts: { defaultMetrics?: boolean } = {}): DaemonMetrics {
  const registry = new Registry();
  const p = METRIC_PREFIX;
  const d = src.daemon;
  const registers = [registry];

  new Gauge({
    name: `${p}start_time_seconds`,
    help: 'Start time of the daemon since the Unix epoch, in seconds.',
    registers,
    collect() {
      this.set(d.startedAt / 1000);
    },
  });
  new Gauge({
    name: `${p}connections`,
    help: 'Client connections open now (handshaking or established).',
    registers,
    collect() {
      this.set(d.connectionCount);
    },
  });
  new Gauge({
    name: `${p}pending_handshakes`,
    help: 'Connections whose handshake has not completed yet.',
    registers,
    collect() {
      this.set(d.pendingHandshakes);
    },
  });
  new Gauge({
    name: `${p}sessions`,
    help: 'Established encrypted client sessions open now.',
    registers,
    collect() {
      this.set(Math.max(0, d.connectionCount - d.pendingHandshakes));
    },
  });
  new Gauge({
    name: `${p}prelogin_sessions`,
    help: 'Established sessions in which nobody has logged in yet.',
    registers,
    collect() {
      this.set(d.preLoginSessions ?? 0);
    },
  });
  new Counter({
    name: `${p}connections_evicted_total`,
    help: 'Slots (pending handshake or pre-login session) taken from the source holding the most for a lighter newcomer.',
    registers,
    collect() {
      setCounter(this, d.stats.evicted);
    },
  });
  new Counter({
    name: `${p}connections_accepted_total`,
    help: 'Connections admitted by the listener.',
    registers,
    collect() {
      setCounter(this, d.stats.accepted);
    },
  });
  new Counter({
    name: `${p}connections_refused_total`,
    help: 'Connections refused on accept, by reason (banned address or admission limit).',
    labelNames: ['reason'] as const,
    registers,
    collect() {
      this.reset();
      this.inc({ reason: 'banned' }, d.stats.refusedBanned);
      this.inc({ reason: 'limit' }, d.stats.refusedLimit);
    },
  });
  new Counter({
    name: `${p}handshakes_total`,
    help: 'Handshakes by stage: "hello" started (ClientHello received), "established" completed, "dropped_after_hello_in_rollover" ended by the client right after the ServerHello during an identity key rollover (not counted as a violation).',
    labelNames: ['stage'] as const,
    registers,
    collect() {
      this.reset();
      this.inc({ stage: 'hello' }, d.stats.hellos);
      this.inc({ stage: 'established' }, d.stats.established);
      this.inc({ stage: 'dropped_after_hello_in_rollover' }, d.stats.helloDropsTolerated);
    },
  });
  new Counter({
    name: `${p}requests_total`,
    help: 'Requests handled, by command and result code.',
    labelNames: ['command', 'result'] as const,
    registers,
    collect() {
      this.reset();
      for (const [key, n] of d.stats.requests) {
        const i = key.lastIndexOf(':');
        this.inc({ command: key.slice(0, i), result: key.slice(i + 1) }, n);
      }
    },
  });
  new Counter({
    name: `${p}violations_total`,
    help: 'Unauthorised access (not our client, or beyond the rights), by kind.',
    labelNames: ['kind'] as const,
    registers,
    collect() {
      this.reset();
      for (const [kind, n] of d.stats.violations) this.inc({ kind }, n);
    },
  });
  if (src.activeBans) {
    const f = src.activeBans;
    new Gauge({ name: `${p}active_bans`, help: 'Addresses and ranges banned now.', registers, collect() { this.set(f()); } });
  }
  if (src.openStores) {
    const f = src.openStores;
    new Gauge({ name: `${p}open_club_stores`, help: 'Club stores open (decrypted in memory) now.', registers, collect() { this.set(f()); } });
  }
  if (src.storeCache) {
    const f = src.storeCache;
    new Gauge({ name: `${p}store_cache_limit`, help: 'Most club stores kept open at once (storeCache.maxOpen, or what auto chose).', registers, collect() { this.set(f().limit); } });
    new Counter({
      name: `${p}store_cache_lookups_total`,
      help: 'Club store lookups: "hit" found the store open, "miss" had to open it.',
      labelNames: ['result'] as const,
      registers,
      collect() {
        const c = f();
        this.reset();
        this.inc({ result: 'hit' }, c.hits);
        this.inc({ result: 'miss' }, c.misses);
      },
    });
    new Gauge({
      name: `${p}store_cache_hit_ratio`,
      help: 'Share of club store lookups that found the store open, since start (0..1; 1 before the first lookup).',
      registers,
      collect() {
        const c = f();
        this.set(c.hits + c.misses === 0 ? 1 : c.hits / (c.hits + c.misses));
      },
    });
    new Counter({ name: `${p}store_opens_total`, help: 'Club stores opened (each costs about 1-5 ms CPU).', registers, collect() { setCounter(this, f().opens); } });
    new Counter({
      name: `${p}store_evictions_total`,
      help: 'Club stores closed to make room, by reason: "victim" (least recently used of the cache) or "refused" (a newcomer used less often than the victim, closed again).',
      labelNames: ['reason'] as const,
      registers,
      collect() {
        const c = f();
        this.reset();
        this.inc({ reason: 'victim' }, c.evictions - c.rejected);
        this.inc({ reason: 'refused' }, c.rejected);
      },
    });
  }
  if (src.outboxLength) {
    const f = src.outboxLength;
    new Gauge({ name: `${p}mail_outbox_length`, help: 'Alert mails waiting for delivery.', registers, collect() { this.set(f()); } });
  }
  if (src.keyWatchState) {
    const f = src.keyWatchState;
    new Gauge({
      name: `${p}key_file_watch_state`,
      help: 'Key-file watch: 1 for the current state (ok = watching, nothing seen; alarm = access or change seen; off = not watching).',
      labelNames: ['state'] as const,
      registers,
      collect() {
        const s = f();
        for (const state of KEY_WATCH_STATES) this.set({ state }, state === s ? 1 : 0);
      },
    });
  }
  const recorded = new Map<string, number>();
  const provider = src.lastBackups;
  new Gauge({
    name: `${p}backup_last_success_timestamp_seconds`,
    help: 'Time of the last successful backup per destination, seconds since the Unix epoch.',
    labelNames: ['destination'] as const,
    registers,
    collect() {
      const all = new Map(recorded);
      if (provider) for (const [dest, t] of provider()) all.set(dest, Math.max(t, all.get(dest) ?? 0));
      this.reset();
      for (const [destination, t] of all) this.set({ destination }, t / 1000);
    },
  });
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: p });

  return {
    registry,
    setLastBackup(destination, timeMs) {
      recorded.set(destination, Math.max(timeMs, recorded.get(destination) ?? 0));
    },
    async render() {
      return { body: await registry.metrics(), contentType: registry.contentType };
    },
  };
}

function setCounter(c: Counter, value: number): void {
  c.reset();
  c.inc(value);
}
