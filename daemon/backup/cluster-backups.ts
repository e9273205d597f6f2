/**
 * Backups in a cluster (issue 14; docs/CLUSTER.md "Backups"): a club's scheduled backup is made
 * once, by its current primary, and opens on every member.
 *
 * - Schedule: every member checks every `checkEveryMs` (default one minute, and at the configured
 *   time) which of the clubs it serves as primary are due: a destination is due for a club when
 *   the shared record (cluster/backup-board.ts) names no archive stored there since the latest
 *   scheduled time, and the club existed at that time. The record is written right after the
 *   archive is stored, so a new primary after a takeover or a drain neither repeats a backup made
 *   minutes earlier nor skips one that was due (it finds it due at its next check). A crash
 *   between storing and recording repeats that one club's archive: at least once, never none.
 * - Keys: the server archive keyring and each club's archive key are shared sealed in etcd; every
 *   member adopts them into its server.db, so an archive made by any member verifies and
 *   restores on any other (the origin signature uses the identity key of the shared keys/ folder).
 * - A destination that failed for a club here is tried again after `retryAfter` (not at every check).
 * - Manual runs of a club not served here are refused naming its primary; in-place restores are
 *   refused in a cluster (the restored store would not reach the standbys): restore into --target.
 */
import { ClusterError } from '../../cluster/errors.js';
import { keyIdOf } from '../../crypto/master-key.js';
import { BackupBoard, type ClubBackupRecord, type SharedKeyring } from '../../cluster/backup-board.js';
import type { Route } from '../../cluster/node.js';
import type { EtcdGateway } from '../../cluster/etcd-gateway.js';
import { ARCHIVE_KEY_META, adoptArchiveKeyring, adoptClubArchiveKey, exportArchiveKeyring, initArchiveKeys } from '../../storage/backup/archive-keys.js';
import { BackupError } from '../../storage/backup/backup-errors.js';
import type { Storage } from '../../storage/server/storage.js';
import type { Logger } from '../common/log.js';
import { lastScheduled } from './backup-schedule.js';
import type { BackupScope } from './backup-scope.js';
import type { BackupService } from './backup-service.js';
import { errText, type ClubRunResult } from './backup-settings.js';

/** What this needs of the cluster node (cluster/node.ts). */
export interface BackupNode {
  readonly nodeId: string;
  readonly gw: EtcdGateway;
  route(club: string): Route;
  served(): string[];
}

export interface ClusterBackupsOptions {
  node: BackupNode;
  storage: Storage;
  service: BackupService;
  logger: Logger;
  /** How often due clubs are looked for (ms); default 60 s. */
  checkEveryMs?: number;
}

/** Bound on remembered (club, destination) failures; the oldest are forgotten first. */
const MAX_FAILURES = 100_000;

export class ClusterBackups implements BackupScope {
  readonly checkEveryMs: number;
  readonly board: BackupBoard;
  readonly #o: ClusterBackupsOptions;
  /** `${club} ${destination}` -> ms of the last failure here. */
  readonly #failed = new Map<string, number>();

  private constructor(o: ClusterBackupsOptions) {
    this.#o = o;
    this.checkEveryMs = o.checkEveryMs ?? 60_000;
    this.board = new BackupBoard(o.node.gw, { masterKey: o.storage.master.key, nodeId: o.node.nodeId, logger: o.logger });
  }

