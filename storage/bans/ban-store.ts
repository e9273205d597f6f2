import fs from 'node:fs';
import path from 'node:path';
import type Database from 'better-sqlite3-multiple-ciphers';
import { openDatabase } from '../engine/sqlcipher.js';
import { PrefixMap, formatPrefix, parseAddress, parsePrefix, type ParsedAddress } from './ban-address.js';
import { BANS_DB_FILE, BanEntry, BanRecord, BanRequest, BanRow, BanStoreOptions, BanTable, BanViolation, DEFAULT_MAX_VIOLATIONS_PER_BAN, ExemptEntry, Live, OffenderRecord, SCHEMA, SCHEMA_VERSION, ViolationRow, canonicalOrSelf, clip, violationFromRow } from './ban-records.js';

export { BANS_DB_FILE, type BanSource, type BanViolation, type BanEntry, type BanRecord, type BanRequest, type ExemptEntry, type OffenderRecord, type BanTable, type BanStoreOptions } from './ban-records.js';

/**
 * `<data>/bans.db`: the persistent ban table, the offender history and the exempt list, in
 * SQLite. Every active ban is also held in a PrefixMap, so `check()` never touches the file;
 * writes go to the file first and then to memory (write-through), so a restart sees every ban.
 * IP addresses are personal data: pass a key and the whole file is page-encrypted.
 */
export class BanStore implements BanTable {
  private readonly db: Database.Database;
  private readonly bans = new PrefixMap<Live>();
  private readonly exempts = new PrefixMap<ExemptEntry>();
  private configExempts = new PrefixMap<ExemptEntry>();
  private readonly maxViolations: number;
  private closed = false;

  private readonly stmt: {
    upsertBan: Database.Statement<[BanRow]>;
    deleteBan: Database.Statement<[string]>;
    deleteViolations: Database.Statement<[string]>;
    insertViolation: Database.Statement<[Record<string, unknown>]>;
    countViolation: Database.Statement<[string]>;
    violationsOf: Database.Statement<[string, number], ViolationRow>;
    allBans: Database.Statement<[], BanRow>;
    expired: Database.Statement<[number], { address: string }>;
    offender: Database.Statement<[string], { address: string; level: number; last_ban: number }>;
    upsertOffender: Database.Statement<[string, number, number]>;
    upsertExempt: Database.Statement<[string, string, number]>;
    deleteExempt: Database.Statement<[string]>;
    allExempt: Database.Statement<[], ExemptEntry>;
  };

  /** Open (creating if needed) `<dataDir>/bans.db`. */
  static openInDir(dataDir: string, opts: BanStoreOptions = {}): BanStore {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    return new BanStore(path.join(dataDir, BANS_DB_FILE), opts);
  }

