import { z } from 'zod';
import {
  formatPrefix,
  parseAddress,
  parsePrefix,
  prefixOf,
  type ParsedAddress,
  type ParsedPrefix,
} from '../../storage/bans/ban-address.js';
import type { ViolationKind } from './violations.js';

/**
 * Which violations ban, after how many, and for how long. In the spirit of OpenSSH's
 * PerSourcePenalties and fail2ban: traffic that is not our client and attempts to exceed rights
 * ban at once (maxRetry 1); failed logins and broken handshakes, which an honest user can cause
 * by mistyping or a flaky network, are counted per source within `findTime` and ban at
 * `maxRetry`. A source's n-th ban lasts `banTime * banTimeFactor^(n-1)`, capped at `maxBanTime`
 * (fail2ban's bantime.increment); the count is forgotten `forgetAfter` after its last ban.
 * Everything here is pure: the engine passes `now`.
 */

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

export class DurationError extends Error {
  readonly code = 'BAN_BAD_DURATION';
  constructor(input: string, message?: string) {
    super(message ?? `not a duration (use e.g. 90s, 15m, 2h, 7d): ${JSON.stringify(input.slice(0, 40))}`);
    this.name = 'DurationError';
  }
}

/**
 * "90s", "15m", "2h", "7d", "1w", "500ms", "1h30m" to milliseconds. A unit is required: a bare
 * number ("2") is refused, since an operator may mean hours as easily as seconds.
 */
export function parseDuration(text: string): number {
  const s = text.trim().toLowerCase();
  if (/^\d+(?:\.\d+)?$/.test(s)) {
    throw new DurationError(text, `"${s.slice(0, 20)}" has no unit: write e.g. ${s.slice(0, 20)}s, ${s.slice(0, 20)}m, ${s.slice(0, 20)}h or ${s.slice(0, 20)}d`);
  }
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/gy;
  let total = 0;
  let pos = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    pos = re.lastIndex;
  }
  if (pos === 0 || pos !== s.length || !Number.isFinite(total) || total <= 0) {
    throw new DurationError(text);
  }
  return Math.round(total);
}

/** Milliseconds as the shortest exact text of the largest units ("2h", "1h30m", "90s"). */
export function formatDuration(ms: number): string {
  if (ms <= 0) return '0s';
  let rest = Math.round(ms);
  let out = '';
  for (const [u, n] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (rest >= n) {
      out += `${Math.floor(rest / n)}${u}`;
      rest %= n;
    }
  }
  if (rest > 0) out += `${rest}ms`;
  return out;
}

/** A duration in config: milliseconds, or text such as "15m". */
export const DurationSchema = z.union([
  z.number().int().positive(),
  z.string().transform((s, ctx) => {
    try {
      return parseDuration(s);
    } catch (e) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: (e as Error).message });
      return z.NEVER;
    }
  }),
]);

/**
 * An address or CIDR range, validated by the product's one address parser
 * (storage/bans/ban-address.ts): a range with host bits set (`10.0.0.1/8`) is refused.
 */
export const CidrSchema = z.string().superRefine((s, ctx) => {
  try {
    parsePrefix(s);
  } catch (e) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: (e as Error).message });
  }
});

export const KindRuleSchema = z.object({
  /** Violations within findTime that trigger a ban; 1 = ban at once. */
  maxRetry: z.number().int().min(1).max(1000),
  findTime: DurationSchema,
  /** Base ban time for this kind; defaults to the policy's banTime. */
  banTime: DurationSchema.optional(),
});
export type KindRule = z.output<typeof KindRuleSchema>;

const IMMEDIATE: z.input<typeof KindRuleSchema> = { maxRetry: 1, findTime: '10m' };

export const VIOLATION_KINDS: readonly ViolationKind[] = [
  'http',
  'tls',
  'ssh',
  'garbage',
  'silent',
  'handshake',
  'protocol',
  'login',
  'command',
  'limit',
  'slow',
  'rights',
];

