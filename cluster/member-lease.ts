/**
 * A server's lease in etcd, judged by the server's own clock (issue 14).
 *
 * The lease is the root of everything this server may do in the cluster: its `members/` key, the
 * placement-leader key and every club owner key are bound to it, so when etcd expires it, all of
 * them vanish at once and the other servers take over. The danger is the other direction: etcd3's
 * own keepalive reports a lost lease only after 2 x TTL, long after etcd has expired it and a
 * standby may already serve the club. So this class keeps its own deadline:
 *
 *   validUntil = (local time the last successful keepalive was SENT) + TTL granted - margin
 *
 * etcd starts the new TTL when the leader receives the keepalive, which is after we sent it, and a
 * leader change only extends leases; so etcd cannot expire the lease before `validUntil + margin`
 * by a clock running at the same rate. `margin` absorbs clock-rate error (default 10 % of the TTL,
 * at least 200 ms). At `validUntil` the lease is dead for this server for good ('expired' event):
 * it stops serving and must join again with a new lease (so new fencing tokens).
 */
import { EventEmitter } from 'node:events';
import type { Lease } from 'etcd3';
import { ClusterError } from './errors.js';
import { isTransient, type EtcdGateway } from './etcd-gateway.js';

export interface MemberLeaseOptions {
  /** Lease TTL in whole seconds (etcd's unit), 1 to 60; default 2. */
  ttlSec?: number;
  /** Safety margin in ms subtracted from each validity window (default max(200, 10 % of TTL)). */
  marginMs?: number;
  /** Clock in ms (tests inject one); default `performance.now()` based monotonic time. */
  now?: () => number;
}

export type MemberLeaseState = 'valid' | 'expired' | 'revoked';

const monotonic = () => performance.timeOrigin + performance.now();

export class MemberLease extends EventEmitter {
  readonly ttlSec: number;
  readonly marginMs: number;
  /** etcd's lease id (decimal string). */
  readonly id: string;
  private readonly now: () => number;
  private validUntilMs: number;
  private stateValue: MemberLeaseState = 'valid';
  private keepTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private keepaliveInFlight = false;

  private constructor(
    private readonly gw: EtcdGateway,
    private readonly lease: Lease,
    id: string,
    ttlSec: number,
    marginMs: number,
    now: () => number,
    grantSentAt: number,
  ) {
    super();
    this.id = id;
    this.ttlSec = ttlSec;
    this.marginMs = marginMs;
    this.now = now;
    this.validUntilMs = grantSentAt + ttlSec * 1000 - marginMs;
    this.armExpiry();
    this.keepTimer = setInterval(() => void this.keepalive(), Math.max(100, Math.floor((ttlSec * 1000) / 3)));
    this.keepTimer.unref?.();
  }