  constructor(file: string, opts: BanStoreOptions = {}) {
    this.maxViolations = opts.maxViolationsPerBan ?? DEFAULT_MAX_VIOLATIONS_PER_BAN;
    const db = openDatabase(file);
    try {
      if (opts.key) {
        if (opts.key.length !== 32) throw new RangeError('ban table key must be 32 bytes');
        db.pragma(`cipher='sqlcipher'`);
        db.pragma('legacy=4');
        db.pragma(`key="x'${opts.key.toString('hex')}'"`);
      }
      // WAL with synchronous=NORMAL: a commit is atomic and consistent; on power loss the last
      // few bans may be lost, and the next violation from that source recreates them.
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      db.exec(SCHEMA);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
      fs.chmodSync(file, 0o600);
    } catch (err) {
      db.close();
      throw err;
    }
    this.db = db;
    this.stmt = {
      upsertBan: db.prepare(
        `INSERT INTO bans (address, created, expires, reason, source, level, violation_count)
         VALUES (@address, @created, @expires, @reason, @source, @level, @violation_count)
         ON CONFLICT(address) DO UPDATE SET created = excluded.created, expires = excluded.expires,
           reason = excluded.reason, source = excluded.source, level = excluded.level,
           violation_count = excluded.violation_count`,
      ),
      deleteBan: db.prepare('DELETE FROM bans WHERE address = ?'),
      deleteViolations: db.prepare('DELETE FROM ban_violations WHERE address = ?'),
      insertViolation: db.prepare(
        `INSERT INTO ban_violations (address, kind, time, detail, user, club, command, right_name)
         VALUES (@address, @kind, @time, @detail, @user, @club, @command, @right_name)`,
      ),
      countViolation: db.prepare(
        'UPDATE bans SET violation_count = violation_count + 1 WHERE address = ?',
      ),
      violationsOf: db.prepare(
        `SELECT kind, time, detail, user, club, command, right_name FROM ban_violations
         WHERE address = ? ORDER BY time, id LIMIT ?`,
      ),
      allBans: db.prepare('SELECT * FROM bans'),
      expired: db.prepare('SELECT address FROM bans WHERE expires <= ?'),
      offender: db.prepare('SELECT address, level, last_ban FROM offenders WHERE address = ?'),
      upsertOffender: db.prepare(
        `INSERT INTO offenders (address, level, last_ban) VALUES (?, ?, ?)
         ON CONFLICT(address) DO UPDATE SET level = excluded.level, last_ban = excluded.last_ban`,
      ),
      upsertExempt: db.prepare(
        `INSERT INTO exempt (address, note, created) VALUES (?, ?, ?)
         ON CONFLICT(address) DO UPDATE SET note = excluded.note`,
      ),
      deleteExempt: db.prepare('DELETE FROM exempt WHERE address = ?'),
      allExempt: db.prepare('SELECT address, note, created FROM exempt'),
    };
    this.reload();
  }

  /** Rebuild the in-memory maps from the file (after another process changed it offline). */
  reload(): void {
    this.bans.clear();
    this.exempts.clear();
    const stored = this.db.prepare<[], { address: string; n: number }>(
      'SELECT address, count(*) AS n FROM ban_violations GROUP BY address',
    );
    const storedBy = new Map(stored.all().map((r) => [r.address, r.n]));
    for (const r of this.stmt.allBans.all()) {
      const prefix = parsePrefix(r.address);
      this.bans.set(prefix, {
        entry: Object.freeze({
          address: r.address,
          created: r.created,
          expires: r.expires,
          reason: r.reason,
          source: r.source,
          level: r.level,
        }),
        prefix,
        stored: storedBy.get(r.address) ?? 0,
        count: r.violation_count,
      });
    }
    for (const e of this.stmt.allExempt.all()) this.exempts.set(parsePrefix(e.address), e);
  }

  check(ip: string, now: number): BanEntry | undefined {
    const a = parseAddress(ip);
    if (!a) return undefined;
    return this.checkParsed(a, now);
  }

  /** Like check() for an already parsed address (the engine parses once per event). */
  checkParsed(a: ParsedAddress, now: number): BanEntry | undefined {
    const ban = this.bans.match(a, (l) => l.entry.expires > now)?.entry;
    // Exempt lookups only for banned addresses: the common case stays one probe per length.
    if (ban && (this.exempts.size > 0 || this.configExempts.size > 0) && this.exemptParsed(a)) return undefined;
    return ban;
  }

  banCovering(ip: string, now: number): BanEntry | undefined {
    const a = parseAddress(ip);
    return a ? this.bans.match(a, (l) => l.entry.expires > now)?.entry : undefined;
  }

  private exemptParsed(a: ParsedAddress): ExemptEntry | undefined {
    return this.exempts.match(a) ?? this.configExempts.match(a);
  }

  add(req: BanRequest, now: number): BanEntry {
    const prefix = parsePrefix(req.address);
    const address = formatPrefix(prefix);
    const violations = (req.violations ?? []).slice(0, this.maxViolations);
    const row: BanRow = {
      address,
      created: now,
      expires: req.expires,
      reason: clip(req.reason),
      source: req.source,
      level: req.level ?? 0,
      violation_count: req.violations?.length ?? 0,
    };
    this.db.transaction(() => {
      this.stmt.upsertBan.run(row);
      this.stmt.deleteViolations.run(address);
      for (const v of violations) this.insertViolation(address, v);
      if (req.source === 'auto') this.stmt.upsertOffender.run(address, row.level, now);
    })();
    const entry: BanEntry = Object.freeze({
      address,
      created: row.created,
      expires: row.expires,
      reason: row.reason,
      source: row.source,
      level: row.level,
    });
    this.bans.set(prefix, { entry, prefix, stored: violations.length, count: row.violation_count });
    return entry;
  }

