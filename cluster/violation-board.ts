/**
 * Violation counts shared by all servers (issue 14: "spreading attempts over N servers does not
 * give N times the budget"; docs/BANS-AND-ALERTS.md "Several servers").
 *
 * Each member publishes, per (kind, source) it counts, the times of its violations inside the
 * counting window under
 *
 *   violations/<HMAC of "kind source">/<node>   sealed {kind, source, node, times[]}
 *
 * bound to a lease whose TTL is the kind's counting window (findTime), so etcd forgets a count
 * when its window has passed. Every member mirrors the prefix; the ban engine judges on its own
 * count plus the others' (`remote`), synchronously, from the mirror. etcd never holds an address
 * in plaintext: the key is an HMAC under the cluster name key, the value is sealed under the
 * cluster record key with the etcd key as associated data (crypto/cluster-seal.ts).
 *
 * Bounded etcd traffic: `publish` only marks the (kind, source) dirty; a flush at most every
 * `flushEveryMs` writes at most `maxPerFlush` of them (one lease grant per distinct window, one
 * put each), so a flood of violations from one source is one write per interval, and a flood
 * from many sources is at most maxPerFlush / flushEveryMs writes. At most `maxPublished` counts of
 * this member live in etcd at once; beyond, a source is counted here only (as without a cluster).
 * What the others have not seen yet is at most the violations of the last flush interval plus
 * the watch's propagation (tens of milliseconds on a LAN): the bound documented for the ban.
 */
