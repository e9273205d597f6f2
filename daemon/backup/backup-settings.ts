/**
 * The backup configuration (destinations, schedule, retention, mail limit), the reports of a run and
 * of the club mail, and the small helpers they share.
 */
import type { SnapshotPool } from '../../storage/backup/snapshot-pool.js';
import { z } from 'zod';
import type { Storage } from '../../storage/server/storage.js';
import { DurationSchema } from '../bans/ban-policy.js';
import { DestinationSchema, type BackupDestination } from './backup-destinations.js';
import { type Logger } from '../common/log.js';
import type { AlertMailer } from '../mail/mailer.js';

export const RetentionSchema = z
  .object({
    last: z.number().int().min(0).max(1000).default(0),
    daily: z.number().int().min(0).max(3660).default(7),
    weekly: z.number().int().min(0).max(520).default(4),
    monthly: z.number().int().min(0).max(1200).default(12),
    yearly: z.number().int().min(0).max(100).default(0),
  })
  .strict()
  .refine((r) => r.last + r.daily + r.weekly + r.monthly + r.yearly > 0, { message: 'retention must keep at least one archive' });
export type Retention = z.output<typeof RetentionSchema>;

export const BackupConfigSchema = z
  .object({
    /** Run nightly (the operator commands work either way). */
    enabled: z.boolean().default(true),
    /** Relative local paths are inside the data folder. Embedded default: <data>/backups. */
    destinations: z
      .array(DestinationSchema)
      .min(1)
      .default([{ name: 'local', kind: 'local', path: 'backups' }])
      .refine((ds) => new Set(ds.map((d) => d.name)).size === ds.length, { message: 'destination names must be unique' }),
    /** Local time of the nightly run, HH:MM. */
    time: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'expected HH:MM').default('02:30'),
    /** IANA time zone of `time`; default the server's. */
    timezone: z.string().min(1).optional(),
    /** Clubs archived at once. */
    parallelism: z.number().int().min(1).max(32).default(2),
    retention: RetentionSchema.default({}),
    /** Retry a destination that was down after this long. */
    retryAfter: DurationSchema.default('15m'),
    mail: z
      .object({
        /** Archives above this size are not mailed: the club gets a notice, the operator an alert. */
        maxBytes: z.number().int().min(1024).max(1024 ** 3).default(20 * 1024 * 1024),
      })
      .strict()
      .default({}),
  })
  .strict();
export type BackupConfig = z.input<typeof BackupConfigSchema>;
export type BackupSettings = z.output<typeof BackupConfigSchema>;

export const MAIL_PLANS = new Set(['premium', 'federation']);

export interface ClubRunResult {
  clubId: string;
  name: string;
  size: number;
  stored: string[];
  failed: Array<{ destination: string; error: string }>;
  error?: string;
}

export interface RunReport {
  startedAt: string;
  finishedAt: string;
  clubs: number;
  ok: number;
  /** Bytes of the archives made in this run (each stored once per destination). */
  bytes: number;
  failedClubs: Array<{ clubId: string; error: string }>;
  destinations: Record<string, { stored: number; failed: number; down?: string }>;
  retention: Record<string, { kept: number; deleted: number; error?: string }>;
  mail: MailReport;
  /** `backup cancel` stopped the run: these clubs were not started (the ones under way finished). */
  cancelled?: { notStarted: string[] };
}

export interface MailReport {
  sent: string[];
  unchanged: string[];
  tooLarge: string[];
  noPassphrase: string[];
  noAddress: string[];
  failed: Array<{ clubId: string; error: string }>;
}

export interface BackupServiceOptions {
  storage: Storage;
  config?: BackupConfig;
  mailer?: AlertMailer;
  logger?: Logger;
  now?: () => Date;
  /** Called when an archive was stored (metrics gauge). */
  onStored?: (destination: string, timeMs: number) => void;
  /** Replace the configured destinations (tests, bench). */
  destinations?: BackupDestination[];
  /** The snapshot workers (default: one worker thread; tests pass a failing one). */
  snapshots?: SnapshotPool;
}

export function errText(e: unknown): string {
  const err = e as { code?: string; message?: string };
  return `${err.message ?? String(e)}${err.code && !String(err.message).includes(err.code) ? ` [${err.code}]` : ''}`;
}

export function emptyMail(): MailReport {
  return { sent: [], unchanged: [], tooLarge: [], noPassphrase: [], noAddress: [], failed: [] };
}

export function mb(n: number): string {
  return (n / 1024 / 1024).toFixed(1);
}
