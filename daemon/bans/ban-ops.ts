import { BanAddressError, formatAddress, formatPrefix, parseAddress, parsePrefix, prefixContains, prefixesOverlap, prefixHostBits } from '../../storage/bans/ban-address.js';
import type { BanRecord, BanTable, BanViolation, ExemptEntry } from '../../storage/bans/ban-store.js';
import { parseDuration } from './ban-policy.js';

/**
 * The operator's ban commands as plain functions over a BanTable, so `commusicctl bans ...`
 * runs them through the daemon's control socket (the live table, effective at once) or, with
 * the daemon stopped, on a BanStore opened on the data folder. Results are JSON-serialisable.
 * Bad input throws BanAddressError (code BAN_BAD_ADDRESS) or DurationError (BAN_BAD_DURATION).
 */
export { parseDuration, formatDuration, DurationError } from './ban-policy.js';
export { BanAddressError } from '../../storage/bans/ban-address.js';

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

/** A refused operator ban: BAN_EXEMPT (overlaps an exemption), BAN_WIDE_RANGE (needs --yes). */
export class BanOpError extends Error {
  constructor(
    readonly code: 'BAN_EXEMPT' | 'BAN_WIDE_RANGE' | 'BAN_NOT_AN_ADDRESS',
    message: string,
  ) {
    super(message);
    this.name = 'BanOpError';
  }
}

/**
 * Ranges wider than these need `--yes`: an IPv4 range shorter than /16 (more than 65,536
 * addresses; 0.0.0.0/0 is every IPv4 client), an IPv6 range shorter than /32 (a whole regional
 * registry's allocation unit).
 */
export const WIDE_RANGE_MIN_LENGTH = { 4: 16, 6: 32 } as const;

function canonical(text: string): string {
  return formatPrefix(parsePrefix(text));
}

/**
 * `bans add IP|CIDR --for DURATION --reason TEXT [--force] [--yes]`: a manual ban, replacing any
 * on the same range. Refused (typed errors, nothing stored): a range with host bits set
 * (BAN_HOST_BITS), a duration without a unit (BAN_BAD_DURATION), a range wider than /16 (IPv4)
 * or /32 (IPv6) without `yes` (BAN_WIDE_RANGE), an address or range inside an exemption
 * (BAN_EXEMPT: exemptions win, remove the exemption first), and a range that contains exempt
 * addresses without `force` (BAN_EXEMPT; with `force` the ban is stored and the exempt
 * addresses inside it stay admitted).
 */
export function bansAdd(
  ctx: BanOpsContext,
  args: { address: string; duration: string | number; reason?: string; force?: boolean; yes?: boolean },
): BanJson & { exemptInside: string[] } {
  const now = (ctx.now ?? Date.now)();
  const ms = typeof args.duration === 'number' ? args.duration : parseDuration(args.duration);
  const prefix = parsePrefix(args.address);
  const address = formatPrefix(prefix);
  const minLength = WIDE_RANGE_MIN_LENGTH[prefix.family];
  if (prefix.length < minLength && !args.yes) {
    const bits = prefixHostBits(prefix);
    const all = prefix.length === 0 ? ` (every IPv${prefix.family} client)` : '';
    throw new BanOpError(
      'BAN_WIDE_RANGE',
      `${address} covers 2^${bits} addresses${all}, wider than /${minLength}; if you mean it, repeat with --yes`,
    );
  }
  const inside: string[] = [];
  for (const e of ctx.table.exemptAll()) {
    const ex = parsePrefix(e.address);
    if (!prefixesOverlap(ex, prefix)) continue;
    if (prefixContains(ex, prefix)) {
      throw new BanOpError('BAN_EXEMPT', `${address} is exempt (${e.address}${e.note ? `: ${e.note}` : ''}); exemptions win over bans, so remove the exemption first`);
    }
    inside.push(e.address);
  }
  if (inside.length > 0 && !args.force) {
    throw new BanOpError('BAN_EXEMPT', `${address} contains exempt ${inside.join(', ')}, which would stay admitted; repeat with --force to ban the rest of the range`);
  }
  const reason = args.reason?.trim() || 'manual ban';
  ctx.table.add({ address, expires: now + ms, reason, source: 'manual', level: 0 }, now);
  const rec = ctx.table.list(now).find((b) => b.address === address);
  if (!rec) throw new Error('ban vanished right after it was added');
  return { ...banJson(rec), exemptInside: inside };
}

export interface RemoveJson {
  address: string;
  removed: boolean;
  /** When nothing was removed: the active bans whose range contains the given address or range. */
  coveredBy: { address: string; expires: string; reason: string }[];
}

/**
 * `bans remove IP|CIDR`: lifts the ban on exactly that address or range. When there is none but
 * a banned range contains it, `coveredBy` names that range (lifting it is the operator's call:
 * it unbans every address in it).
 */
export function bansRemove(ctx: BanOpsContext, args: { address: string }): RemoveJson {
  const now = (ctx.now ?? Date.now)();
  const prefix = parsePrefix(args.address);
  const address = formatPrefix(prefix);
  if (ctx.table.remove(address)) return { address, removed: true, coveredBy: [] };
  const coveredBy = ctx.table
    .list(now)
    .filter((b) => b.address !== address && prefixContains(parsePrefix(b.address), prefix))
    .map((b) => ({ address: b.address, expires: iso(b.expires), reason: b.reason }));
  return { address, removed: false, coveredBy };
}

export interface CheckJson {
  address: string;
  /** What a connection from this address meets now. */
  verdict: 'banned' | 'exempt' | 'admitted';
  /** The most specific active ban covering the address (also when an exemption overrides it). */
  ban: { address: string; expires: string; reason: string; source: 'auto' | 'manual' } | null;
  exempt: { address: string; note: string } | null;
}

/** `bans check IP`: which ban or exemption applies to this address, and until when. */
export function bansCheck(ctx: BanOpsContext, args: { address: string }): CheckJson {
  const now = (ctx.now ?? Date.now)();
  const a = parseAddress(args.address);
  if (!a) {
    if (args.address.includes('/')) throw new BanOpError('BAN_NOT_AN_ADDRESS', 'bans check takes one address, not a range');
    throw new BanAddressError(args.address);
  }
  const b = ctx.table.banCovering(args.address, now);
  const e = ctx.table.exemptMatch(args.address);
  return {
    address: formatAddress(a),
    verdict: e ? 'exempt' : b ? 'banned' : 'admitted',
    ban: b ? { address: b.address, expires: iso(b.expires), reason: b.reason, source: b.source } : null,
    exempt: e ? { address: e.address, note: e.note } : null,
  };
}

/** `bans exempt list`: the table's exemptions and the configuration's (note "configuration"). */
export function exemptList(ctx: BanOpsContext): ExemptJson[] {
  return ctx.table.exemptAll().map(exemptJson);
}

export function exemptAdd(ctx: BanOpsContext, args: { address: string; note?: string }): ExemptJson {
  const now = (ctx.now ?? Date.now)();
  return exemptJson(ctx.table.exemptAdd(canonical(args.address), args.note?.trim() ?? '', now));
}

export function exemptRemove(ctx: BanOpsContext, args: { address: string }): { address: string; removed: boolean } {
  const address = canonical(args.address);
  return { address, removed: ctx.table.exemptRemove(address) };
}