import { EventEmitter } from 'node:events';
import { deriveClusterNameKey, deriveClusterRecordKey, openRecord, sealRecord, sealedName } from '../crypto/cluster-seal.js';
import { silentClusterLogger, type ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { checkNodeId } from './keys.js';
import { PrefixMirror } from './prefix-mirror.js';

export const VIOLATIONS_PREFIX = 'violations/';
/** Times carried per (kind, source, node): the ban policy's maxRetry is at most 1000. */
export const MAX_TIMES = 1000;

interface CountRecord {
  kind: string;
  source: string;
  node: string;
  /** Violation times (ms since the epoch) inside the window when published. */
  times: number[];
}

export interface ViolationBoardOptions {
  masterKey: Uint8Array;
  nodeId: string;
  logger?: ClusterLogger;
  /** Least time between two flushes (ms); default 100. */
  flushEveryMs?: number;
  /** Counts written per flush at most; default 50. */
  maxPerFlush?: number;
  /** Counts of this member live in etcd at most; default 10 000. */
  maxPublished?: number;
  /** Wall clock (ms). */
  now?: () => number;
}

/** What the ban engine needs (daemon/bans/ban-engine.ts SharedCounts). */
export interface SharedViolationCounts {
  remote(kind: string, source: string, since: number): number;
  publish(kind: string, source: string, times: readonly number[], windowMs: number): void;
}

/** Events: 'flushed' (number of counts written). */
export class ViolationBoard extends EventEmitter implements SharedViolationCounts {
  private readonly recordKey: Buffer;
  private readonly nameKey: Buffer;
  private readonly logger: ClusterLogger;
  private readonly now: () => number;
  private readonly mirror: PrefixMirror;
  /** name -> node -> record, from the mirror (this member's own included). */
  private readonly counts = new Map<string, Map<string, CountRecord>>();
  /** name -> what to write at the next flush (insertion order: first marked, first written). */
  private readonly dirty = new Map<string, { kind: string; source: string; times: number[]; windowMs: number }>();
  /** name -> ms when this member's key for it expires in etcd. */
  private readonly published = new Map<string, number>();
  private readonly flushEveryMs: number;
  private readonly maxPerFlush: number;
  private readonly maxPublished: number;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private lastFlush = 0;
  private stopped = false;
  /** Counts written to etcd since start (puts and deletes). */
  writes = 0;
  /** Counts not published because `maxPublished` was reached. */
  skipped = 0;

  constructor(
    private readonly gw: EtcdGateway,
    private readonly opts: ViolationBoardOptions,
  ) {
    super();
    checkNodeId(opts.nodeId);
    this.recordKey = deriveClusterRecordKey(opts.masterKey);
    this.nameKey = deriveClusterNameKey(opts.masterKey);
    this.logger = opts.logger ?? silentClusterLogger;
    this.now = opts.now ?? Date.now;
    this.flushEveryMs = opts.flushEveryMs ?? 100;
    this.maxPerFlush = opts.maxPerFlush ?? 50;
    this.maxPublished = opts.maxPublished ?? 10_000;
    this.mirror = new PrefixMirror(gw, VIOLATIONS_PREFIX);
    this.mirror.on('change', (rel: string, value: Buffer | undefined) => this.apply(rel, value));
  }

  async start(): Promise<void> {
    await this.mirror.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.flushing?.catch(() => undefined);
    await this.mirror.stop();
  }

  private name(kind: string, source: string): string {
    return sealedName(this.nameKey, `${kind} ${source}`);
  }

  /** Violations of `kind` from `source` (the policy's source key) the other members counted after `since` (ms). */
  remote(kind: string, source: string, since: number): number {
    const byNode = this.counts.get(this.name(kind, source));
    if (!byNode) return 0;
    let n = 0;
    for (const [node, rec] of byNode) {
      if (node === this.opts.nodeId) continue;
      for (const t of rec.times) if (t > since) n++;
    }
    return n;
  }

  /**
   * This member's violations of `kind` from `source` inside the window (times in ms; empty: none,
   * e.g. after the source was banned), written at the next flush.
   */
  publish(kind: string, source: string, times: readonly number[], windowMs: number): void {
    if (this.stopped || kind.length > 32 || source.length > 64) return;
    const name = this.name(kind, source);
    // The cap covers what is in etcd and what waits to be written (so `dirty` is bounded too).
    if (!this.published.has(name) && !this.dirty.has(name) && times.length > 0 && this.published.size + this.dirty.size >= this.maxPublished) {
      this.purgePublished();
      if (this.published.size + this.dirty.size >= this.maxPublished) {
        this.skipped++;
        return;
      }
    }
    this.dirty.set(name, { kind, source, times: times.slice(-MAX_TIMES), windowMs });
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.flushing || this.stopped || this.dirty.size === 0) return;
    const wait = Math.max(0, this.lastFlush + this.flushEveryMs - this.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flushing = this.flush().finally(() => {
        this.flushing = undefined;
        this.schedule();
      });
    }, wait);
    this.timer.unref?.();
  }

  private purgePublished(): void {
    const t = this.now();
    for (const [name, until] of this.published) if (until <= t) this.published.delete(name);
  }

  private async flush(): Promise<void> {
    this.lastFlush = this.now();
    const batch = [...this.dirty.entries()].slice(0, this.maxPerFlush);
    for (const [name] of batch) this.dirty.delete(name);
    const byTtl = new Map<number, Array<[string, { kind: string; source: string; times: number[] }]>>();
    const deletes: string[] = [];
    for (const [name, d] of batch) {
      if (d.times.length === 0) {
        if (this.published.delete(name)) deletes.push(name);
        continue;
      }
      const ttl = Math.max(1, Math.ceil(d.windowMs / 1000));
      byTtl.set(ttl, [...(byTtl.get(ttl) ?? []), [name, d]]);
    }
    try {
      await Promise.all([
        ...deletes.map((name) => this.gw.read('withdraw violation count', () => this.gw.kv.delete().key(this.key(name)).exec())),
        ...[...byTtl].map(([ttl, items]) => this.putAll(ttl, items)),
      ]);
      const n = deletes.length + [...byTtl.values()].reduce((a, x) => a + x.length, 0);
      this.writes += n;
      this.emit('flushed', n);
    } catch (e) {
      // The local count still applies; the others see this source's next flush.
      this.logger.warn('violation counts not shared with the cluster', { event: 'cluster.violations.publish', error: (e as Error).name });
    }
  }

  private async putAll(ttl: number, items: Array<[string, { kind: string; source: string; times: number[] }]>): Promise<void> {
    // Counted against maxPublished from before the write: a count in flight may already be in
    // etcd (another member can see it through its watch) before this write's promise resolves,
    // and sources marked meanwhile must not take its place under the cap. The lease is granted
    // after this point and etcd expires leases late rather than early: one second more keeps the
    // local mark from ending before the key does.
    const until = this.now() + ttl * 1000 + 1000;
    for (const [name] of items) {
      this.published.delete(name);
      this.published.set(name, until);
    }
    await this.gw.read('publish violation counts', async () => {
      const lease = this.gw.kv.lease(ttl, { autoKeepAlive: false });
      lease.on('lost', () => undefined);
      try {
        const id = await lease.grant();
        await Promise.all(
          items.map(([name, d]) => {
            const rec: CountRecord = { kind: d.kind, source: d.source, node: this.opts.nodeId, times: d.times };
            const key = this.key(name);
            return this.gw.kv.put(key).value(sealRecord(this.recordKey, Buffer.from(JSON.stringify(rec), 'utf8'), this.aad(key))).lease(id).exec();
          }),
        );
      } finally {
        lease.release();
      }
    });
  }

  private key(name: string): string {
    return `${VIOLATIONS_PREFIX}${name}/${this.opts.nodeId}`;
  }

  private aad(key: string): Buffer {
    return Buffer.from(`commusic-violations|${key}`, 'utf8');
  }

  private apply(rel: string, value: Buffer | undefined): void {
    const slash = rel.indexOf('/');
    if (slash <= 0) return;
    const name = rel.slice(0, slash);
    const node = rel.slice(slash + 1);
    if (!value) {
      const byNode = this.counts.get(name);
      byNode?.delete(node);
      if (byNode?.size === 0) this.counts.delete(name);
      return;
    }
    const rec = this.open(rel, name, node, value);
    if (!rec) return;
    let byNode = this.counts.get(name);
    if (!byNode) this.counts.set(name, (byNode = new Map()));
    byNode.set(node, rec);
  }

  private open(rel: string, name: string, node: string, value: Buffer): CountRecord | undefined {
    try {
      const r = JSON.parse(openRecord(this.recordKey, value, this.aad(`${VIOLATIONS_PREFIX}${rel}`)).toString('utf8')) as CountRecord;
      if (typeof r.kind !== 'string' || typeof r.source !== 'string' || r.node !== node || !Array.isArray(r.times) || r.times.length > MAX_TIMES) return undefined;
      if (r.times.some((t) => !Number.isSafeInteger(t))) return undefined;
      if (this.name(r.kind, r.source) !== name) return undefined;
      return r;
    } catch {
      this.logger.warn('cluster violation count failed authentication; ignored', { event: 'cluster.violations.bad-record' });
      return undefined;
    }
  }
}
