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
 * In a cluster a scope (backup-scope.ts, cluster-backups.ts) narrows every run to the clubs this
 * server is primary of and shares when each was last stored; a check every minute replaces the
 * catch-up and the retry timer.
 */
import type { AlertKind } from '../mail/alert-catalogue.js';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { Cron } from 'croner';
import { sweepBackupStaging } from '../../storage/backup/backup-archive.js';
import { SnapshotPool } from '../../storage/backup/snapshot-pool.js';
import { BackupError } from '../../storage/backup/backup-errors.js';
import { clubSealingKey, initArchiveKeys } from '../../storage/backup/archive-keys.js';
import { LastSuccess } from './last-success.js';
import type { Storage } from '../../storage/server/storage.js';
import { archiveName, openDestination, type BackupDestination } from './backup-destinations.js';
import { nullLogger, type Logger } from '../common/log.js';
import type { AlertMailer } from '../mail/mailer.js';
import { BackupConfigSchema, BackupServiceOptions, BackupSettings, ClubRunResult, MailReport, RunReport, emptyMail, errText } from './backup-settings.js';
import { applyRetention, purgeClubArchives, type UpkeepDeps } from './retention.js';
import { mailClubBackups } from './club-mail.js';
import { dailyPattern, nextScheduled, pool } from './backup-schedule.js';
import type { BackupScope } from './backup-scope.js';

export { RetentionSchema, BackupConfigSchema, type Retention, type BackupConfig, type BackupSettings, type ClubRunResult, type RunReport, type MailReport, type BackupServiceOptions } from './backup-settings.js';
export { selectRetained } from './retention.js';

/** A run: `clubs` (default all this server archives); `scheduled`: the nightly schedule (in a cluster only what is due). */
export interface RunOptions {
  clubs?: string[];
  scheduled?: boolean;
  onProgress?: (done: number, total: number, clubId: string) => void;
  mail?: boolean;
  retention?: boolean;
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
  /** Club snapshots on a worker thread, one at a time (storage/backup/snapshot-pool.ts). */
  readonly #snapshots: SnapshotPool;
  /** The snapshot workers, shared with backup.download and the pre-restore archive. */
  get snapshots(): SnapshotPool {
    return this.#snapshots;
  }
  #cron: Cron | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #catchUpTimer: NodeJS.Timeout | undefined;
  #running: Promise<RunReport> | undefined;
  /** Last stored archive per destination, written to server.db now and then (last-success.ts). */
  readonly #stored: LastSuccess;
  /** Set by cancel(): the running run starts no further club. */
  #cancel = false;
  #closed = false;
  #scope: BackupScope | undefined;
  #checkTimer: NodeJS.Timeout | undefined;

  constructor(o: BackupServiceOptions) {
    this.settings = BackupConfigSchema.parse(o.config ?? {});
    this.#st = o.storage;
    this.#mailer = o.mailer;
    this.#log = o.logger ?? nullLogger();
    this.#now = o.now ?? (() => new Date());
    this.#onStored = o.onStored;
    this.destinations = o.destinations ?? this.settings.destinations.map((d) => openDestination(d, o.storage.dataDir));
    this.#staging = path.join(o.storage.dataDir, 'backup-staging');
    this.#snapshots = o.snapshots ?? new SnapshotPool();
    // server.db looked up at each write: `keys rotate-master` replaces the connection.
    this.#stored = new LastSuccess({ setMeta: (k, v) => o.storage.server.setMeta(k, v) });
  }

  /** Cluster: narrow runs to this server's clubs and share their state (set before start()). */
  setScope(scope: BackupScope): void {
    this.#scope = scope;
  }