  /**
   * Grant a lease and start keeping it alive.
   * @throws ClusterError ETCD_UNAVAILABLE when etcd does not grant within the read budget.
   */
  static async grant(gw: EtcdGateway, opts: MemberLeaseOptions = {}): Promise<MemberLease> {
    const ttlSec = opts.ttlSec ?? 2;
    if (!Number.isInteger(ttlSec) || ttlSec < 1 || ttlSec > 60) throw new ClusterError('INVALID_ARGUMENT', 'lease TTL must be 1 to 60 whole seconds');
    const marginMs = opts.marginMs ?? Math.max(200, ttlSec * 100);
    if (marginMs >= ttlSec * 1000) throw new ClusterError('INVALID_ARGUMENT', 'lease margin must be below the TTL');
    const now = opts.now ?? monotonic;
    const deadline = now() + gw.readBudgetMs;
    let delay = 25;
    for (;;) {
      const sentAt = now();
      const lease = gw.kv.lease(ttlSec, { autoKeepAlive: false });
      lease.on('lost', () => undefined);
      try {
        const id = await lease.grant();
        return new MemberLease(gw, lease, String(id), ttlSec, marginMs, now, sentAt);
      } catch (e) {
        // A grant whose answer was lost leaves an orphan lease in etcd that expires on its own.
        lease.release();
        if (!isTransient(e)) throw e;
        if (now() + delay > deadline) throw new ClusterError('ETCD_UNAVAILABLE', 'etcd did not grant a lease', { cause: e });
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 200);
      }
    }
  }

  get state(): MemberLeaseState {
    if (this.stateValue === 'valid' && this.now() >= this.validUntilMs) this.expire();
    return this.stateValue;
  }

  /** Whether this server may still act under the lease right now, by its own clock. */
  isValid(): boolean {
    return this.state === 'valid';
  }

  /** Local time (ms, same clock as `now`) until which the lease is certainly alive in etcd. */
  get validUntil(): number {
    return this.validUntilMs;
  }

  /** Remaining validity in ms (0 once expired). */
  remainingMs(): number {
    return this.isValid() ? Math.max(0, this.validUntilMs - this.now()) : 0;
  }

  /** @throws ClusterError LEASE_EXPIRED when the lease is no longer valid by this server's clock. */
  assertValid(): void {
    if (!this.isValid()) throw new ClusterError('LEASE_EXPIRED', `this server's etcd lease is ${this.stateValue}; it must not act for the cluster`);
  }

  /** Send one keepalive now; extends `validUntil` on success. Resolves false when it failed. */
  async keepalive(): Promise<boolean> {
    if (this.stateValue !== 'valid' || this.keepaliveInFlight) return false;
    this.keepaliveInFlight = true;
    const sentAt = this.now();
    try {
      const budget = Math.max(0, this.validUntilMs - sentAt);
      const res = await this.gw.once('lease keepalive', () => this.lease.keepaliveOnce({ deadline: Date.now() + Math.min(this.gw.callTimeoutMs, Math.max(1, budget)) }));
      const ttl = Number(res.TTL);
      if (this.stateValue !== 'valid') return false;
      if (!(ttl > 0)) {
        this.expire();
        return false;
      }
      const until = sentAt + ttl * 1000 - this.marginMs;
      if (until > this.validUntilMs && this.now() < this.validUntilMs) {
        this.validUntilMs = until;
        this.armExpiry();
      }
      this.emit('renewed', this.validUntilMs);
      return true;
    } catch (e) {
      if (e instanceof Error && e.name === 'EtcdLeaseInvalidError') this.expire();
      return false;
    } finally {
      this.keepaliveInFlight = false;
    }
  }

  /** Stop keeping the lease alive and revoke it in etcd (best effort: it expires anyway). */
  async revoke(): Promise<void> {
    if (this.stateValue === 'revoked') return;
    this.stop('revoked');
    try {
      await this.gw.once('lease revoke', () => this.lease.revoke());
    } catch {
      // the lease runs out on its own within the TTL
    }
  }

  /**
   * Stop sending keepalives but keep judging validity by the clock: what a network partition or a
   * long pause does to this server. For failure drills and tests.
   */
  suspendKeepalive(): void {
    if (this.keepTimer) clearInterval(this.keepTimer);
    this.keepTimer = undefined;
  }

  /** Stop keepalives without revoking (the lease runs out in etcd within the TTL), as a crash would. */
  abandon(): void {
    if (this.stateValue === 'valid') this.stop('expired');
    this.lease.release();
  }

  private armExpiry(): void {
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(() => {
      if (this.stateValue === 'valid' && this.now() >= this.validUntilMs) this.expire();
      else if (this.stateValue === 'valid') this.armExpiry();
    }, Math.max(1, Math.ceil(this.validUntilMs - this.now())));
    this.expiryTimer.unref?.();
  }

  private expire(): void {
    if (this.stateValue !== 'valid') return;
    this.stop('expired');
    this.lease.release();
    this.emit('expired');
  }

  private stop(state: MemberLeaseState): void {
    this.stateValue = state;
    if (this.keepTimer) clearInterval(this.keepTimer);
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.keepTimer = undefined;
    this.expiryTimer = undefined;
  }
}
