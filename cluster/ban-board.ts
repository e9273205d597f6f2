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
 * - Following: list the prefix, then watch from the listed revision + 1. A watch that etcd cancels
 *   (history compacted past our revision) or that cannot resume triggers a full resync: list
 *   again and report what appeared and what vanished.
 * The local ban table stays the synchronous accept-time check; this board feeds it.
 */
import { EventEmitter } from 'node:events';
import type { Watcher } from 'etcd3';
import { deriveClusterNameKey, deriveClusterRecordKey, openRecord, sealRecord, sealedName } from '../crypto/cluster-seal.js';
import { ClusterError, silentClusterLogger, type ClusterLogger } from './errors.js';
import { cancelWatcher, type EtcdGateway } from './etcd-gateway.js';
import { BANS_PREFIX } from './keys.js';

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
  private watcher: Watcher | undefined;
  private stopped = false;
  private resyncing: Promise<void> | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  /** Full resyncs done after the first list (compaction, lost watch). */
  resyncs = 0;

  constructor(
    private readonly gw: EtcdGateway,
    private readonly opts: BanBoardOptions,
  ) {
    super();
    this.recordKey = deriveClusterRecordKey(opts.masterKey);
    this.nameKey = deriveClusterNameKey(opts.masterKey);
    this.logger = opts.logger ?? silentClusterLogger;
    this.now = opts.now ?? Date.now;
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
    await this.resync();
  }

  /** Stop following. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    const w = this.watcher;
    this.watcher = undefined;
    if (w) await cancelWatcher(w);
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

  private nameOf(key: Buffer | string): string {
    const k = typeof key === 'string' ? key : key.toString('utf8');
    return k.startsWith(BANS_PREFIX) ? k.slice(BANS_PREFIX.length) : k;
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

  private resync(): Promise<void> {
    if (this.resyncing) return this.resyncing;
    this.resyncing = this.doResync().finally(() => (this.resyncing = undefined));
    return this.resyncing;
  }

  private async doResync(): Promise<void> {
    if (this.stopped) return;
    const old = this.watcher;
    this.watcher = undefined;
    if (old) await cancelWatcher(old);
    const res = await this.gw.read('list bans', () => this.gw.kv.getAll().prefix(BANS_PREFIX).exec());
    const seen = new Set<string>();
    for (const kv of res.kvs) {
      const name = this.nameOf(kv.key);
      seen.add(name);
      this.apply(name, this.decodeValue(name, kv.value));
    }
    for (const name of [...this.byName.keys()]) if (!seen.has(name)) this.apply(name, undefined);
    this.emit('resync', this.byName.size);
    const from = String(BigInt(res.header.revision) + 1n);
    const w = await this.gw.read('watch bans', () => this.gw.kv.watch().prefix(BANS_PREFIX).startRevision(from).create());
    if (this.stopped) {
      await cancelWatcher(w);
      return;
    }
    this.watcher = w;
    w.on('put', (kv) => {
      const name = this.nameOf(kv.key);
      this.apply(name, this.decodeValue(name, kv.value));
    });
    w.on('delete', (kv) => this.apply(this.nameOf(kv.key), undefined));
    w.on('error', () => {
      if (this.stopped || this.watcher !== w) return;
      // etcd already cancelled this watch: drop it without a cancel request.
      this.watcher = undefined;
      this.resyncs++;
      this.logger.warn('cluster ban watch cancelled (compaction or lost stream); listing again', { event: 'cluster.ban.resync' });
      const retry = (): void => {
        if (this.stopped) return;
        this.resync().catch(() => {
          const t = setTimeout(retry, 250);
          t.unref?.();
        });
      };
      retry();
    });
  }
}