  private insertViolation(address: string, v: BanViolation): void {
    this.stmt.insertViolation.run({
      address,
      kind: v.kind,
      time: v.time,
      detail: clip(v.detail),
      user: v.user ?? null,
      club: v.club ?? null,
      command: v.command ?? null,
      right_name: v.right ?? null,
    });
  }

  remove(address: string): boolean {
    const prefix = parsePrefix(address);
    const canonical = formatPrefix(prefix);
    const changes = this.stmt.deleteBan.run(canonical).changes;
    const had = this.bans.delete(prefix);
    return changes > 0 || had;
  }

  list(now: number): BanRecord[] {
    const out: BanRecord[] = [];
    for (const l of this.bans.values()) {
      if (l.entry.expires <= now) continue;
      out.push({
        ...l.entry,
        violationCount: l.count,
        violations: this.stmt.violationsOf.all(l.entry.address, this.maxViolations).map(violationFromRow),
      });
    }
    return out.sort((a, b) => b.created - a.created || a.address.localeCompare(b.address));
  }

  recordViolation(address: string, violation: BanViolation): void {
    const prefix = parsePrefix(address);
    const live = this.bans.get(prefix);
    if (!live) return;
    const store = live.stored < this.maxViolations;
    this.db.transaction(() => {
      this.stmt.countViolation.run(live.entry.address);
      if (store) this.insertViolation(live.entry.address, violation);
    })();
    live.count++;
    if (store) live.stored++;
  }

  offender(address: string): OffenderRecord | undefined {
    const r = this.stmt.offender.get(canonicalOrSelf(address));
    return r ? { address: r.address, level: r.level, lastBan: r.last_ban } : undefined;
  }

  exemptAdd(address: string, note: string, now: number): ExemptEntry {
    const prefix = parsePrefix(address);
    const canonical = formatPrefix(prefix);
    this.stmt.upsertExempt.run(canonical, clip(note), now);
    const existing = this.exempts.get(prefix);
    const entry: ExemptEntry = Object.freeze({
      address: canonical,
      note: clip(note),
      created: existing?.created ?? now,
    });
    this.exempts.set(prefix, entry);
    return entry;
  }

  exemptRemove(address: string): boolean {
    const prefix = parsePrefix(address);
    const changes = this.stmt.deleteExempt.run(formatPrefix(prefix)).changes;
    return this.exempts.delete(prefix) || changes > 0;
  }

  exemptList(): ExemptEntry[] {
    return [...this.exempts.values()].sort((a, b) => a.address.localeCompare(b.address));
  }

  exemptMatch(ip: string): ExemptEntry | undefined {
    const a = parseAddress(ip);
    return a ? this.exemptParsed(a) : undefined;
  }

  exemptAll(): ExemptEntry[] {
    return [...this.exempts.values(), ...this.configExempts.values()].sort((a, b) => a.address.localeCompare(b.address));
  }

  setConfigExempt(cidrs: readonly string[]): void {
    const m = new PrefixMap<ExemptEntry>();
    for (const c of cidrs) {
      const p = parsePrefix(c);
      m.set(p, Object.freeze({ address: formatPrefix(p), note: 'configuration', created: 0 }));
    }
    this.configExempts = m;
  }

  purgeExpired(now: number): number {
    const gone = this.stmt.expired.all(now);
    if (gone.length === 0) return 0;
    this.db.transaction(() => {
      for (const g of gone) this.stmt.deleteBan.run(g.address);
    })();
    for (const g of gone) this.bans.delete(parsePrefix(g.address));
    return gone.length;
  }

  /** Number of bans held in memory (active or expired but not yet purged). */
  get size(): number {
    return this.bans.size;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }
}
