/**
 * Issue 21: every query shape the club commands generate is an index search, never a full scan
 * of a growing table. The shapes are produced by the real query builders (storage/club/data-query.ts, data-rows.ts,
 * storage/club/audit-log.ts) against a store migrated by the real migrations; every statement they
 * prepare is captured with its arguments and run through EXPLAIN QUERY PLAN.
 *
 * The rule a plan must meet:
 * - no subquery (scope, blocked persons) ever scans a table: each is one index probe;
 * - a shape with an index-served filter (eq, lt..gte, in, isNull true, startsWith) or a cursor
 *   never scans its table without an index;
 * - a shape without such a filter may walk its table only in the requested order (no sort of the
 *   whole table: `USE TEMP B-TREE FOR ORDER BY`), so LIMIT stops the walk.
 * Not index-served by design and therefore exempt from the second rule: `contains` (a substring
 * of any position), `ne`, `isNull false` and `eq/ne null` on a column mostly set.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3-multiple-ciphers';
import { MODEL, type EntityName, type FieldDef } from '../storage/club/model.js';
import { MIGRATIONS, indexesOf } from '../storage/club/schema.js';
import { migrate, type Db } from '../storage/engine/sqlcipher.js';
import { DATA_ENTITIES, FILTER_OPS, prefixSuccessor, META_COLUMNS, filterableField, getRecord, idsInScope, listRecords, rowInScope, rowOfBlockedPerson, blockedPersonIds, recordExists, type Filter, type FilterOp, type RowScope } from '../storage/club/club-data.js';
import { queryAuditLog } from '../storage/club/audit-log.js';

interface Captured {
  sql: string;
  args: unknown[];
}

/** A db whose prepared statements report their SQL and arguments. */
function capturing(db: Database.Database, out: Captured[]): Db {
  const wrap = (sql: string) => {
    const s = db.prepare(sql);
    const rec =
      (m: 'all' | 'get' | 'run') =>
      (...args: unknown[]) => {
        out.push({ sql, args });
        return (s[m] as (...a: unknown[]) => unknown)(...args);
      };
    const w = {
      all: rec('all'),
      get: rec('get'),
      run: rec('run'),
      iterate: (...args: unknown[]) => (out.push({ sql, args }), s.iterate(...args)),
      // Raw mode (rows as arrays: storage/engine/statements.ts cachedRawStatement).
      raw: (on?: boolean) => (s.raw(on), w),
      columns: () => s.columns(),
    };
    return w;
  };
  return new Proxy(db, { get: (t, p) => (p === 'prepare' ? wrap : (Reflect.get(t, p) as unknown)) }) as unknown as Db;
}

function unwrap(fd: FieldDef): { typeName?: string } {
  let t = fd.zod;
  while (t._def?.innerType) t = t._def.innerType;
  return t._def as { typeName?: string };
}

const CANDIDATES: unknown[] = [1, true, '2020-01-01', '2020-01-01T00:00:00Z', 'a@b.example', 'DE89370400440532013000', '0'.repeat(64), 'Ab'];

function sampleValue(entity: EntityName, field: string): unknown {
  if (field === 'id') return 1;
  if ((META_COLUMNS as readonly string[]).includes(field)) return '2020-01-01T00:00:00Z';
  const fd = MODEL[entity].fields[field]!;
  if (fd.enumValues) return fd.enumValues[0];
  let t = fd.zod;
  while (t._def?.innerType) t = t._def.innerType;
  for (const c of CANDIDATES) if (t.safeParse(c).success) return c;
  if (unwrap(fd).typeName === 'ZodArray') return '["a"]';
  throw new Error(`no sample value for ${entity}.${field}`);
}

function opsFor(entity: EntityName, field: string): FilterOp[] {
  const fd = MODEL[entity].fields[field];
  const tn = fd ? unwrap(fd).typeName : undefined;
  if (tn === 'ZodArray' || tn === 'ZodUnknown') return ['isNull'];
  return FILTER_OPS.filter((op) => (op === 'contains' || op === 'startsWith' ? fd?.sql === 'TEXT' : true));
}

