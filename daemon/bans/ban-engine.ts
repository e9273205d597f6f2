import { PrefixMap, parsePrefix } from '../../storage/bans/ban-address.js';
import type { BanEntry, BanTable, BanViolation } from '../../storage/bans/ban-store.js';
import {
  banDuration,
  formatDuration,
  nextLevel,
  parseBanPolicy,
  ruleFor,
  sourceKey,
  type BanPolicy,
  type BanPolicyConfig,
} from './ban-policy.js';
import { nullLogger, type Logger } from '../common/log.js';
import type { ViolationBus, ViolationEvent } from './violations.js';

export type BanOutcome =
  | { readonly action: 'ignored'; readonly reason: 'bad-address' }
  | { readonly action: 'logged'; readonly source: string } // policy disabled
  | { readonly action: 'exempt'; readonly source: string; readonly exempt: string }
  | { readonly action: 'already-banned'; readonly source: string; readonly ban: BanEntry }
  | {
      readonly action: 'counted';
      readonly source: string;
      readonly count: number;
      readonly maxRetry: number;
    }
  | {
      readonly action: 'banned';
      readonly source: string;
      readonly ban: BanEntry;
      readonly violations: readonly BanViolation[];
    };

export type BanListener = (ban: BanEntry, violations: readonly BanViolation[]) => void;

/**
 * Counts shared with other servers (cluster/violation-board.ts): `remote` answers synchronously
 * from a local mirror; `publish` hands this server's count over (written coalesced).
 */
export interface SharedCounts {
  /** Violations of `kind` from `source` the other servers counted after `since` (ms). */
  remote(kind: string, source: string, since: number): number;
  /** This server's violation times of `kind` from `source` inside the window (empty after a ban). */
  publish(kind: string, source: string, times: readonly number[], windowMs: number): void;
}

export interface BanEngineOptions {
  readonly table: BanTable;
  /** Subscribe to this bus; without one, feed events to `handle()` yourself. */
  readonly bus?: ViolationBus;
  /** A parsed policy or a config to parse (defaults filled in). */
  readonly policy?: BanPolicy | BanPolicyConfig;
  /** The security log: every violation and every ban goes here. */
  readonly logger?: Logger;
  /** Purge expired bans this often (ms); 0 disables the timer. Default one minute. */
  readonly purgeEvery?: number;
  /** Clock for the purge timer only; events carry their own time. */
  readonly now?: () => number;
}

interface Tracked {
  /** Violations inside the window, oldest first, at most maxRetry. */
  readonly violations: BanViolation[];
}

function toViolation(e: ViolationEvent): BanViolation {
  const v: { -readonly [K in keyof BanViolation]: BanViolation[K] } = {
    kind: e.kind,
    time: e.time,
    detail: e.detail,
  };
  if (e.user !== undefined) v.user = e.user;
  if (e.club !== undefined) v.club = e.club;
  if (e.command !== undefined) v.command = e.command;
  if (e.right !== undefined) v.right = e.right;
  return v;
}

function isParsedPolicy(p: BanPolicy | BanPolicyConfig): p is BanPolicy {
  return typeof (p as BanPolicy).banTime === 'number' && typeof (p as BanPolicy).kinds === 'object';
}

/**
 * Applies the ban policy to the violation stream: logs every violation, counts the counted kinds
 * per source within their window, bans through the BanTable and tells `onBan` listeners (the
 * alert mailer). Memory stays bounded under a flood: a source's counter holds at most maxRetry
 * entries and disappears when its window passes or the source is banned, and at most
 * maxTrackedSources counters live at once (the least recently seen is dropped first).
 */
export class BanEngine {
  readonly policy: BanPolicy;
  private readonly table: BanTable;
  private readonly log: Logger;
  private readonly exempt = new PrefixMap<string>();
  private readonly tracked = new Map<string, Tracked>();
  private readonly listeners = new Set<BanListener>();
  private readonly unsubscribe: (() => void) | undefined;
  private readonly timer: NodeJS.Timeout | undefined;
  private shared: SharedCounts | undefined;

  constructor(opts: BanEngineOptions) {
    this.table = opts.table;
    this.policy = opts.policy && isParsedPolicy(opts.policy) ? opts.policy : parseBanPolicy(opts.policy ?? {});
    this.log = opts.logger ?? nullLogger();
    for (const cidr of this.policy.exempt) {
      const p = parsePrefix(cidr);
      this.exempt.set(p, cidr);
    }
    this.unsubscribe = opts.bus?.subscribe((e) => {
      this.handle(e);
    });
    const every = opts.purgeEvery ?? 60_000;
    if (every > 0) {
      const now = opts.now ?? Date.now;
      this.timer = setInterval(() => this.purge(now()), every);
      this.timer.unref();
    }
  }

