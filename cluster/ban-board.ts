/**
 * One ban table for all servers (issue 14): every ban is also written to etcd under `bans/`, and
 * every server follows that prefix so a ban made on one server closes the source's connections on
 * all of them, and ends on all of them.
 *
 * - The etcd key is an HMAC of the address and the value is sealed under a key derived from the
 *   shared master key (crypto/cluster-seal.ts): etcd never holds an address in plaintext.
 * - The key is bound to its own lease whose TTL is the remaining ban time (rounded up to whole
 *   seconds), so etcd deletes it when the ban ends; each server also ends it by the `untilMs` in
 *   the record, whichever comes first.
 * - Following: a PrefixMirror of `bans/` (list, then watch from the listed revision + 1; a watch
 *   that etcd cancels, e.g. history compacted past it, leads to a full list again, reported as
 *   what appeared and what vanished).
 * The local ban table stays the synchronous accept-time check; this board feeds it.
 */
import { EventEmitter } from 'node:events';
import { deriveClusterNameKey, deriveClusterRecordKey, openRecord, sealRecord, sealedName } from '../crypto/cluster-seal.js';
import { ClusterError, silentClusterLogger, type ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { BANS_PREFIX } from './keys.js';
import { PrefixMirror } from './prefix-mirror.js';

export interface ClusterBan {
  /** Canonical address or CIDR, as the local ban table writes it. */
  address: string;
  /** Wall-clock end of the ban (ms since the epoch). */
  untilMs: number;
  /** Short reason as the ban table keeps it (log-safe: never personal data). */
  reason: string;
  /** Node id of the server that made the ban. */
  origin: string;
}

export interface BanBoardOptions {
  masterKey: Uint8Array;
  nodeId: string;
  logger?: ClusterLogger;
  /** Wall clock in ms (tests inject one). */
  now?: () => number;
}

/** Longest ban the board carries (one year); longer bans are capped in etcd, not locally. */
export const MAX_BAN_MS = 366 * 24 * 3600 * 1000;

/**
 * Events: 'ban' (ClusterBan) when a ban appears, 'unban' (address) when one ends or is lifted,
 * 'resync' (count) after a full list.
 */
export class BanBoard extends EventEmitter {
  private readonly recordKey: Buffer;
  private readonly nameKey: Buffer;
  private readonly logger: ClusterLogger;
  private readonly now: () => number;
  private readonly byName = new Map<string, ClusterBan>();
  private readonly mirror: PrefixMirror;
  private stopped = false;
  private expiryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly gw: EtcdGateway,
    private readonly opts: BanBoardOptions,
  ) {
    super();
    this.recordKey = deriveClusterRecordKey(opts.masterKey);
    this.nameKey = deriveClusterNameKey(opts.masterKey);
    this.logger = opts.logger ?? silentClusterLogger;
    this.now = opts.now ?? Date.now;
    this.mirror = new PrefixMirror(gw, BANS_PREFIX);
    this.mirror.on('change', (name: string, value: Buffer | undefined) => this.apply(name, value && this.decodeValue(name, value)));
    this.mirror.on('resync', () => {
      this.logger.warn('cluster ban watch cancelled (compaction or lost stream); listed again', { event: 'cluster.ban.resync' });
      this.emit('resync', this.byName.size);
    });
  }

  /** Full lists done after the first (compaction, lost watch). */
  get resyncs(): number {
    return this.mirror.resyncs;
  }

  private name(address: string): string {
    return sealedName(this.nameKey, address);
  }

  private aad(name: string): Buffer {
    return Buffer.from(`commusic-ban|${name}`, 'utf8');
  }

  /**
   * Publish a ban to every server. Resolves once etcd holds it.
   * @throws ClusterError INVALID_ARGUMENT for an empty address or a ban already over;
   *   ETCD_UNAVAILABLE.
   */
  async publish(ban: Omit<ClusterBan, 'origin'>): Promise<void> {
    if (ban.address.length === 0 || ban.address.length > 64) throw new ClusterError('INVALID_ARGUMENT', 'ban address must be 1 to 64 characters');
    if (ban.reason.length > 200 || /[\u0000-\u001f\u007f]/.test(ban.reason)) throw new ClusterError('INVALID_ARGUMENT', 'ban reason must be at most 200 printable characters');
    const remaining = Math.min(ban.untilMs - this.now(), MAX_BAN_MS);
    if (!(remaining > 0)) throw new ClusterError('INVALID_ARGUMENT', 'ban is already over');
    const rec: ClusterBan = { address: ban.address, untilMs: ban.untilMs, reason: ban.reason, origin: this.opts.nodeId };
    const name = this.name(ban.address);
    const sealed = sealRecord(this.recordKey, Buffer.from(JSON.stringify(rec), 'utf8'), this.aad(name));
    const ttl = Math.max(1, Math.ceil(remaining / 1000));
    // A put of a whole value is idempotent, so it may be retried; a lease granted by a failed
    // attempt simply expires.
    await this.gw.read('publish ban', async () => {
      const lease = this.gw.kv.lease(ttl, { autoKeepAlive: false });
      lease.on('lost', () => undefined);
      try {
        const id = await lease.grant();
        await this.gw.kv.put(`${BANS_PREFIX}${name}`).value(sealed).lease(id).exec();
      } finally {
        lease.release();
      }
    });
  }

  /** Lift a ban on every server (operator unban). */
  async lift(address: string): Promise<void> {
    const name = this.name(address);
    await this.gw.read('lift ban', () => this.gw.kv.delete().key(`${BANS_PREFIX}${name}`).exec());
  }

  /** Bans in force now, as this server last saw them. */
  active(): ClusterBan[] {
    const t = this.now();
    return [...this.byName.values()].filter((b) => b.untilMs > t);
  }

  /** List the prefix and start following it. */
  async start(): Promise<void> {
    await this.mirror.start();
    this.emit('resync', this.byName.size);
  }

  /** Stop following. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    await this.mirror.stop();
  }

  private decodeValue(name: string, value: Buffer): ClusterBan | undefined {
    try {
      const rec = JSON.parse(openRecord(this.recordKey, value, this.aad(name)).toString('utf8')) as ClusterBan;
      if (typeof rec.address !== 'string' || typeof rec.untilMs !== 'number' || typeof rec.reason !== 'string' || typeof rec.origin !== 'string') return undefined;
      if (this.name(rec.address) !== name) return undefined;
      return rec;
    } catch {
      this.logger.warn('cluster ban record failed authentication; ignored', { event: 'cluster.ban.bad-record' });
      return undefined;
    }
  }


  private apply(name: string, rec: ClusterBan | undefined): void {
    const had = this.byName.get(name);
    if (rec && rec.untilMs > this.now()) {
      this.byName.set(name, rec);
      if (!had || had.untilMs !== rec.untilMs) this.emit('ban', rec);
    } else if (had) {
      this.byName.delete(name);
      this.emit('unban', had.address);
    }
    this.armExpiry();
  }

  /** End bans by their own `untilMs` too, not only by etcd's lease expiry. */
  private armExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    if (this.stopped || this.byName.size === 0) return;
    const next = Math.min(...[...this.byName.values()].map((b) => b.untilMs));
    this.expiryTimer = setTimeout(() => {
      const t = this.now();
      for (const [name, b] of [...this.byName]) {
        if (b.untilMs <= t) {
          this.byName.delete(name);
          this.emit('unban', b.address);
        }
      }
      this.armExpiry();
    }, Math.max(1, Math.min(next - this.now(), 2 ** 31 - 1)));
    this.expiryTimer.unref?.();
  }
}
