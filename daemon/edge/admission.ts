import { formatPrefix, parseAddress, prefixOf } from '../../storage/bans/ban-address.js';
import type { Limits } from '../main/config.js';

/**
 * Admission before login: how many connections one source may hold at each stage, and who
 * gives way when a pool is full. The edge's answer to a few sources locking everyone out
 * (OpenSSH MaxStartups start:rate:full, PerSourceMaxStartups; issue 11).
 *
 * Two stages, each with a limit per address, per prefix (IPv4 /24, IPv6 /64 by default: one
 * host or one customer network) and in all:
 *  - `pending`: accepted, handshake not finished (`maxPendingHandshakes*`);
 *  - `prelogin`: handshake finished, nobody logged in yet (`maxPreLogin*`).
 * A newcomer over its address or prefix limit is refused. When a pool holds `earlyDropStart` or
 * more (pending stage only) or is full, the source holding the most slots gives way: a newcomer
 * from a lighter source takes the place of the heaviest source's OLDEST slot (evicted at once
 * when full, with the early-drop probability before), and a newcomer from the heaviest source
 * itself is dropped with probability rate + (1 - rate) * (n - start) / (full - start) and
 * always when full. So a legitimate client holding nothing always finds a place while the
 * sources that fill the pool lose theirs. Every refusal is reported so it can count as a
 * violation. No I/O, no timers: the daemon passes the clock and the random source.
 */
export type Stage = 'pending' | 'prelogin';

export type RefusalReason = 'per-address' | 'per-prefix' | 'pool-full' | 'early-drop';

/** A connection holding a slot. `evict` closes it (called at most once). */
export interface SlotHolder {
  evict(stage: Stage): void;
}

export interface Slot {
  readonly stage: Stage;
  readonly ip: string;
  readonly prefix: string;
  readonly since: number;
  readonly holder: SlotHolder;
  released: boolean;
}

export type AdmitResult =
  | { readonly ok: true; readonly slot: Slot; readonly evicted?: Slot }
  | { readonly ok: false; readonly reason: RefusalReason };

interface StageLimits {
  readonly full: number;
  readonly perIp: number;
  readonly perPrefix: number;
  /** Early drop from this many on; Infinity: none (drop only when full). */
  readonly start: number;
  readonly rate: number;
}

class Pool {
  total = 0;
  readonly perIp = new Map<string, number>();
  /** Slots per prefix, oldest first (a Set keeps insertion order). */
  readonly byPrefix = new Map<string, Set<Slot>>();

  constructor(readonly limits: StageLimits) {}

  add(slot: Slot): void {
    let set = this.byPrefix.get(slot.prefix);
    if (!set) this.byPrefix.set(slot.prefix, (set = new Set()));
    set.add(slot);
    this.perIp.set(slot.ip, (this.perIp.get(slot.ip) ?? 0) + 1);
    this.total++;
  }

  remove(slot: Slot): void {
    const set = this.byPrefix.get(slot.prefix);
    if (!set?.delete(slot)) return;
    if (set.size === 0) this.byPrefix.delete(slot.prefix);
    const n = (this.perIp.get(slot.ip) ?? 1) - 1;
    if (n <= 0) this.perIp.delete(slot.ip);
    else this.perIp.set(slot.ip, n);
    this.total--;
  }

  /**
   * The source holding the most slots, counted per prefix (so 64 addresses of one /64 weigh as
   * one source); ties: the one whose oldest slot is oldest.
   */
  heaviest(): { prefix: string; count: number; oldest: Slot } | undefined {
    let best: { prefix: string; count: number; oldest: Slot } | undefined;
    for (const [prefix, set] of this.byPrefix) {
      const oldest = set.values().next().value as Slot;
      if (!best || set.size > best.count || (set.size === best.count && oldest.since < best.oldest.since)) {
        best = { prefix, count: set.size, oldest };
      }
    }
    return best;
  }
}

/** Entries of Admission's address-to-prefix cache before it is emptied. */
const PREFIX_CACHE_MAX = 4096;

export class Admission {
  private readonly pools: Record<Stage, Pool>;

