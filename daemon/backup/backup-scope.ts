/**
 * What a backup run covers on this server. A single server archives every club it holds; in a
 * cluster (daemon/backup/cluster-backups.ts) only the club's primary archives it, once per
 * scheduled time, with the schedule state shared by all members (docs/CLUSTER.md "Backups").
 */
import type { ClubRunResult } from './backup-settings.js';

export interface BackupScope {
  /** How often a scheduled check for due clubs runs (ms); it replaces the single server's catch-up. */
  readonly checkEveryMs: number;
  /**
   * Scheduled run: the clubs this server must archive now, each with the destinations due there
   * (no archive stored since the last scheduled time, and no failure there within `retryAfterMs`).
   */
  due(now: Date, retryAfterMs: number): Array<{ clubId: string; dests: string[] }>;
  /** A run without a club list (`backup run --all`): the clubs this server archives. */
  mine(clubs: readonly string[]): string[];
  /**
   * A manual run or an in-place restore of one club on this server.
   * @throws BackupError NOT_PRIMARY naming the member that does it.
   */
  check(clubId: string, what: 'run' | 'restore'): void;
  /** Before a club is archived: its archive key becomes the one all servers share. */
  prepare(clubId: string): Promise<void>;
  /** After a club was archived: where it was stored and where it failed (time in ms). */
  stored(result: ClubRunResult, t: number): Promise<void>;
  /** Take the shared archive keys into this server's database (before verifying or restoring). */
  syncKeys(): void;
  /** After `keys rotate-archive` here: share the new keyring (the other servers adopt it). */
  keysRotated(): Promise<void>;
  /** After `keys forget-archive-keys` here: the forgotten keys leave the shared keyring and every server. */
  keysForgotten(): Promise<void>;
}