function filterOf(entity: EntityName, field: string, op: FilterOp): Filter {
  if (op === 'isNull') return { field, op, value: true };
  const v = sampleValue(entity, field);
  if (op === 'in') return { field, op, value: [v, v] };
  if (op === 'contains' || op === 'startsWith') return { field, op, value: String(v).slice(0, 2) };
  return { field, op, value: v };
}

const SCOPES: Record<string, RowScope> = {
  all: { kind: 'all' },
  allHideBlocked: { kind: 'all', hideBlocked: true },
  registers: { kind: 'registers', registers: [1, 2], hideBlocked: true },
  registersOwn: { kind: 'registers', registers: [1], personId: 1, hideBlocked: true },
  person: { kind: 'person', personId: 1, hideBlocked: true },
  both: { kind: 'both', a: { kind: 'registers', registers: [1] }, b: { kind: 'person', personId: 1 }, hideBlocked: true },
};

const GROWING = new Set(Object.values(MODEL).map((e) => e.table));

function plan(db: Database.Database, c: Captured): string[] {
  return (db.prepare(`EXPLAIN QUERY PLAN ${c.sql}`).all(...c.args) as Array<{ id: number; parent: number; detail: string }>).map((r) => `${r.parent === 0 ? '' : '  '}${r.detail}`);
}

/** Problems with a plan, per the rule in the header. */
function problems(lines: string[], indexServed: boolean): string[] {
  const out: string[] = [];
  const sorted = lines.some((l) => /USE TEMP B-TREE FOR ORDER BY/.test(l));
  let inSub = false;
  for (const raw of lines) {
    const l = raw.trim();
    if (/SUBQUERY/.test(l)) inSub = true;
    const m = /^SCAN (\w+)(?: AS \w+)?( USING (?:COVERING )?INDEX \S+)?/.exec(l);
    if (!m) continue;
    const table = m[1]!;
    const aliasOf = (a: string) => (a === 'ra' ? 'register_assignments' : a === 'bp' ? 'persons' : a);
    if (!GROWING.has(aliasOf(table))) continue;
    if (inSub || raw.startsWith('  ')) out.push(`subquery scans ${table}: ${l}`);
    else if (indexServed && !m[2]) out.push(`index-served filter but full scan: ${l}`);
    else if (sorted) out.push(`walks and sorts the whole table: ${l}`);
  }
  return out;
}

function exempt(f: Filter | undefined): boolean {
  if (!f) return false;
  return f.op === 'contains' || f.op === 'ne' || (f.op === 'isNull' && f.value === false) || (f.op === 'isNull' && f.field === 'id');
}

