/**
 * The backup service: nightly runs over all clubs to every destination, retention per
 * destination, retries for destinations that were down, and the nightly mail to premium and
 * federation clubs. Used by the daemon (scheduled) and by `commusicctl backup ...` (online through
 * the control socket, offline on the data folder).
 *
 * One run: for every club (at most `parallelism` at a time) one snapshot and one server archive,
 * written to a staging file (encrypted), then put to every destination (atomic write, read back,
 * SHA-256 compared). A destination that fails is skipped for the rest of the run (so a dead host
 * costs one timeout, not one per club), an alert goes to the operator, and the missing
 * (club, destination) pairs are remembered in server.db and retried after `retryAfter`; the next
 * nightly run stores every club everywhere anyway. Retention then runs on every destination
 * that is up. State lives in server.db meta:
 *   backup.lastRun               ISO time of the last nightly run (catch-up after downtime)
 *   backup.lastSuccess.<dest>    ms of the last archive stored there (metrics, status)
 *   backup.gaps                  JSON [{clubId, dest}] still missing from the last run
 *   backup.mailed.<club>         data fingerprint of the last mailed archive
 */
import type { AlertKind } from '../mail/alert-catalogue.js';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { Cron } from 'croner';
import { z } from 'zod';
import {
  archiveSigner,
  archiveStream,
  clubBackupSettings,
  createClubArchive,
  serverArchiveKey,
  sweepBackupStaging,
  takeClubSnapshot,
  writeFileAtomic,
  type Manifest,
} from '../../storage/backup/backup-archive.js';
import { BackupError } from '../../storage/backup/backup-errors.js';
import { clubSealingKey } from '../../storage/backup/archive-keys.js';
import type { Storage } from '../../storage/server/storage.js';
import { DurationSchema } from '../bans/ban-policy.js';
import { archiveName, DestinationSchema, openDestination, type ArchiveEntry, type BackupDestination } from './backup-destinations.js';
import { nullLogger, type Logger } from '../common/log.js';
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

const MAIL_PLANS = new Set(['premium', 'federation']);

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
}

/** restic-style `forget`: which of these archive times to keep (indexes into `times`). */
export function selectRetained(times: readonly Date[], r: Retention): Set<number> {
  const order = times.map((t, i) => ({ t: t.getTime(), i })).sort((a, b) => b.t - a.t);
  const keep = new Set<number>();
  const pad = (n: number) => String(n).padStart(2, '0');
  const isoWeek = (d: Date) => {
    const x = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
    const day = x.getUTCDay() || 7;
    x.setUTCDate(x.getUTCDate() + 4 - day);
    const y0 = new Date(Date.UTC(x.getUTCFullYear(), 0, 1));
    return `${x.getUTCFullYear()}-W${pad(Math.ceil(((x.getTime() - y0.getTime()) / 86_400_000 + 1) / 7))}`;
  };
  const rules: Array<[number, (d: Date) => string]> = [
    [r.last, (d) => String(d.getTime())],
    [r.daily, (d) => d.toISOString().slice(0, 10)],
    [r.weekly, isoWeek],
    [r.monthly, (d) => d.toISOString().slice(0, 7)],
    [r.yearly, (d) => d.toISOString().slice(0, 4)],
  ];
  for (const [n, key] of rules) {
    let count = 0;
    let last: string | undefined;
    for (const { t, i } of order) {
      if (count >= n) break;
      const k = key(new Date(t));
      if (k === last) continue;
      last = k;
      keep.add(i);
      count++;
    }
  }
  return keep;
}

