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

export type FromTarget =
  | { type: 'ready'; port: number; fingerprint: string; club: string }
  | { type: 'reply'; seq: number; rss?: number; heapUsed?: number; external?: number; banned?: boolean; stats?: TargetStats };