test('every query shape of get, list (entity x field x op x sort x scope x cursor), scope checks and log.query is an index search (issue 21, point 3)', () => {
  const raw = new Database(':memory:');
  raw.pragma('foreign_keys=ON');
  migrate(raw, MIGRATIONS, 'plans');
  const captured: Captured[] = [];
  const db = capturing(raw, captured);
  const shapes: Array<{ label: string; from: number; to: number; indexServed: boolean }> = [];
  const run = (label: string, indexServed: boolean, f: () => unknown) => {
    const from = captured.length;
    try {
      f();
    } catch (e) {
      if ((e as { code?: string }).code !== 'INVALID') throw e;
    }
    shapes.push({ label, from, to: captured.length, indexServed });
  };
  for (const entity of DATA_ENTITIES) {
    const fields = ['id', 'createdAt', 'updatedAt', ...Object.keys(MODEL[entity].fields)].filter((fl) => filterableField(entity, fl));
    for (const [sn, scope] of Object.entries(SCOPES)) {
      run(`${entity}.get ${sn}`, true, () => getRecord(db, entity, 1, scope));
      run(`${entity} rowInScope ${sn}`, true, () => rowInScope(db, entity, 1, scope));
      run(`${entity} idsInScope ${sn}`, true, () => idsInScope(db, entity, [1, 2, 3], scope));
      run(`${entity}.list ${sn}`, false, () => listRecords(db, entity, { scope, limit: 50 }));
      run(`${entity}.list ${sn} offset`, false, () => listRecords(db, entity, { scope, limit: 50, offset: 1000 }));
      for (const field of fields) {
        for (const dir of ['asc', 'desc'] as const) {
          const sort = [{ field, dir }];
          run(`${entity}.list ${sn} sort ${field} ${dir}`, false, () => listRecords(db, entity, { scope, sort, limit: 50 }));
        }
        for (const op of opsFor(entity, field)) {
          const filter = filterOf(entity, field, op);
          const served = !exempt(filter);
          for (const sort of [undefined, [{ field, dir: 'asc' as const }], [{ field, dir: 'desc' as const }]]) {
            run(`${entity}.list ${sn} ${field} ${op}${sort ? ` sort ${sort[0]!.dir}` : ''}`, served, () => listRecords(db, entity, { scope, filters: [filter], ...(sort ? { sort } : {}), limit: 50 }));
          }
        }
      }
    }
    // Keyset pages: a cursor for every sort key shape (value and null).
    for (const field of fields) {
      for (const dir of ['asc', 'desc'] as const) {
        for (const v of [sampleValue(entity, field), null]) {
          const cursor = Buffer.from(JSON.stringify({ v: [typeof v === 'boolean' ? 1 : v], id: 5 })).toString('base64url');
          run(`${entity}.list cursor sort ${field} ${dir} ${v === null ? 'null' : 'value'}`, dir === 'asc' && v !== null, () => listRecords(db, entity, { scope: SCOPES.registers!, sort: [{ field, dir }], cursor, limit: 50 }));
        }
      }
    }
    run(`${entity}.list cursor by id`, true, () => listRecords(db, entity, { scope: SCOPES.all!, cursor: Buffer.from(JSON.stringify({ v: [], id: 5 })).toString('base64url'), limit: 50 }));
    run(`${entity} rowOfBlockedPerson`, true, () => rowOfBlockedPerson(db, entity, 1));
    run(`${entity} recordExists`, true, () => recordExists(db, entity, 1));
  }
  run('blockedPersonIds', true, () => blockedPersonIds(db, [1, 2]));
  // log.query: every filter alone and combined, both directions.
  const logFilters: Record<string, object> = {
    none: {},
    record: { entity: 'persons', recordId: 1 },
    entity: { entity: 'persons' },
    user: { user: 'admin' },
    action: { action: 'export' },
    from: { from: '2026-01-01T00:00:00Z' },
    range: { from: '2026-01-01T00:00:00Z', to: '2026-02-01T00:00:00Z' },
    afterSeq: { afterSeq: 10 },
    recordUser: { entity: 'persons', recordId: 1, user: 'admin' },
  };
  for (const [n, f] of Object.entries(logFilters)) {
    for (const descending of [false, true]) run(`log.query ${n}${descending ? ' desc' : ''}`, n !== 'none' && n !== 'afterSeq' && n !== 'from' && n !== 'range' ? true : false, () => queryAuditLog(db, { ...f, descending, limit: 100 }));
  }
  const bad: string[] = [];
  let statements = 0;
  for (const s of shapes) {
    for (const c of captured.slice(s.from, s.to)) {
      statements++;
      const lines = plan(raw, c);
      const p = problems(lines, s.indexServed);
      if (p.length) bad.push(`${s.label}: ${p.join('; ')}\n    ${c.sql}\n    ${lines.join('\n    ')}`);
    }
  }
  assert.ok(statements > 5000, `covers every shape (${statements} statements)`);
  assert.deepEqual(bad.slice(0, 20), [], `${bad.length} shapes scan a growing table`);
  raw.close();
});

test('the register scope is one correlated probe of the covering assignment index', () => {
  const raw = new Database(':memory:');
  migrate(raw, MIGRATIONS, 'plans');
  const captured: Captured[] = [];
  listRecords(capturing(raw, captured), 'persons', { scope: SCOPES.registers!, limit: 50 });
  const lines = plan(raw, captured[0]!);
  assert.ok(lines.some((l) => /CORRELATED SCALAR SUBQUERY/.test(l)), lines.join('\n'));
  assert.ok(lines.some((l) => /SEARCH ra USING COVERING INDEX register_assignments_(personId_registerId|registerId_personId)_to_idx/.test(l)), lines.join('\n'));
  assert.ok(!lines.some((l) => /LIST SUBQUERY/.test(l)), 'no IN list rebuilt per execution');
  raw.close();
});