/** Run `fn` over items with at most `n` at a time. */
async function pool<T>(items: readonly T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

function errText(e: unknown): string {
  const err = e as { code?: string; message?: string };
  return `${err.message ?? String(e)}${err.code && !String(err.message).includes(err.code) ? ` [${err.code}]` : ''}`;
}

export class BackupService {
  readonly settings: BackupSettings;
  readonly destinations: BackupDestination[];
  readonly #st: Storage;
  readonly #mailer: AlertMailer | undefined;
  readonly #log: Logger;
  readonly #now: () => Date;
  readonly #onStored: ((d: string, t: number) => void) | undefined;
  readonly #staging: string;
  #cron: Cron | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #catchUpTimer: NodeJS.Timeout | undefined;
  #running: Promise<RunReport> | undefined;
  /** Set by cancel(): the running run starts no further club. */
  #cancel = false;
  #closed = false;

  constructor(o: BackupServiceOptions) {
    this.settings = BackupConfigSchema.parse(o.config ?? {});
    this.#st = o.storage;
    this.#mailer = o.mailer;
    this.#log = o.logger ?? nullLogger();
    this.#now = o.now ?? (() => new Date());
    this.#onStored = o.onStored;
    this.destinations = o.destinations ?? this.settings.destinations.map((d) => openDestination(d, o.storage.dataDir));
    this.#staging = path.join(o.storage.dataDir, 'backup-staging');
  }

  destination(name: string): BackupDestination {
    const d = this.destinations.find((x) => x.name === name);
    if (!d) throw new BackupError('NOT_FOUND', `no backup destination "${name}"; configured: ${this.destinations.map((x) => x.name).join(', ')}`);
    return d;
  }

  /** Last successful store per destination (ms), for metrics and status. */
  lastBackups(): Array<[string, number]> {
    const out: Array<[string, number]> = [];
    for (const d of this.destinations) {
      const v = this.#st.server.getMeta(`backup.lastSuccess.${d.name}`);
      if (v) out.push([d.name, Number(v)]);
    }
    return out;
  }

  gaps(): Array<{ clubId: string; dest: string }> {
    try {
      return JSON.parse(this.#st.server.getMeta('backup.gaps') ?? '[]') as Array<{ clubId: string; dest: string }>;
    } catch {
      return [];
    }
  }

  #setGaps(g: Array<{ clubId: string; dest: string }>): void {
    this.#st.server.setMeta('backup.gaps', JSON.stringify(g));
  }

  /** Archive one club and store it on `only` destinations (default all, minus `skip`). */
  async runClub(clubId: string, o: { only?: string[]; skip?: ReadonlySet<string>; onDestinationDown?: (dest: string, err: string) => void } = {}): Promise<ClubRunResult> {
    const st = this.#st;
    sweepBackupStaging(st, clubId);
    mkdirSync(this.#staging, { recursive: true, mode: 0o700 });
    const now = this.#now();
    const name = archiveName(clubId, now);
    const file = path.join(this.#staging, `${clubId}-${randomBytes(6).toString('hex')}.cmbk`);
    const result: ClubRunResult = { clubId, name, size: 0, stored: [], failed: [] };
    try {
      const { stream } = createClubArchive(st, clubId, { kind: 'server', key: clubSealingKey(st, clubId) }, { now });
      const { size, sha256 } = await writeFileAtomic(stream, file);
      result.size = size;
      const targets = this.destinations.filter((d) => (!o.only || o.only.includes(d.name)) && !o.skip?.has(d.name));
      await Promise.all(
        targets.map(async (d) => {
          try {
            await d.put(name, file, sha256);
            result.stored.push(d.name);
            const t = this.#now().getTime();
            st.server.setMeta(`backup.lastSuccess.${d.name}`, String(t));
            this.#onStored?.(d.name, t);
          } catch (e) {
            result.failed.push({ destination: d.name, error: errText(e) });
            o.onDestinationDown?.(d.name, errText(e));
          }
        }),
      );
      for (const s of o.skip ?? []) if (!o.only || o.only.includes(s)) result.failed.push({ destination: s, error: 'skipped: destination down in this run' });
    } catch (e) {
      result.error = errText(e);
      this.#log.error('backup of club failed', { event: 'backup-failed', clubId, error: result.error });
    } finally {
      rmSync(file, { force: true });
    }
    return result;
  }

  /** The nightly run (also `backup run --all`). One at a time; a second call joins the first. */
  runNightly(o: { clubs?: string[]; onProgress?: (done: number, total: number, clubId: string) => void; mail?: boolean; retention?: boolean } = {}): Promise<RunReport> {
    if (this.#running) return this.#running;
    this.#cancel = false;
    const p = this.#runNightly(o).finally(() => {
      if (this.#running === p) this.#running = undefined;
      this.#cancel = false;
    });
    this.#running = p;
    return p;
  }

  /**
   * `backup cancel`: the running backup run starts no further club; the clubs under way finish
   * (an archive is never left half written), then retention and the club mails are skipped and
   * the report names the clubs not started. Returns whether a run was going.
   */
  cancel(): { running: boolean } {
    if (!this.#running) return { running: false };
    this.#cancel = true;
    return { running: true };
  }

  async #runNightly(o: { clubs?: string[]; onProgress?: (done: number, total: number, clubId: string) => void; mail?: boolean; retention?: boolean }): Promise<RunReport> {
    const st = this.#st;
    const startedAt = this.#now();
    const clubs = o.clubs ?? st.server.listClubs().filter((c) => c.status !== 'deleting').map((c) => c.id);
    const down = new Map<string, string>();
    const destStats: RunReport['destinations'] = Object.fromEntries(this.destinations.map((d) => [d.name, { stored: 0, failed: 0 }]));
    const failedClubs: RunReport['failedClubs'] = [];
    const gaps: Array<{ clubId: string; dest: string }> = [];
    let done = 0;
    let ok = 0;
    let bytes = 0;
    const notStarted: string[] = [];
    await pool(clubs, this.settings.parallelism, async (clubId) => {
      if (this.#cancel) {
        notStarted.push(clubId);
        return;
      }
      const r = await this.runClub(clubId, { skip: new Set(down.keys()), onDestinationDown: (d, err) => down.set(d, err) });
      if (r.error) failedClubs.push({ clubId, error: r.error });
      else ok++;
      bytes += r.size;
      for (const s of r.stored) destStats[s]!.stored++;
      for (const f of r.failed) {
        destStats[f.destination]!.failed++;
        gaps.push({ clubId, dest: f.destination });
      }
      o.onProgress?.(++done, clubs.length, clubId);
    });
    for (const [d, err] of down) destStats[d]!.down = err;
    // Gaps: what this run missed, plus older gaps this run did not cover.
    const covered = new Set(clubs.filter((c) => !notStarted.includes(c)));
    const remaining = [...this.gaps().filter((g) => !covered.has(g.clubId) && this.destinations.some((d) => d.name === g.dest)), ...gaps];
    this.#setGaps(remaining);
    for (const [d, err] of down) {
      await this.#alert('backup-destination-down', 'critical', `backup destination ${d} is down; ${destStats[d]!.failed} club archives missing there`, [
        `Destination: ${d}`,
        `Error: ${err}`,
        `The other destinations received this run's archives (${Object.entries(destStats).filter(([n]) => n !== d).map(([n, s]) => `${n}: ${s.stored}`).join(', ')}).`,
        `A retry runs in ${Math.round(this.settings.retryAfter / 60_000)} min; the next nightly run stores every club there again.`,
      ]);
    }
    if (failedClubs.length) {
      await this.#alert('backup-clubs-failed', 'critical', `backup of ${failedClubs.length} club(s) failed`, failedClubs.slice(0, 50).map((f) => `${f.clubId}: ${f.error}`));
    }
    if (remaining.length) this.#scheduleRetry();
    const stopped = notStarted.length > 0;
    const retention = o.retention === false || stopped ? {} : await this.applyRetention({ skip: new Set(down.keys()), clubs });
    const mail = o.mail === false || stopped ? emptyMail() : await this.mailClubBackups(o.clubs);
    if (!o.clubs && !stopped) st.server.setMeta('backup.lastRun', startedAt.toISOString());
    const report: RunReport = { startedAt: startedAt.toISOString(), finishedAt: this.#now().toISOString(), clubs: clubs.length, ok, bytes, failedClubs, destinations: destStats, retention, mail, ...(stopped ? { cancelled: { notStarted } } : {}) };
    this.#log.info(stopped ? 'backup run cancelled' : 'backup run finished', { event: 'backup-run', clubs: clubs.length, ok, failed: failedClubs.length, down: [...down.keys()], ...(stopped ? { notStarted: notStarted.length } : {}) });
    return report;
  }

  /** Store the remembered gaps (club, destination) again. */
  async retryGaps(): Promise<{ filled: number; remaining: number }> {
    const gaps = this.gaps();
    const byClub = new Map<string, string[]>();
    for (const g of gaps) byClub.set(g.clubId, [...(byClub.get(g.clubId) ?? []), g.dest]);
    const left: Array<{ clubId: string; dest: string }> = [];
    const down = new Map<string, string>();
    let filled = 0;
    for (const [clubId, dests] of byClub) {
      if (!this.#st.server.getClub(clubId)) continue;
      const r = await this.runClub(clubId, { only: dests, skip: new Set(down.keys()), onDestinationDown: (d, e) => down.set(d, e) });
      filled += r.stored.length;
      for (const f of r.failed) left.push({ clubId, dest: f.destination });
      if (r.error) for (const d of dests) left.push({ clubId, dest: d });
    }
    this.#setGaps(left);
    for (const [d, err] of down) await this.#alert('backup-destination-still-down', 'critical', `backup destination ${d} is still down`, [`Destination: ${d}`, `Error: ${err}`, `${left.filter((g) => g.dest === d).length} club archives still missing there.`]);
    if (left.length) this.#scheduleRetry();
    return { filled, remaining: left.length };
  }

  #scheduleRetry(): void {
    if (this.#closed || !this.#cron || this.#retryTimer) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.retryGaps().catch((e) => this.#log.error('backup retry failed', { event: 'backup-retry', error: errText(e) }));
    }, this.settings.retryAfter);
    this.#retryTimer.unref();
  }

  /**
   * Remove every archive of a deleted club at every destination (`club delete` runs it). A
   * destination that fails is named in the result; the nightly retention removes what is left
   * there later (clubs in club_deletions keep no archive). Recorded in the club's deletion record.
   */
  async purgeClubArchives(clubId: string): Promise<{ clubId: string; removed: Array<{ destination: string; name: string }>; failed: Array<{ destination: string; error: string }> }> {
    const removed: Array<{ destination: string; name: string }> = [];
    const failed: Array<{ destination: string; error: string }> = [];
    for (const d of this.destinations) {
      try {
        for (const a of await d.list(clubId)) {
          if (a.clubId !== clubId) continue;
          await d.delete(a.name);
          removed.push({ destination: d.name, name: a.name });
        }
      } catch (e) {
        failed.push({ destination: d.name, error: errText(e) });
      }
    }
    this.#st.server.recordArchivePurge(clubId, removed.length, {
      lastPurge: this.#now().toISOString(),
      removedAt: [...new Set(removed.map((r) => r.destination))],
      failed,
    });
    this.#log.info('archives of a deleted club removed', { event: 'backup-purge', clubId, removed: removed.length, failed: failed.map((f) => f.destination) });
    return { clubId, removed, failed };
  }

  /** Delete archives beyond the retention policy, per destination and club. */
  async applyRetention(o: { skip?: ReadonlySet<string>; clubs?: readonly string[] } = {}): Promise<RunReport['retention']> {
    const out: RunReport['retention'] = {};
    for (const d of this.destinations) {
      if (o.skip?.has(d.name)) continue;
      let kept = 0;
      let deleted = 0;
      try {
        const all = await d.list();
        const byClub = new Map<string, ArchiveEntry[]>();
        for (const a of all) if (!o.clubs || o.clubs.includes(a.clubId)) byClub.set(a.clubId, [...(byClub.get(a.clubId) ?? []), a]);
        const deletedClubs = new Set(this.#st.server.listDeletions().map((x) => x.clubId));
        for (const [clubId, list] of byClub) {
          if (deletedClubs.has(clubId) && !this.#st.server.getClub(clubId)) {
            // A deleted club keeps no archive: whatever a purge at deletion time missed goes now.
            for (const a of list) await d.delete(a.name);
            deleted += list.length;
            this.#st.server.recordArchivePurge(clubId, list.length, { lastPurge: this.#now().toISOString(), byRetention: d.name });
            continue;
          }
          const keep = selectRetained(list.map((a) => a.time), this.settings.retention);
          for (const [i, a] of list.entries()) {
            if (keep.has(i)) kept++;
            else {
              await d.delete(a.name);
              deleted++;
            }
          }
        }
        out[d.name] = { kept, deleted };
      } catch (e) {
        out[d.name] = { kept, deleted, error: errText(e) };
      }
    }
    return out;
  }

  /**
   * Premium and federation clubs: mail an archive sealed with the club's passphrase key when the
   * data fingerprint differs from the last mailed one.
   */
  async mailClubBackups(only?: readonly string[]): Promise<MailReport> {
    const rep = emptyMail();
    if (!this.#mailer) return rep;
    const st = this.#st;
    for (const row of st.server.listClubs()) {
      if (only && !only.includes(row.id)) continue;
      if (!MAIL_PLANS.has(row.plan) || row.status !== 'active') continue;
      const cfg = clubBackupSettings(st, row.id);
      if (!cfg.emails?.length) {
        rep.noAddress.push(row.id);
        continue;
      }
      if (!cfg.passphrase) {
        rep.noPassphrase.push(row.id);
        continue;
      }
      const metaKey = `backup.mailed.${row.id}`;
      let file: string | undefined;
      try {
        const snap = takeClubSnapshot(st, row.id, this.#now());
        if (st.server.getMeta(metaKey) === snap.manifest.dataFingerprint) {
          snap.release();
          rep.unchanged.push(row.id);
          continue;
        }
        const manifest: Manifest = snap.manifest;
        mkdirSync(this.#staging, { recursive: true, mode: 0o700 });
        file = path.join(this.#staging, `mail-${row.id}-${randomBytes(6).toString('hex')}.cmbk`);
        await writeFileAtomic(archiveStream(snap, { kind: 'club', record: cfg.passphrase }, { signer: archiveSigner(st) }), file);
        const size = statSync(file).size;
        const day = manifest.createdAt.slice(0, 10);
        if (size > this.settings.mail.maxBytes) {
          await this.#mailer.send({
            group: 'club-backup',
            to: cfg.emails,
            subject: `ComMusic: backup of ${row.name} of ${day} is too large for e-mail`,
            text: [
              `The nightly backup of ${row.name} (${day}) is ${mb(size)} MB, above the e-mail limit of ${mb(this.settings.mail.maxBytes)} MB, so it was not attached.`,
              'Your data is backed up on our servers as every night. Download a backup at any time in the ComMusic application (Backup > Download); it is encrypted with your backup passphrase.',
            ].join('\n\n'),
          });
          await this.#alert('backup-mail-too-large', 'warning', `nightly backup mail of club ${row.id} over the size limit`, [`Club: ${row.id}`, `Archive: ${mb(size)} MB, limit ${mb(this.settings.mail.maxBytes)} MB`, 'The club got a notice instead of the archive.']);
          rep.tooLarge.push(row.id);
        } else {
          await this.#mailer.send({
            group: 'club-backup',
            to: cfg.emails,
            subject: `ComMusic: nightly backup of ${row.name} (${day})`,
            text: [
              `Attached is the encrypted backup of ${row.name} of ${manifest.createdAt}: ${Object.values(manifest.tables).reduce((a, b) => a + b, 0)} records and ${manifest.documents.length} documents.`,
              'It opens only with your club\'s backup passphrase: commusicctl backup decrypt --in FILE --out FILE.tar --passphrase-stdin, or in the ComMusic application.',
              'We send it only on nights after your data changed.',
            ].join('\n\n'),
            attachments: [{ filename: `${row.id}-${manifest.createdAt.replace(/[-:.]/g, '').slice(0, 15)}.cmbk`, path: file, contentType: 'application/octet-stream' }],
          });
          rep.sent.push(row.id);
        }
        // Durably queued (or noticed): the next mail waits for the next change.
        st.server.setMeta(metaKey, manifest.dataFingerprint);
      } catch (e) {
        rep.failed.push({ clubId: row.id, error: errText(e) });
        this.#log.error('nightly backup mail failed', { event: 'backup-mail', clubId: row.id, error: errText(e) });
      } finally {
        if (file) rmSync(file, { force: true });
      }
    }
    return rep;
  }

  async #alert(kind: AlertKind, severity: 'warning' | 'critical', subject: string, lines: string[]): Promise<void> {
    this.#log.warn(subject, { event: 'backup-alert' });
    if (!this.#mailer) return;
    try {
      await this.#mailer.alert({ group: 'backup', kind, severity, subject, lines });
    } catch (e) {
      this.#log.error('backup alert not queued', { event: 'backup-alert', error: errText(e) });
    }
  }

  /** The cron pattern of the nightly run. */
  get pattern(): string {
    const [h, m] = this.settings.time.split(':');
    return `${Number(m)} ${Number(h)} * * *`;
  }

  /** True when a scheduled run was missed since the last one (downtime). */
  missedRun(): boolean {
    const last = this.#st.server.getMeta('backup.lastRun');
    if (!last) return false;
    const c = new Cron(this.pattern, { paused: true, ...(this.settings.timezone ? { timezone: this.settings.timezone } : {}) });
    const next = c.nextRun(new Date(last));
    c.stop();
    return next !== null && next.getTime() <= this.#now().getTime();
  }

  /** Schedule the nightly run, catch up a missed one, resume retries of remembered gaps. */
  start(o: { catchUpDelayMs?: number } = {}): void {
    if (this.#cron || this.#closed || !this.settings.enabled) return;
    if (!this.#st.server.getMeta('backup.lastRun')) this.#st.server.setMeta('backup.lastRun', this.#now().toISOString());
    const run = () => {
      void this.runNightly().catch((e) => this.#log.error('nightly backup run failed', { event: 'backup-run', error: errText(e) }));
    };
    this.#cron = new Cron(this.pattern, { protect: true, ...(this.settings.timezone ? { timezone: this.settings.timezone } : {}) }, run);
    if (this.missedRun()) {
      this.#log.warn('a nightly backup run was missed (server down); catching up', { event: 'backup-catch-up' });
      this.#catchUpTimer = setTimeout(run, o.catchUpDelayMs ?? 10_000);
      this.#catchUpTimer.unref();
    } else if (this.gaps().length) this.#scheduleRetry();
  }

  get nextRun(): Date | null {
    return this.#cron?.nextRun() ?? null;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#cron?.stop();
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    if (this.#catchUpTimer) clearTimeout(this.#catchUpTimer);
    await this.#running?.catch(() => undefined);
    for (const d of this.destinations) await d.close();
  }
}

function emptyMail(): MailReport {
  return { sent: [], unchanged: [], tooLarge: [], noPassphrase: [], noAddress: [], failed: [] };
}

function mb(n: number): string {
  return (n / 1024 / 1024).toFixed(1);
}
