/** What the fuzzer (bench/fuzz-engine.ts) and its target process (bench/fuzz-target.ts) share. */
export const FUZZ_ADMIN = 'admin';
export const FUZZ_PASSWORD = 'Fuzz-Admin-Password-1';

export type ToTarget = { type: 'mem' | 'stats' | 'exit'; seq: number; gc?: boolean } | { type: 'banned'; seq: number; ip: string };

export interface TargetStats {
  violations: Record<string, number>;
  refusedBanned: number;
  established: number;
  bans: number;
  /** Requests by result (ok or an error code). */
  results: Record<string, number>;
  /** Violations by kind and detail. */
  details: Record<string, number>;
}

/**
 * The daemon's own counts of what it holds, read with each memory sample: a structure that grows
 * with the frames sent (rather than with what the fuzzer legitimately created) shows here.
 */
export interface TargetCounts {
  /** Club stores open in the store cache, and its bound (`storeCache.maxOpen`). */
  storesOpen: number;
  storesMax: number;
  /** Clubs hosted (rows in server.db). */
  clubs: number;
  /** TCP connections the daemon holds, pending handshakes, established sessions not logged in. */
  connections: number;
  pendingHandshakes: number;
  preLoginSessions: number;
  /** Bans in memory (active or expired, not yet purged) and sources the ban engine tracks. */
  bans: number;
  trackedSources: number;
  /** Alert mails in the outbox and violations gathered for the next digest. */
  outbox: number;
  gathered: number;
  /** Keys of the daemon's request and violation counters (bounded label sets). */
  requestKeys: number;
  violationKeys: number;
  /** Keys of the fuzz target's own violation-detail tally (bench/fuzz-target.ts). */
  detailKeys: number;
}

/** One memory sample of the target, bytes (process.memoryUsage plus /proc/self/status on Linux). */
export interface TargetMem {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  /** RssAnon / RssFile of /proc/self/status (0 where not available). */
  rssAnon: number;
  rssFile: number;
  /** MALLOC_ARENA_MAX in the target's environment ('' when unset). */
  mallocArenaMax: string;
  counts?: TargetCounts;
}

export type FromTarget =
  | { type: 'ready'; port: number; fingerprint: string; club: string }
  | { type: 'reply'; seq: number; rss?: number; heapUsed?: number; external?: number; mem?: TargetMem; banned?: boolean; stats?: TargetStats };