  /** Register for bans; returns the unsubscribe function. */
  onBan(listener: BanListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Cluster: judge on this server's count plus the other servers' (BANS-AND-ALERTS.md "Several
   * servers"), and publish this server's counts; undefined returns to counting alone.
   */
  setShared(shared: SharedCounts | undefined): void {
    this.shared = shared;
  }

  /** Number of sources with a live counter (for metrics and the flood test). */
  get trackedSources(): number {
    return this.tracked.size;
  }

  /** Apply the policy to one violation. `now` defaults to the event's time. */
  handle(event: ViolationEvent, now: number = event.time): BanOutcome {
    const src = sourceKey(this.policy, event.ip);
    const ctx = {
      event: 'violation',
      kind: event.kind,
      ip: event.ip,
      source: src?.key,
      detail: event.detail,
      user: event.user,
      club: event.club,
      command: event.command,
      right: event.right,
    };
    if (!src) {
      this.log.warn('violation from an unparsable address', ctx);
      return { action: 'ignored', reason: 'bad-address' };
    }
    const exempt = this.exempt.match(src.address) ?? this.table.exemptMatch(event.ip)?.address;
    if (exempt !== undefined) {
      this.log.warn('violation from an exempt source (not banned)', { ...ctx, exempt });
      return { action: 'exempt', source: src.key, exempt };
    }
    if (!this.policy.enabled) {
      this.log.warn('violation (bans disabled)', ctx);
      return { action: 'logged', source: src.key };
    }
    const violation = toViolation(event);
    const existing = this.table.check(event.ip, now);
    if (existing) {
      this.table.recordViolation(existing.address, violation);
      this.log.warn('violation from a banned source', { ...ctx, ban: existing.address });
      return { action: 'already-banned', source: src.key, ban: existing };
    }

    const rule = ruleFor(this.policy, event.kind);
    const id = `${event.kind} ${src.key}`;
    let t = this.tracked.get(id);
    if (t) {
      this.tracked.delete(id); // re-inserted below: Map order is least recently seen first
    } else {
      t = { violations: [] };
    }
    const since = now - rule.findTime;
    while (t.violations.length > 0 && t.violations[0]!.time <= since) t.violations.shift();
    t.violations.push(violation);
    while (t.violations.length > rule.maxRetry) t.violations.shift();
    // Other servers' violations from this source count too, but none from before its last ban.
    const lastBan = this.shared && rule.maxRetry > 1 ? (this.table.offender(src.key)?.lastBan ?? 0) : 0;
    const elsewhere = this.shared && rule.maxRetry > 1 ? this.shared.remote(event.kind, src.key, Math.max(since, lastBan)) : 0;
    if (t.violations.length + elsewhere < rule.maxRetry) {
      this.tracked.set(id, t);
      this.evictBeyondCap();
      this.shared?.publish(event.kind, src.key, t.violations.map((v) => v.time), rule.findTime);
      this.log.warn('violation', { ...ctx, count: t.violations.length, ...(elsewhere ? { elsewhere } : {}), maxRetry: rule.maxRetry });
      return { action: 'counted', source: src.key, count: t.violations.length + elsewhere, maxRetry: rule.maxRetry };
    }
    // Banned: this server's count is withdrawn (the ban itself reaches the others on the ban board).
    if (this.shared && rule.maxRetry > 1) this.shared.publish(event.kind, src.key, [], rule.findTime);

    // Threshold reached: ban the source (its /64 for IPv6).
    const level = nextLevel(this.policy, this.table.offender(src.key), now);
    const duration = banDuration(this.policy, event.kind, level);
    const count = t.violations.length + elsewhere;
    const reason =
      count === 1
        ? `${event.kind}: ${event.detail}`
        : `${event.kind}: ${count} within ${formatDuration(rule.findTime)} (last: ${event.detail})`;
    const ban = this.table.add(
      {
        address: src.key,
        expires: now + duration,
        reason,
        source: 'auto',
        level,
        violations: t.violations,
      },
      now,
    );
    this.log.warn('violation', { ...ctx, count, ...(elsewhere ? { elsewhere } : {}), maxRetry: rule.maxRetry });
    this.log.warn('ban', {
      event: 'ban',
      address: ban.address,
      kind: event.kind,
      level,
      duration: formatDuration(duration),
      expires: new Date(ban.expires).toISOString(),
      reason: ban.reason,
      violations: count,
      user: event.user,
      club: event.club,
    });
    const violations = t.violations;
    for (const l of this.listeners) {
      try {
        l(ban, violations);
      } catch (err) {
        this.log.error('ban listener failed', { code: (err as { code?: string }).code ?? 'ERR' });
      }
    }
    return { action: 'banned', source: src.key, ban, violations };
  }

  private evictBeyondCap(): void {
    while (this.tracked.size > this.policy.maxTrackedSources) {
      const oldest = this.tracked.keys().next();
      if (oldest.done) break;
      this.tracked.delete(oldest.value);
    }
  }

  /** Drop expired bans from the table and counters whose window has passed. */
  purge(now: number): void {
    const gone = this.table.purgeExpired(now);
    if (gone > 0) this.log.info('expired bans purged', { event: 'ban-expired', count: gone });
    for (const [id, t] of this.tracked) {
      const kind = id.slice(0, id.indexOf(' '));
      const last = t.violations[t.violations.length - 1];
      if (!last || last.time <= now - ruleFor(this.policy, kind).findTime) this.tracked.delete(id);
    }
  }

  close(): void {
    this.unsubscribe?.();
    if (this.timer) clearInterval(this.timer);
    this.listeners.clear();
  }
}