test('a store of schema version 1 gets every declared index by migration', () => {
  const raw = new Database(':memory:');
  migrate(raw, MIGRATIONS.slice(0, 1), 'v1');
  const before = new Set((raw.prepare(`SELECT name FROM sqlite_master WHERE type = 'index'`).all() as Array<{ name: string }>).map((r) => r.name));
  assert.ok(!before.has('audit_log_entity_recordId_idx'));
  migrate(raw, MIGRATIONS, 'v1');
  const after = new Set((raw.prepare(`SELECT name FROM sqlite_master WHERE type = 'index'`).all() as Array<{ name: string }>).map((r) => r.name));
  for (const e of Object.values(MODEL)) for (const ix of indexesOf(e)) assert.ok(after.has(ix.name), ix.name);
  raw.close();
});

test('keyset cursors page through exactly the rows offsets do, in every sort shape (NULLs, descending); startsWith is a prefix range', () => {
  const raw = new Database(':memory:');
  migrate(raw, MIGRATIONS, 'cursor');
  const ins = raw.prepare(`INSERT INTO persons ("firstName", "lastName", city, "photoConsent", blocked) VALUES (?, ?, ?, ?, 0)`);
  const names = ['Maier', 'Müller', 'Mayer', 'Huber', 'maier', 'M', 'Ma', 'Mz', 'M\u{10FFFF}x', 'N'];
  for (let i = 0; i < 57; i++) ins.run(`F${i % 5}`, names[i % names.length]!, i % 3 === 0 ? null : `C${i % 4}`, i % 2);
  const db = raw as unknown as Db;
  const sorts = [undefined, [{ field: 'city', dir: 'asc' as const }], [{ field: 'city', dir: 'desc' as const }], [{ field: 'lastName', dir: 'desc' as const }, { field: 'city', dir: 'asc' as const }], [{ field: 'photoConsent', dir: 'desc' as const }, { field: 'city', dir: 'desc' as const }]];
  for (const sort of sorts) {
    const all = listRecords(db, 'persons', { scope: { kind: 'all' }, ...(sort ? { sort } : {}), limit: 1000 }).items.map((r) => r.id);
    const paged: unknown[] = [];
    let cursor: string | undefined;
    for (let n = 0; n < 100; n++) {
      const page = listRecords(db, 'persons', { scope: { kind: 'all' }, ...(sort ? { sort } : {}), limit: 7, ...(cursor ? { cursor } : {}) });
      paged.push(...page.items.map((r) => r.id));
      if (page.nextCursor === null) break;
      assert.equal(page.nextOffset, cursor ? null : 7);
      cursor = page.nextCursor;
    }
    assert.deepEqual(paged, all, `sort ${JSON.stringify(sort)}`);
  }
  assert.throws(() => listRecords(db, 'persons', { scope: { kind: 'all' }, cursor: 'not json', limit: 5 }), (e: { code?: string }) => e.code === 'INVALID');
  const c = listRecords(db, 'persons', { scope: { kind: 'all' }, limit: 5 }).nextCursor!;
  assert.throws(() => listRecords(db, 'persons', { scope: { kind: 'all' }, sort: [{ field: 'city' }], cursor: c, limit: 5 }), (e: { code?: string }) => e.code === 'INVALID', 'a cursor of another sort is refused');
  assert.throws(() => listRecords(db, 'persons', { scope: { kind: 'all' }, cursor: c, offset: 5, limit: 5 }), (e: { code?: string }) => e.code === 'INVALID');
  const prefix = (p: string) => new Set(listRecords(db, 'persons', { scope: { kind: 'all' }, filters: [{ field: 'lastName', op: 'startsWith', value: p }], limit: 1000 }).items.map((r) => r.lastName));
  assert.deepEqual(prefix('Ma'), new Set(['Maier', 'Mayer', 'Ma']));
  assert.deepEqual(prefix('M'), new Set(['Maier', 'Müller', 'Mayer', 'M', 'Ma', 'Mz', 'M\u{10FFFF}x']));
  assert.deepEqual(prefix('M\u{10FFFF}'), new Set(['M\u{10FFFF}x']));
  assert.equal(prefixSuccessor('Ma'), 'Mb');
  assert.equal(prefixSuccessor('\u{10FFFF}'), undefined);
  raw.close();
});