  constructor(
    private readonly limits: Limits,
    private readonly random: () => number = Math.random,
  ) {
    this.pools = {
      pending: new Pool({
        full: limits.maxPendingHandshakes,
        perIp: limits.maxPendingHandshakesPerIp,
        perPrefix: limits.maxPendingHandshakesPerPrefix,
        start: Math.min(limits.earlyDropStart, limits.maxPendingHandshakes),
        rate: limits.earlyDropRate,
      }),
      prelogin: new Pool({
        full: limits.maxPreLogin,
        perIp: limits.maxPreLoginPerIp,
        perPrefix: limits.maxPreLoginPerPrefix,
        start: Infinity,
        rate: 1,
      }),
    };
  }

  /**
   * Prefixes of recently seen addresses: parsing and formatting an address costs about 1 µs and
   * 1.7 KB of garbage, twice per connection (pending, then prelogin). Bounded: emptied when it
   * reaches PREFIX_CACHE_MAX entries, so many source addresses cost what they did without it.
   */
  private readonly prefixes = new Map<string, string>();
  private prefixLengths = -1;

  /** The prefix an address is limited under ("192.0.2.0/24", "2001:db8:1:2::/64"). */
  prefixOf(ip: string): string {
    const lengths = this.limits.limitPrefixV4 * 256 + this.limits.limitPrefixV6;
    if (lengths !== this.prefixLengths) {
      // The limits object changed under us: nothing cached was computed with these lengths.
      this.prefixes.clear();
      this.prefixLengths = lengths;
    }
    const known = this.prefixes.get(ip);
    if (known !== undefined) return known;
    const a = parseAddress(ip);
    const prefix = a ? formatPrefix(prefixOf(a, a.family === 4 ? this.limits.limitPrefixV4 : this.limits.limitPrefixV6)) : ip;
    if (this.prefixes.size >= PREFIX_CACHE_MAX) this.prefixes.clear();
    this.prefixes.set(ip, prefix);
    return prefix;
  }

  /** Slots held at a stage in all. */
  count(stage: Stage): number {
    return this.pools[stage].total;
  }

  /** Slots an address holds at a stage. */
  countFor(stage: Stage, ip: string): number {
    return this.pools[stage].perIp.get(ip) ?? 0;
  }

  /**
   * Ask for a slot at a stage for a connection from `ip`. On success the slot is held until
   * release(); `evicted` is a slot of the heaviest source that was taken away (its holder's
   * evict() has been called and the slot released).
   */
  admit(stage: Stage, ip: string, holder: SlotHolder, now: number): AdmitResult {
    const pool = this.pools[stage];
    const { limits } = pool;
    const prefix = this.prefixOf(ip);
    if ((pool.perIp.get(ip) ?? 0) >= limits.perIp) return { ok: false, reason: 'per-address' };
    const mine = pool.byPrefix.get(prefix)?.size ?? 0;
    if (mine >= limits.perPrefix) return { ok: false, reason: 'per-prefix' };
    let evicted: Slot | undefined;
    if (pool.total >= limits.start || pool.total >= limits.full) {
      const full = pool.total >= limits.full;
      const span = Math.max(1, limits.full - limits.start);
      const p = full ? 1 : limits.rate + (1 - limits.rate) * ((pool.total - limits.start) / span);
      const heavy = pool.heaviest();
      if (heavy && heavy.prefix !== prefix && heavy.count > mine + 1) {
        // A lighter newcomer: the heaviest source gives way (its oldest slot).
        if (full || this.random() < p) {
          evicted = heavy.oldest;
          this.release(evicted);
          evicted.holder.evict(stage);
        }
      } else if (full) {
        return { ok: false, reason: 'pool-full' };
      } else if (this.random() < p) {
        return { ok: false, reason: 'early-drop' };
      }
    }
    const slot: Slot = { stage, ip, prefix, since: now, holder, released: false };
    pool.add(slot);
    return evicted ? { ok: true, slot, evicted } : { ok: true, slot };
  }

  /** Give a slot back (idempotent). */
  release(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    this.pools[slot.stage].remove(slot);
  }
}