const KindsSchema = z
  .object({
    http: KindRuleSchema.default(IMMEDIATE),
    tls: KindRuleSchema.default(IMMEDIATE),
    ssh: KindRuleSchema.default(IMMEDIATE),
    garbage: KindRuleSchema.default(IMMEDIATE),
    silent: KindRuleSchema.default(IMMEDIATE),
    protocol: KindRuleSchema.default(IMMEDIATE),
    rights: KindRuleSchema.default(IMMEDIATE),
    handshake: KindRuleSchema.default({ maxRetry: 3, findTime: '10m' }),
    login: KindRuleSchema.default({ maxRetry: 5, findTime: '10m' }),
    /** Unknown command names: a client of another version may send a few, a prober many. */
    command: KindRuleSchema.default({ maxRetry: 20, findTime: '10m' }),
    /** Refused at a connection limit: a club behind one address rarely, a flood at once. */
    limit: KindRuleSchema.default({ maxRetry: 3, findTime: '10m' }),
    /** A record dripped past its deadline: a bad network now and then, a slowloris always. */
    slow: KindRuleSchema.default({ maxRetry: 3, findTime: '10m' }),
  })
  .strict()
  .default({});

export const BanPolicySchema = z
  .object({
    /** False: violations are still logged and mailed, nobody is banned. */
    enabled: z.boolean().default(true),
    banTime: DurationSchema.default('1h'),
    banTimeFactor: z.number().min(1).max(100).default(2),
    maxBanTime: DurationSchema.default('7d'),
    /** Offender history older than this (since the last ban) starts again at level 1. */
    forgetAfter: DurationSchema.default('30d'),
    /** IPv4 sources are grouped by this prefix (32 = each address on its own). */
    ipv4Prefix: z.number().int().min(8).max(32).default(32),
    /** IPv6 sources are grouped by this prefix so one host cannot walk its /64. */
    ipv6Prefix: z.number().int().min(16).max(128).default(64),
    /** Never banned, still logged: the operators' office, VPN, monitoring probes. */
    exempt: z.array(CidrSchema).default([]),
    /** Sources whose counted violations are tracked at once; the oldest are dropped beyond. */
    maxTrackedSources: z.number().int().min(100).max(10_000_000).default(100_000),
    kinds: KindsSchema,
  })
  .strict();

export type BanPolicyConfig = z.input<typeof BanPolicySchema>;
export type BanPolicy = z.output<typeof BanPolicySchema>;

/** Validate a policy config, filling in defaults. Throws a ZodError naming the bad field. */
export function parseBanPolicy(config: unknown = {}): BanPolicy {
  return BanPolicySchema.parse(config ?? {});
}

export const DEFAULT_BAN_POLICY: BanPolicy = parseBanPolicy({});

export function ruleFor(policy: BanPolicy, kind: ViolationKind | string): KindRule {
  const rules = policy.kinds as Record<string, KindRule | undefined>;
  // A kind added to the stream later and not yet configured is treated as non-client traffic.
  return rules[kind] ?? { maxRetry: 1, findTime: policy.banTime };
}

/** The unit that is counted and banned: an IPv4 address (or /ipv4Prefix), an IPv6 /ipv6Prefix. */
export interface BanSourceKey {
  readonly address: ParsedAddress;
  readonly prefix: ParsedPrefix;
  /** Canonical text of the prefix: "192.0.2.7", "2001:db8:1:2::/64". */
  readonly key: string;
}

export function sourceKey(policy: BanPolicy, ip: string): BanSourceKey | undefined {
  const address = parseAddress(ip);
  if (!address) return undefined;
  const prefix = prefixOf(address, address.family === 4 ? policy.ipv4Prefix : policy.ipv6Prefix);
  return { address, prefix, key: formatPrefix(prefix) };
}

/**
 * Offender level for the next ban: one more than the last, unless the last ban is older than
 * forgetAfter.
 */
export function nextLevel(
  policy: BanPolicy,
  previous: { level: number; lastBan: number } | undefined,
  now: number,
): number {
  if (!previous || now - previous.lastBan > policy.forgetAfter) return 1;
  return previous.level + 1;
}

/** Ban duration at an offender level: base * factor^(level-1), capped at maxBanTime. */
export function banDuration(policy: BanPolicy, kind: ViolationKind | string, level: number): number {
  const base = ruleFor(policy, kind).banTime ?? policy.banTime;
  const grown = base * policy.banTimeFactor ** Math.max(0, level - 1);
  return Math.min(policy.maxBanTime, Math.max(base, Math.round(grown)));
}
