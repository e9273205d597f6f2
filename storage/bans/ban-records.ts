/**
 * What the ban table holds: bans, violations, exemptions and offenders as records, the bans.db
 * schema, and the row conversions.
 */
import { formatPrefix, parsePrefix, type ParsedPrefix } from './ban-address.js';

export type BanSource = 'auto' | 'manual';

/** One violation as the ban table keeps it: log-safe fields only (no secrets, no peer text). */
export interface BanViolation {
  readonly kind: string;
  readonly time: number;
  readonly detail: string;
  readonly user?: string;
  readonly club?: string;
  readonly command?: string;
  readonly right?: string;
}

/** What `check()` returns: kept in memory for every active ban. */
export interface BanEntry {
  /** Canonical address ("192.0.2.7", "2001:db8:1:2::/64", "10.0.0.0/8"). */
  readonly address: string;
  readonly created: number;
  readonly expires: number;
  readonly reason: string;
  readonly source: BanSource;
  /** Offender level when banned: 1 for a first automatic ban, 0 for manual bans. */
  readonly level: number;
}

/** What `list()` returns: the entry plus the violations behind it. */
export interface BanRecord extends BanEntry {
  /** All violations counted against this ban, including those past the stored cap. */
  readonly violationCount: number;
  /** The first violations behind the ban, at most `maxViolationsPerBan`, oldest first. */
  readonly violations: readonly BanViolation[];
}

export interface BanRequest {
  /** Address or CIDR range, IPv4 or IPv6. */
  readonly address: string;
  readonly expires: number;
  readonly reason: string;
  readonly source: BanSource;
  readonly level?: number;
  readonly violations?: readonly BanViolation[];
}

export interface ExemptEntry {
  readonly address: string;
  readonly note: string;
  readonly created: number;
}

export interface OffenderRecord {
  readonly address: string;
  /** Number of automatic bans so far. */
  readonly level: number;
  readonly lastBan: number;
}

/**
 * The ban table as the daemon, the engine and the operator commands see it. Every call is
 * synchronous: `check()` runs at accept time before any crypto work and must cost a hash probe,
 * not I/O. A cluster implementation keeps this shape with a local replica fed by the shared
 * store; writes go through to the shared store and come back as updates.
 */
export interface BanTable {
  /**
   * The active ban covering this socket address, if any; undefined for an exempt address (an
   * exemption wins over every ban, automatic or manual). Never throws.
   */
  check(ip: string, now: number): BanEntry | undefined;
  /** The active ban covering this address whether or not it is exempt (for `bans check`). */
  banCovering(ip: string, now: number): BanEntry | undefined;
  /** Create or replace the ban on this address or range. Throws BanAddressError on bad input. */
  add(req: BanRequest, now: number): BanEntry;
  /** Lift the ban on exactly this address or range. False if there was none. */
  remove(address: string): boolean;
  /** Active bans, most recent first. */
  list(now: number): BanRecord[];
  /** Count a violation against an existing ban (stored up to the per-ban cap). */
  recordViolation(address: string, violation: BanViolation): void;
  /** Automatic-ban history of a source, for escalating repeat offenders. */
  offender(address: string): OffenderRecord | undefined;
  exemptAdd(address: string, note: string, now: number): ExemptEntry;
  exemptRemove(address: string): boolean;
  exemptList(): ExemptEntry[];
  /** The exempt range covering this socket address, if any (table or configuration). */
  exemptMatch(ip: string): ExemptEntry | undefined;
  /** Every exemption: the table's and the configuration's (note "configuration"). */
  exemptAll(): ExemptEntry[];
  /** Replace the exemptions that come from the configuration (`bans.exempt`). */
  setConfigExempt(cidrs: readonly string[]): void;
  /** Drop expired bans (and their violations). Returns how many went. */
  purgeExpired(now: number): number;
  close(): void;
}

export interface BanStoreOptions {
  /** 32-byte key: the file is page-encrypted (SQLCipher scheme, AES-256). Without it, plain. */
  key?: Buffer;
  /** Violations stored per ban; the count goes on past it. Default 20. */
  maxViolationsPerBan?: number;
}

export const BANS_DB_FILE = 'bans.db';
export const SCHEMA_VERSION = 1;
export const DEFAULT_MAX_VIOLATIONS_PER_BAN = 20;
const MAX_TEXT = 200; // reason and details are short by contract; cap them in the file anyway

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS bans (
  address TEXT PRIMARY KEY,
  created INTEGER NOT NULL,
  expires INTEGER NOT NULL,
  reason TEXT NOT NULL,
  source TEXT NOT NULL CHECK (source IN ('auto', 'manual')),
  level INTEGER NOT NULL DEFAULT 0,
  violation_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS bans_expires ON bans(expires);
CREATE TABLE IF NOT EXISTS ban_violations (
  id INTEGER PRIMARY KEY,
  address TEXT NOT NULL REFERENCES bans(address) ON DELETE CASCADE,
  kind TEXT NOT NULL,
  time INTEGER NOT NULL,
  detail TEXT NOT NULL,
  user TEXT,
  club TEXT,
  command TEXT,
  right_name TEXT
);
CREATE INDEX IF NOT EXISTS ban_violations_address ON ban_violations(address);
CREATE TABLE IF NOT EXISTS offenders (
  address TEXT PRIMARY KEY,
  level INTEGER NOT NULL,
  last_ban INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS exempt (
  address TEXT PRIMARY KEY,
  note TEXT NOT NULL DEFAULT '',
  created INTEGER NOT NULL
);
`;

export interface BanRow {
  address: string;
  created: number;
  expires: number;
  reason: string;
  source: BanSource;
  level: number;
  violation_count: number;
}

export interface ViolationRow {
  kind: string;
  time: number;
  detail: string;
  user: string | null;
  club: string | null;
  command: string | null;
  right_name: string | null;
}

export interface Live {
  entry: BanEntry;
  prefix: ParsedPrefix;
  stored: number; // violations stored for this ban
  count: number; // violations counted
}

export const clip = (s: string): string => (s.length > MAX_TEXT ? `${s.slice(0, MAX_TEXT - 1)}…` : s);

export function violationFromRow(r: ViolationRow): BanViolation {
  const v: { -readonly [K in keyof BanViolation]: BanViolation[K] } = {
    kind: r.kind,
    time: r.time,
    detail: r.detail,
  };
  if (r.user !== null) v.user = r.user;
  if (r.club !== null) v.club = r.club;
  if (r.command !== null) v.command = r.command;
  if (r.right_name !== null) v.right = r.right_name;
  return v;
}

export function canonicalOrSelf(address: string): string {
  try {
    return formatPrefix(parsePrefix(address));
  } catch {
    return address;
  }
}
