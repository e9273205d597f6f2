/**
 * Backups in a cluster (issue 14; docs/CLUSTER.md "Backups"): what every member must agree on so
 * that a club's scheduled backup is made once, by its primary, and opens on every member.
 *
 *   backup/keyring        sealed {current, retired[]}: the server archive keys all members use
 *   backup/clubs/<club>   sealed {archiveKey, dests: {<destination>: {t, archive, node}}}: the
 *                         club's archive key and, per destination, its last stored archive
 *
 * Values are sealed under the cluster record key (from the shared master key) with the etcd key
 * as associated data, as in registry.ts: etcd holds no key and no personal data in plaintext
 * (club ids and destination names only). Every member mirrors the prefix (one small record per
 * club), so "is this club due?" is answered locally. Records change by compare-and-swap on their
 * mod revision: two members never lose each other's updates. A club's record is deleted with the
 * club (ClusterNode.forgetClub) and compacted out of etcd's history with its other keys.
 */
import { EventEmitter } from 'node:events';
import { deriveClusterRecordKey, openRecord, sealRecord } from '../crypto/cluster-seal.js';
import { ClusterError, silentClusterLogger, type ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { checkClubId } from './keys.js';
import { PrefixMirror } from './prefix-mirror.js';

export const BACKUP_PREFIX = 'backup/';
export const KEYRING_KEY = `${BACKUP_PREFIX}keyring`;
const CLUB_PREFIX = `${BACKUP_PREFIX}clubs/`;
export const backupClubKey = (club: string) => `${CLUB_PREFIX}${checkClubId(club)}`;

/** Destination names as the backup configuration allows them. */
const DEST = /^[A-Za-z0-9_.-]{1,40}$/;
const HEX64 = /^[0-9a-f]{64}$/;
/** Bound on destinations per club record (the configuration has a handful). */
export const MAX_DESTINATIONS = 64;
/** Bound on retired archive keys carried in the shared keyring (as storage/backup/archive-keys.ts). */
const MAX_RETIRED = 4096;

/** The server archive keys (hex), as storage/backup/archive-keys.ts exports and adopts them. */
export interface SharedKeyring {
  current: string;
  retired: Array<{ id: string; key: string; retiredAt: string }>;
}

/** Where and when a club's archive was last stored at one destination. */
export interface StoredAt {
  /** ms since the epoch. */
  t: number;
  /** The archive's name at the destination. */
  archive: string;
  /** Node that made it. */
  node: string;
}

export interface ClubBackupRecord {
  /** The club's archive key, hex (32 bytes). */
  archiveKey: string;
  dests: Record<string, StoredAt>;
}

export interface BackupBoardOptions {
  masterKey: Uint8Array;
  nodeId: string;
  logger?: ClusterLogger;
}

/** Events: 'keyring' (SharedKeyring) when the shared keyring appears or changes; 'club' (club, record or undefined). */
export class BackupBoard extends EventEmitter {
  private readonly recordKey: Buffer;
  private readonly logger: ClusterLogger;
  private readonly mirror: PrefixMirror;

  constructor(
    private readonly gw: EtcdGateway,
    private readonly opts: BackupBoardOptions,
  ) {
    super();
    this.recordKey = deriveClusterRecordKey(opts.masterKey);
    this.logger = opts.logger ?? silentClusterLogger;
    this.mirror = new PrefixMirror(gw, BACKUP_PREFIX);
    this.mirror.on('change', (rel: string, value: Buffer | undefined) => {
      if (rel === 'keyring') {
        const ring = value && this.openKeyring(value);
        if (ring) this.emit('keyring', ring);
      } else if (rel.startsWith('clubs/')) {
        const club = rel.slice('clubs/'.length);
        this.emit('club', club, value && this.openClub(club, value));
      }
    });
  }

  /** List the prefix and follow it. */
  async start(): Promise<void> {
    await this.mirror.start();
  }

  async stop(): Promise<void> {
    await this.mirror.stop();
  }

  /** The shared keyring as last seen, or undefined. */
  keyring(): SharedKeyring | undefined {
    const v = this.mirror.get('keyring');
    return v && this.openKeyring(v);
  }

  /** A club's record as last seen, or undefined. */
  club(club: string): ClubBackupRecord | undefined {
    const v = this.mirror.get(`clubs/${club}`);
    return v && this.openClub(club, v);
  }

  /** Every club record seen (club id, record). */
  clubs(): Array<[string, ClubBackupRecord]> {
    const out: Array<[string, ClubBackupRecord]> = [];
    for (const [rel, v] of this.mirror.entries()) {
      if (!rel.startsWith('clubs/')) continue;
      const club = rel.slice('clubs/'.length);
      const r = this.openClub(club, v);
      if (r) out.push([club, r]);
    }
    return out;
  }

  /**
   * Offer this member's keyring: written when etcd has none (the first member), else etcd's is
   * returned unchanged. Either way the result is the keyring every member uses.
   * @throws ClusterError ETCD_UNAVAILABLE, LOG_CORRUPT (a record that fails authentication).
   */
  async shareKeyring(local: SharedKeyring): Promise<SharedKeyring> {
    return this.update(KEYRING_KEY, (have) => (have ? undefined : this.sealKeyring(local)), (v) => this.mustOpen(() => this.openKeyring(v), 'keyring'));
  }

  /**
   * Publish a keyring: after a rotation on this member (`keys rotate-archive`) the new current key
   * with every retired key of the old ring kept (merge); after `keys forget-archive-keys` exactly
   * this member's ring (`replace`: the forgotten keys leave every member).
   * @throws ClusterError ETCD_UNAVAILABLE.
   */
  async publishKeyring(ring: SharedKeyring, o: { replace?: boolean } = {}): Promise<SharedKeyring> {
    return this.update(
      KEYRING_KEY,
      (have) => {
        const old = have && !o.replace ? this.openKeyring(have) : undefined;
        const retired = [...(old?.retired ?? []), ...ring.retired];
        const seen = new Set<string>();
        const merged = retired.filter((r) => r.key !== ring.current && !seen.has(r.key) && seen.add(r.key));
        return this.sealKeyring({ current: ring.current, retired: merged.slice(-MAX_RETIRED) });
      },
      (v) => this.mustOpen(() => this.openKeyring(v), 'keyring'),
    );
  }

  /**
   * The club's archive key all members share: `candidate` (hex) when etcd has none yet, else
   * etcd's. @throws ClusterError ETCD_UNAVAILABLE, LOG_CORRUPT.
   */
  async clubKey(club: string, candidate: string): Promise<string> {
    if (!HEX64.test(candidate)) throw new ClusterError('INVALID_ARGUMENT', 'club archive key must be 32 bytes of hex');
    const key = backupClubKey(club);
    const rec = await this.update(key, (have) => (have ? undefined : this.sealClub(club, { archiveKey: candidate, dests: {} })), (v) => this.mustOpen(() => this.openClub(club, v), `record of club ${club}`));
    return rec.archiveKey;
  }

  /**
   * Record that the club's archive `archive` was stored at these destinations at time `t` by
   * this member (a later time already recorded for a destination is kept).
   * @throws ClusterError NOT_FOUND when the club has no record (deleted meanwhile), ETCD_UNAVAILABLE.
   */
  async noteStored(club: string, dests: readonly string[], t: number, archive: string): Promise<ClubBackupRecord> {
    for (const d of dests) if (!DEST.test(d)) throw new ClusterError('INVALID_ARGUMENT', `invalid destination name ${JSON.stringify(d.slice(0, 50))}`);
    const key = backupClubKey(club);
    return this.update(
      key,
      (have) => {
        if (!have) throw new ClusterError('NOT_FOUND', `club ${club} has no backup record (deleted?)`);
        const rec = this.mustOpen(() => this.openClub(club, have), `record of club ${club}`);
        let changed = false;
        for (const d of dests) {
          if ((rec.dests[d]?.t ?? -1) >= t) continue;
          rec.dests[d] = { t, archive, node: this.opts.nodeId };
          changed = true;
        }
        if (Object.keys(rec.dests).length > MAX_DESTINATIONS) throw new ClusterError('INVALID_ARGUMENT', `more than ${MAX_DESTINATIONS} destinations`);
        return changed ? this.sealClub(club, rec) : undefined;
      },
      (v) => this.mustOpen(() => this.openClub(club, v), `record of club ${club}`),
    );
  }

  /**
   * Read-modify-write of one key by compare-and-swap on its mod revision (0: absent), retried
   * while another member wins the race (at most 8 times). `next` returns the new sealed value or
   * undefined to keep the current one; the opened result is returned.
   */
  private async update<T>(key: string, next: (have: Buffer | undefined) => Buffer | undefined, open: (v: Buffer) => T): Promise<T> {
    for (let attempt = 0; attempt < 8; attempt++) {
      const cur = await this.gw.read(`read ${key}`, () => this.gw.kv.get(key).exec());
      const kv = cur.kvs[0];
      const value = next(kv?.value);
      if (value === undefined) {
        if (!kv) throw new ClusterError('NOT_FOUND', `${key} is absent`);
        return open(kv.value);
      }
      const rev = kv ? kv.mod_revision : '0';
      // A lost answer is safe to retry: the compare makes a second write of the same value refuse.
      const res = await this.gw.read(`write ${key}`, () =>
        this.gw.kv
          .if(key, 'Mod', '==', rev)
          .then(this.gw.kv.put(key).value(value))
          .commit(),
      );
      if (res.succeeded) return open(value);
    }
    throw new ClusterError('ETCD_UNAVAILABLE', `${key}: too many concurrent updates`);
  }

  private mustOpen<T>(fn: () => T | undefined, what: string): T {
    const v = fn();
    if (v === undefined) throw new ClusterError('LOG_CORRUPT', `backup ${what} in etcd failed authentication or has an invalid shape`);
    return v;
  }

  private aad(key: string): Buffer {
    return Buffer.from(`commusic-backup|${key}`, 'utf8');
  }

  private sealKeyring(ring: SharedKeyring): Buffer {
    return sealRecord(this.recordKey, Buffer.from(JSON.stringify(ring), 'utf8'), this.aad(KEYRING_KEY));
  }

  private sealClub(club: string, rec: ClubBackupRecord): Buffer {
    return sealRecord(this.recordKey, Buffer.from(JSON.stringify(rec), 'utf8'), this.aad(backupClubKey(club)));
  }

  private openKeyring(v: Buffer): SharedKeyring | undefined {
    try {
      const r = JSON.parse(openRecord(this.recordKey, v, this.aad(KEYRING_KEY)).toString('utf8')) as SharedKeyring;
      if (!HEX64.test(r.current) || !Array.isArray(r.retired) || r.retired.length > MAX_RETIRED) return undefined;
      if (r.retired.some((x) => typeof x?.id !== 'string' || !HEX64.test(x.key) || typeof x.retiredAt !== 'string')) return undefined;
      return r;
    } catch {
      this.logger.warn('backup keyring in etcd failed authentication; ignored', { event: 'cluster.backup.bad-record' });
      return undefined;
    }
  }

  private openClub(club: string, v: Buffer): ClubBackupRecord | undefined {
    try {
      const r = JSON.parse(openRecord(this.recordKey, v, this.aad(backupClubKey(club))).toString('utf8')) as ClubBackupRecord;
      if (!HEX64.test(r.archiveKey) || typeof r.dests !== 'object' || r.dests === null) return undefined;
      const entries = Object.entries(r.dests);
      if (entries.length > MAX_DESTINATIONS) return undefined;
      for (const [d, s] of entries) if (!DEST.test(d) || !Number.isSafeInteger(s?.t) || typeof s.archive !== 'string' || s.archive.length > 200 || typeof s.node !== 'string') return undefined;
      return r;
    } catch {
      this.logger.warn('backup record in etcd failed authentication; ignored', { event: 'cluster.backup.bad-record', clubId: club });
      return undefined;
    }
  }
}