  /**
   * Follow the shared state, agree on the archive keyring (this member's own is offered when etcd
   * has none; a different current key here is retired, kept for reading), take every shared club
   * key, and narrow the service's runs to this member's clubs.
   * @throws ClusterError ETCD_UNAVAILABLE, LOG_CORRUPT.
   */
  static async start(o: ClusterBackupsOptions): Promise<ClusterBackups> {
    const cb = new ClusterBackups(o);
    cb.board.on('keyring', (ring: SharedKeyring) => cb.#adoptRing(ring));
    cb.board.on('club', (club: string, rec: ClubBackupRecord | undefined) => rec && cb.#adoptClub(club, rec));
    await cb.board.start();
    // A new member has no archive key of its own: it takes the ring as it is.
    const hasOwn = o.storage.server.getMeta(ARCHIVE_KEY_META) !== undefined;
    let ring = cb.board.keyring() ?? (await cb.board.shareKeyring(exportArchiveKeyring(o.storage)));
    if (hasOwn) {
      // This member's own keys join the shared ring (retired), so its earlier archives open
      // everywhere and adopting the ring (which it mirrors exactly) loses none of them.
      const local = exportArchiveKeyring(o.storage);
      const own = [...(local.current !== ring.current ? [{ id: keyIdOf(Buffer.from(local.current, 'hex')).toString('hex'), key: local.current, retiredAt: new Date().toISOString() }] : []), ...local.retired];
      if (own.some((k) => k.key !== ring.current && !ring.retired.some((r) => r.key === k.key))) ring = await cb.board.publishKeyring({ current: ring.current, retired: own });
    }
    cb.#adoptRing(ring);
    cb.syncKeys();
    o.service.setScope(cb);
    return cb;
  }

  async stop(): Promise<void> {
    await this.board.stop();
  }

  due(now: Date, retryAfterMs: number): Array<{ clubId: string; dests: string[] }> {
    const svc = this.#o.service;
    const since = lastScheduled(svc.pattern, svc.settings.timezone, now)?.getTime();
    if (since === undefined) return [];
    const out: Array<{ clubId: string; dests: string[] }> = [];
    for (const clubId of this.#o.node.served()) {
      const row = this.#o.storage.server.getClub(clubId);
      if (!row || row.status === 'deleting' || !(Date.parse(row.created) <= since)) continue;
      const rec = this.board.club(clubId);
      const dests = svc.destinations
        .map((d) => d.name)
        .filter((d) => (rec?.dests[d]?.t ?? -Infinity) < since && !((this.#failed.get(`${clubId} ${d}`) ?? -Infinity) > now.getTime() - retryAfterMs));
      if (dests.length > 0) out.push({ clubId, dests });
    }
    return out;
  }

  mine(clubs: readonly string[]): string[] {
    const served = new Set(this.#o.node.served());
    return clubs.filter((c) => served.has(c));
  }

  check(clubId: string, what: 'run' | 'restore'): void {
    const r = this.#o.node.route(clubId);
    if (what === 'restore') {
      throw new BackupError('UNSUPPORTED_IN_CLUSTER', `club ${clubId} is replicated: an in-place restore would not reach its standbys; restore into --target DIR (any member), or verify with backup verify`);
    }
    if (r.kind === 'serve') return;
    const where = r.kind === 'redirect' ? `its primary ${r.node} (${r.address})` : `its primary (none serving now: ${r.reason})`;
    throw new BackupError('NOT_PRIMARY', `club ${clubId} is backed up by ${where}; run the command there`);
  }

  async prepare(clubId: string): Promise<void> {
    const st = this.#o.storage;
    initArchiveKeys(st, [clubId]);
    const local = st.server.getArchiveKey(clubId);
    if (!local) return; // deleted meanwhile: archiving reports it
    const shared = await this.board.clubKey(clubId, local.toString('hex'));
    local.fill(0);
    this.#adoptKey(clubId, shared);
  }

  async stored(result: ClubRunResult, t: number): Promise<void> {
    for (const f of result.failed) {
      const k = `${result.clubId} ${f.destination}`;
      this.#failed.delete(k);
      this.#failed.set(k, t);
      if (this.#failed.size > MAX_FAILURES) this.#failed.delete(this.#failed.keys().next().value!);
    }
    if (result.stored.length === 0) return;
    for (const d of result.stored) this.#failed.delete(`${result.clubId} ${d}`);
    try {
      await this.board.noteStored(result.clubId, result.stored, t, result.name);
    } catch (e) {
      if (e instanceof ClusterError && e.code === 'NOT_FOUND') return; // the club was deleted meanwhile
      throw e;
    }
  }

  async keysRotated(): Promise<void> {
    this.#adoptRing(await this.board.publishKeyring(exportArchiveKeyring(this.#o.storage)));
  }

  async keysForgotten(): Promise<void> {
    this.#adoptRing(await this.board.publishKeyring(exportArchiveKeyring(this.#o.storage), { replace: true }));
  }

  syncKeys(): void {
    const ring = this.board.keyring();
    if (ring) this.#adoptRing(ring);
    for (const [club, rec] of this.board.clubs()) this.#adoptClub(club, rec);
  }

  #adoptRing(ring: SharedKeyring): void {
    try {
      if (adoptArchiveKeyring(this.#o.storage, ring).changed) this.#o.logger.info('archive keyring of the cluster adopted', { event: 'backup-cluster-keyring' });
    } catch (e) {
      this.#o.logger.warn('archive keyring of the cluster not adopted', { event: 'backup-cluster-keyring', error: errText(e) });
    }
  }

  #adoptClub(club: string, rec: ClubBackupRecord): void {
    this.#adoptKey(club, rec.archiveKey);
  }

  #adoptKey(club: string, hex: string): void {
    const key = Buffer.from(hex, 'hex');
    try {
      const r = adoptClubArchiveKey(this.#o.storage, club, key);
      if (r === 'replaced') this.#o.logger.warn('club archive key replaced by the one the cluster shares', { event: 'backup-cluster-club-key', clubId: club });
    } finally {
      key.fill(0);
    }
  }
}

/**
 * The daemon's hook (daemon/main/main.ts): on a cluster member, narrow the backup service to
 * this member's clubs and share the backup state; without a cluster node nothing happens.
 * Returns the stop function (call before the node stops).
 */
export async function startClusterBackups(node: BackupNode | undefined, o: Omit<ClusterBackupsOptions, 'node'>): Promise<() => Promise<void>> {
  if (!node) return async () => {};
  const cb = await ClusterBackups.start({ ...o, node });
  return () => cb.stop();
}
