import { canonicalPrefix } from '../storage/ban-address.js';
import type { BanRecord, BanTable, BanViolation, ExemptEntry } from '../storage/ban-store.js';
import { parseDuration } from './ban-policy.js';

/**
 * The operator's ban commands as plain functions over a BanTable, so `commusicctl bans ...`
 * runs them through the daemon's control socket (the live table, effective at once) or, with
 * the daemon stopped, on a BanStore opened on the data folder. Results are JSON-serialisable.
 * Bad input throws BanAddressError (code BAN_BAD_ADDRESS) or DurationError (BAN_BAD_DURATION).
 */
export { parseDuration, formatDuration, DurationError } from './ban-policy.js';
export { BanAddressError } from '../storage/ban-address.js';

export interface BanOpsContext {
  readonly table: BanTable;
  /** Clock; defaults to Date.now. */
  readonly now?: () => number;
}

export interface BanJson {
  address: string;
  created: string;
  expires: string;
  reason: string;
  source: 'auto' | 'manual';
  level: number;
  violationCount: number;
  violations: { kind: string; time: string; detail: string; user?: string; club?: string; command?: string; right?: string }[];
}

export interface ExemptJson {
  address: string;
  note: string;
  created: string;
}

const iso = (t: number): string => new Date(t).toISOString();

function violationJson(v: BanViolation): BanJson['violations'][number] {
  const out: BanJson['violations'][number] = { kind: v.kind, time: iso(v.time), detail: v.detail };
  if (v.user !== undefined) out.user = v.user;
  if (v.club !== undefined) out.club = v.club;
  if (v.command !== undefined) out.command = v.command;
  if (v.right !== undefined) out.right = v.right;
  return out;
}

export function banJson(b: BanRecord): BanJson {
  return {
    address: b.address,
    created: iso(b.created),
    expires: iso(b.expires),
    reason: b.reason,
    source: b.source,
    level: b.level,
    violationCount: b.violationCount,
    violations: b.violations.map(violationJson),
  };
}

function exemptJson(e: ExemptEntry): ExemptJson {
  return { address: e.address, note: e.note, created: iso(e.created) };
}

/** `bans list`: active bans, most recent first. */
export function bansList(ctx: BanOpsContext): BanJson[] {
  const now = (ctx.now ?? Date.now)();
  return ctx.table.list(now).map(banJson);
}

/** `bans add IP|CIDR --for DURATION --reason TEXT`: a manual ban, replacing any on the same range. */
export function bansAdd(
  ctx: BanOpsContext,
  args: { address: string; duration: string | number; reason?: string },
): BanJson {
  const now = (ctx.now ?? Date.now)();
  const ms = typeof args.duration === 'number' ? args.duration : parseDuration(args.duration);
  const address = canonicalPrefix(args.address);
  const reason = args.reason?.trim() || 'manual ban';
  ctx.table.add({ address, expires: now + ms, reason, source: 'manual', level: 0 }, now);
  const rec = ctx.table.list(now).find((b) => b.address === address);
  if (!rec) throw new Error('ban vanished right after it was added');
  return banJson(rec);
}

/** `bans remove IP|CIDR`: lifts the ban on exactly that address or range. */
export function bansRemove(ctx: BanOpsContext, args: { address: string }): { address: string; removed: boolean } {
  const address = canonicalPrefix(args.address);
  return { address, removed: ctx.table.remove(address) };
}

/** `bans check IP`: which ban, if any, a connection from this address would hit. */
export function bansCheck(ctx: BanOpsContext, args: { address: string }): { address: string; ban: string | null; expires: string | null } {
  const now = (ctx.now ?? Date.now)();
  const b = ctx.table.check(args.address, now);
  return { address: args.address, ban: b?.address ?? null, expires: b ? iso(b.expires) : null };
}

export function exemptList(ctx: BanOpsContext): ExemptJson[] {
  return ctx.table.exemptList().map(exemptJson);
}

export function exemptAdd(ctx: BanOpsContext, args: { address: string; note?: string }): ExemptJson {
  const now = (ctx.now ?? Date.now)();
  return exemptJson(ctx.table.exemptAdd(canonicalPrefix(args.address), args.note?.trim() ?? '', now));
}

export function exemptRemove(ctx: BanOpsContext, args: { address: string }): { address: string; removed: boolean } {
  const address = canonicalPrefix(args.address);
  return { address, removed: ctx.table.exemptRemove(address) };
}