  get scope(): BackupScope | undefined {
    return this.#scope;
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
      const v = this.#stored.get(d.name) ?? this.#st.server.getMeta(`backup.lastSuccess.${d.name}`);
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
      await this.#scope?.prepare(clubId);
      const key = clubSealingKey(st, clubId);
      let written: { size: number; sha256: string };
      try {
        written = await this.#snapshots.archive(st, clubId, key, file, now);
      } finally {
        key.fill(0);
      }
      const { size, sha256 } = written;
      result.size = size;
      const targets = this.destinations.filter((d) => (!o.only || o.only.includes(d.name)) && !o.skip?.has(d.name));
      await Promise.all(
        targets.map(async (d) => {
          try {
            await d.put(name, file, sha256);
            result.stored.push(d.name);
            const t = this.#now().getTime();
            this.#stored.note(d.name, t);
            this.#onStored?.(d.name, t);
          } catch (e) {
            result.failed.push({ destination: d.name, error: errText(e) });
            o.onDestinationDown?.(d.name, errText(e));
          }
        }),
      );
      for (const s of o.skip ?? []) if (!o.only || o.only.includes(s)) result.failed.push({ destination: s, error: 'skipped: destination down in this run' });
      // Cluster: recorded after the archive is stored, so a crash in between repeats it, never skips it.
      await this.#scope?.stored(result, this.#now().getTime()).catch((e: unknown) => this.#log.warn('backup state not shared with the cluster', { event: 'backup-cluster-state', clubId, error: errText(e) }));
    } catch (e) {
      result.error = errText(e);
      this.#log.error('backup of club failed', { event: 'backup-failed', clubId, error: result.error });
    } finally {
      // Not rmSync: unlinking a file of a few MB can take tens of ms under disk load, on the event loop.
      await rm(file, { force: true });
    }
    return result;
  }

  /** The nightly run (also `backup run --all`). One at a time; a second call joins the first. */
  runNightly(o: RunOptions = {}): Promise<RunReport> {
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

  async #runNightly(o: RunOptions): Promise<RunReport> {
    const st = this.#st;
    const startedAt = this.#now();
    let clubs = o.clubs ?? st.server.listClubs().filter((c) => c.status !== 'deleting').map((c) => c.id);
    let dueDests: Map<string, string[]> | undefined;
    if (this.#scope && !o.clubs) {
      if (o.scheduled) {
        const due = this.#scope.due(startedAt, this.settings.retryAfter);
        dueDests = new Map(due.map((d) => [d.clubId, d.dests]));
        clubs = [...dueDests.keys()];
        if (clubs.length === 0) return { startedAt: startedAt.toISOString(), finishedAt: startedAt.toISOString(), clubs: 0, ok: 0, bytes: 0, failedClubs: [], destinations: {}, retention: {}, mail: emptyMail() };
      } else clubs = this.#scope.mine(clubs);
    } else if (this.#scope && o.clubs) for (const c of o.clubs) this.#scope.check(c, 'run');
    const down = new Map<string, string>();
    const destStats: RunReport['destinations'] = Object.fromEntries(this.destinations.map((d) => [d.name, { stored: 0, failed: 0 }]));
    const failedClubs: RunReport['failedClubs'] = [];
    const gaps: Array<{ clubId: string; dest: string }> = [];
    let done = 0;
    let ok = 0;
    let bytes = 0;
    const notStarted: string[] = [];
    initArchiveKeys(st, clubs);
    await pool(clubs, this.settings.parallelism, async (clubId) => {
      if (this.#cancel) {
        notStarted.push(clubId);
        return;
      }
      const only = dueDests?.get(clubId);
      const r = await this.runClub(clubId, { ...(only ? { only } : {}), skip: new Set(down.keys()), onDestinationDown: (d, err) => down.set(d, err) });
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
    this.#stored.flush();
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
    const mail = o.mail === false || stopped ? emptyMail() : await this.mailClubBackups(this.#scope ? clubs : o.clubs);
    if (!o.clubs && !stopped && !this.#scope) st.server.setMeta('backup.lastRun', startedAt.toISOString());
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
    const mine = this.#scope ? new Set(this.#scope.mine([...byClub.keys()])) : undefined;
    for (const [clubId, dests] of byClub) {
      if (!this.#st.server.getClub(clubId) || (mine && !mine.has(clubId))) continue;
      const r = await this.runClub(clubId, { only: dests, skip: new Set(down.keys()), onDestinationDown: (d, e) => down.set(d, e) });
      filled += r.stored.length;
      for (const f of r.failed) left.push({ clubId, dest: f.destination });
      if (r.error) for (const d of dests) left.push({ clubId, dest: d });
    }
    this.#stored.flush();
    this.#setGaps(left);
    for (const [d, err] of down) await this.#alert('backup-destination-still-down', 'critical', `backup destination ${d} is still down`, [`Destination: ${d}`, `Error: ${err}`, `${left.filter((g) => g.dest === d).length} club archives still missing there.`]);
    if (left.length) this.#scheduleRetry();
    return { filled, remaining: left.length };
  }

  #scheduleRetry(): void {
    if (this.#closed || !this.#cron || this.#retryTimer || this.#scope) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.retryGaps().catch((e) => this.#log.error('backup retry failed', { event: 'backup-retry', error: errText(e) }));
    }, this.settings.retryAfter);
    this.#retryTimer.unref();
  }

  /** Remove every archive of a deleted club at every destination (retention.ts). */
  purgeClubArchives(clubId: string): ReturnType<typeof purgeClubArchives> {
    return purgeClubArchives(this.#upkeep(), clubId);
  }

  /** Delete archives beyond the retention policy, per destination and club (retention.ts). */
  applyRetention(o: { skip?: ReadonlySet<string>; clubs?: readonly string[] } = {}): Promise<RunReport['retention']> {
    return applyRetention(this.#upkeep(), o);
  }

  #upkeep(): UpkeepDeps {
    return { st: this.#st, destinations: this.destinations, retention: this.settings.retention, now: this.#now, log: this.#log };
  }

  /**
   * Premium and federation clubs: mail an archive sealed with the club's passphrase key when the
   * data fingerprint differs from the last mailed one (club-mail.ts).
   */
  async mailClubBackups(only?: readonly string[]): Promise<MailReport> {
    if (!this.#mailer) return emptyMail();
    const deps = { st: this.#st, mailer: this.#mailer, log: this.#log, now: this.#now, staging: this.#staging, maxBytes: this.settings.mail.maxBytes, alert: this.#alert.bind(this), snapshot: (clubId: string, now: Date) => this.#snapshots.snapshot(this.#st, clubId, now) };
    return mailClubBackups(deps, only);
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
    return dailyPattern(this.settings.time);
  }

  /** True when a scheduled run was missed since the last one (downtime). */
  missedRun(): boolean {
    const last = this.#st.server.getMeta('backup.lastRun');
    if (!last) return false;
    const next = nextScheduled(this.pattern, this.settings.timezone, new Date(last));
    return next !== null && next.getTime() <= this.#now().getTime();
  }

  /** Schedule the nightly run, catch up a missed one, resume retries of remembered gaps. */
  start(o: { catchUpDelayMs?: number } = {}): void {
    if (this.#cron || this.#closed || !this.settings.enabled) return;
    const scope = this.#scope;
    const run = () => {
      void this.runNightly({ scheduled: true }).catch((e) => this.#log.error('nightly backup run failed', { event: 'backup-run', error: errText(e) }));
    };
    this.#cron = new Cron(this.pattern, { protect: true, ...(this.settings.timezone ? { timezone: this.settings.timezone } : {}) }, run);
    if (scope) {
      // Cluster: what is due is read from the shared state, so a takeover or a restart catches up.
      this.#checkTimer = setInterval(run, scope.checkEveryMs);
      this.#checkTimer.unref();
      return;
    }
    if (!this.#st.server.getMeta('backup.lastRun')) this.#st.server.setMeta('backup.lastRun', this.#now().toISOString());
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
    if (this.#checkTimer) clearInterval(this.#checkTimer);
    await this.#running?.catch(() => undefined);
    for (const d of this.destinations) await d.close();
    await this.#snapshots.close();
  }
}
