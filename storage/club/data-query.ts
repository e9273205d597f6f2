/**
 * Listing club data: filters, sorting, keyset cursors and the id lists behind exports, each under
 * the caller's row scope.
 */
import type { z } from 'zod';
import { MODEL, type EntityName, type FieldDef } from './model.js';
import { fromRow, isBoolean, q } from './schema.js';
import type { Db } from '../engine/sqlcipher.js';
import { DataError, META_COLUMNS, RowScope, scopeCondition, selectList, stmt } from './data-rows.js';

// ---- list -----------------------------------------------------------------------------------

export const FILTER_OPS = ['eq', 'ne', 'lt', 'lte', 'gt', 'gte', 'in', 'isNull', 'contains', 'startsWith'] as const;
export type FilterOp = (typeof FILTER_OPS)[number];

export interface Filter {
  field: string;
  op: FilterOp;
  value?: unknown;
}

export interface ListOptions {
  filters?: readonly Filter[];
  sort?: ReadonlyArray<{ field: string; dir?: 'asc' | 'desc' }>;
  limit?: number;
  offset?: number;
  /** A previous page's `nextCursor` (keyset pagination); excludes `offset`. */
  cursor?: string;
  scope: RowScope;
}

export const MAX_LIST_LIMIT = 500;
export const MAX_EXPORT_ROWS = 100_000;

function unwrapZod(fd: FieldDef): z.ZodTypeAny {
  let t = fd.zod;
  while (t._def?.innerType) t = t._def.innerType;
  return t;
}

function isJsonish(fd: FieldDef): boolean {
  const n = unwrapZod(fd)._def?.typeName;
  return n === 'ZodArray' || n === 'ZodUnknown';
}

/** Is `field` something a client may filter or sort on? (Declared, not secret, or a meta column.) */
export function filterableField(entity: EntityName, field: string): boolean {
  if ((META_COLUMNS as readonly string[]).includes(field)) return true;
  const fd = MODEL[entity].fields[field];
  return !!fd && fd.sensitivity !== 'secret' && !fd.serverOnly && fd.sql !== 'BLOB';
}

function filterValue(entity: EntityName, field: string, v: unknown): unknown {
  if (field === 'id') {
    if (!Number.isSafeInteger(v) || (v as number) < 1) throw new DataError('INVALID', `filter on id needs a positive integer`);
    return v;
  }
  if (field === 'createdAt' || field === 'updatedAt') {
    if (typeof v !== 'string' || v.length > 40) throw new DataError('INVALID', `filter on ${field} needs an ISO time`);
    return v;
  }
  const fd = MODEL[entity].fields[field]!;
  const r = unwrapZod(fd).safeParse(v);
  if (!r.success) throw new DataError('INVALID', `filter value for ${field}: ${r.error.issues[0]?.message ?? 'invalid'}`);
  if (isBoolean(fd)) return r.data ? 1 : 0;
  return r.data;
}

function likeEscape(s: string): string {
  return s.replace(/[\\%_]/g, (c) => '\\' + c);
}

/**
 * The least string greater than every string starting with `prefix`, in SQLite's BINARY order
 * (UTF-8 bytes, which is code point order): the last code point raised by one (surrogates
 * skipped), dropping code points already at U+10FFFF. Undefined: no upper bound exists.
 */
export function prefixSuccessor(prefix: string): string | undefined {
  const cps = Array.from(prefix, (c) => c.codePointAt(0)!);
  while (cps.length > 0) {
    let last = cps.pop()! + 1;
    if (last >= 0xd800 && last <= 0xdfff) last = 0xe000;
    if (last <= 0x10ffff) return String.fromCodePoint(...cps, last);
  }
  return undefined;
}

/** The WHERE of a list; `never`: a part is constantly false (out-of-reach scope, IS NULL on a NOT NULL column). */
function whereFor(entity: EntityName, filters: readonly Filter[], scope: RowScope): { sql: string; args: unknown[]; never: boolean } {
  const c = scopeCondition(entity, scope);
  const parts = [`(${c.sql})`];
  const args: unknown[] = [...c.args];
  for (const f of filters) {
    if (!filterableField(entity, f.field)) throw new DataError('INVALID', `${entity} has no field ${f.field} to filter on`);
    const fd = MODEL[entity].fields[f.field];
    if (fd && isJsonish(fd) && f.op !== 'isNull') throw new DataError('INVALID', `${f.field} can only be filtered with isNull`);
    const col = q(f.field);
    switch (f.op) {
      case 'isNull':
        if (typeof f.value !== 'boolean') throw new DataError('INVALID', 'isNull needs true or false');
        // A column that is never NULL: the answer is known without reading a row.
        if ((META_COLUMNS as readonly string[]).includes(f.field) || fd?.required) parts.push(f.value ? '0' : '1');
        else parts.push(`${col} IS ${f.value ? '' : 'NOT '}NULL`);
        break;
      case 'in': {
        if (!Array.isArray(f.value) || f.value.length < 1 || f.value.length > 100) throw new DataError('INVALID', 'in needs 1..100 values');
        parts.push(`${col} IN (${f.value.map(() => '?').join(', ')})`);
        for (const v of f.value) args.push(filterValue(entity, f.field, v));
        break;
      }
      case 'contains':
      case 'startsWith': {
        if (typeof f.value !== 'string' || f.value.length > 200) throw new DataError('INVALID', `${f.op} needs text of at most 200 characters`);
        if (fd && fd.sql !== 'TEXT') throw new DataError('INVALID', `${f.op} applies to text fields only`);
        if (f.op === 'contains') {
          parts.push(`${col} LIKE ? ESCAPE '\\'`);
          args.push(`%${likeEscape(f.value)}%`);
          break;
        }
        // A prefix is an index range (issue 21): >= prefix AND < its successor (case-sensitive).
        const upper = prefixSuccessor(f.value);
        if (f.value === '') parts.push(`${col} IS NOT NULL`);
        else if (upper === undefined) parts.push(`${col} >= ?`), args.push(f.value);
        else parts.push(`${col} >= ? AND ${col} < ?`), args.push(f.value, upper);
        break;
      }
      default: {
        const sqlOp = { eq: '=', ne: '<>', lt: '<', lte: '<=', gt: '>', gte: '>=' }[f.op];
        if (f.value === null && (f.op === 'eq' || f.op === 'ne')) {
          parts.push(`${col} IS ${f.op === 'eq' ? '' : 'NOT '}NULL`);
          break;
        }
        parts.push(`${col} ${sqlOp} ?`);
        args.push(filterValue(entity, f.field, f.value));
      }
    }
  }
  return { sql: parts.join(' AND '), args, never: parts.some((p) => p === '0' || p === '(0)') };
}

/** Filter operators an index range serves (`contains` and `ne` are residual checks). */
const INDEX_SERVED_OPS: ReadonlySet<FilterOp> = new Set(['eq', 'lt', 'lte', 'gt', 'gte', 'in', 'isNull', 'startsWith']);

/** Longest cursor a request may carry (characters). */
export const MAX_CURSOR_LENGTH = 2048;

type CursorValue = string | number | null;

/**
 * Opaque to clients: base64url of JSON `{ v: [sort values...], id }`; when the sort values are
 * too long for MAX_CURSOR_LENGTH (a sort on a 2,000-character text), `{ r: id }` instead, and
 * the values are read from that row again (within the caller's scope) when the cursor comes back.
 */
function encodeCursor(values: CursorValue[], id: number): string {
  const full = Buffer.from(JSON.stringify({ v: values, id }), 'utf8').toString('base64url');
  return full.length <= MAX_CURSOR_LENGTH ? full : Buffer.from(JSON.stringify({ r: id }), 'utf8').toString('base64url');
}

function decodeCursor(cursor: string, keys: number): { v: CursorValue[]; id: number } | { ref: number } {
  const bad = () => new DataError('INVALID', 'cursor is not one this list handed out (same sort needed)');
  if (typeof cursor !== 'string' || cursor.length > MAX_CURSOR_LENGTH || !/^[A-Za-z0-9_-]*$/.test(cursor)) throw bad();
  let o: unknown;
  try {
    o = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  const c = o as { v?: unknown; id?: unknown; r?: unknown };
  if (c && typeof c === 'object' && Number.isSafeInteger(c.r) && (c.r as number) > 0 && keys > 0 && Object.keys(c).length === 1) return { ref: c.r as number };
  if (!c || typeof c !== 'object' || !Array.isArray(c.v) || c.v.length !== keys || !Number.isSafeInteger(c.id) || (c.id as number) < 0) throw bad();
  for (const x of c.v) if (!(x === null || typeof x === 'string' || (typeof x === 'number' && Number.isFinite(x)))) throw bad();
  return { v: c.v as CursorValue[], id: c.id as number };
}

/**
 * A cursor's position: its own values, or (the short form) the sort values of the row it names,
 * read within the caller's scope, so a cursor naming a row the caller cannot see tells nothing.
 * INVALID when that row is gone (start again, or page by offset).
 */
function cursorPosition(db: Db, entity: EntityName, keys: ReadonlyArray<{ field: string; col: string }>, c: { v: CursorValue[]; id: number } | { ref: number }, scope: RowScope): { v: CursorValue[]; id: number } {
  if (!('ref' in c)) return c;
  const e = MODEL[entity];
  const sc = scopeCondition(entity, scope);
  const row = db.prepare(`SELECT ${keys.map((k) => k.col).join(', ')} FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ? AND (${sc.sql})`).raw().get(c.ref, ...sc.args) as CursorValue[] | undefined;
  if (!row) throw new DataError('INVALID', 'the row this cursor continues after is gone; start the list again');
  return { v: row, id: c.ref };
}

/**
 * The keyset condition "after this row" for ORDER BY keys..., id ASC (issue 21): rows whose
 * sort tuple follows the cursor's, with SQLite's NULL order (NULL first ascending, last
 * descending). An ascending first key with a value also bounds that key from below, so the
 * walk starts inside the key's index instead of at its beginning.
 */
function keysetCondition(keys: ReadonlyArray<{ col: string; desc: boolean }>, idCol: string, c: { v: CursorValue[]; id: number }): { sql: string; args: unknown[] } {
  const ors: string[] = [];
  const args: unknown[] = [];
  const eqs: string[] = [];
  const eqArgs: unknown[] = [];
  for (let i = 0; i <= keys.length; i++) {
    let after: string;
    const afterArgs: unknown[] = [];
    if (i === keys.length) {
      after = `${idCol} > ?`;
      afterArgs.push(c.id);
    } else {
      const { col, desc } = keys[i]!;
      const v = c.v[i]!;
      if (v === null) after = desc ? '0' : `${col} IS NOT NULL`;
      else (after = desc ? `(${col} < ? OR ${col} IS NULL)` : `${col} > ?`), afterArgs.push(v);
    }
    ors.push(`(${[...eqs, after].join(' AND ')})`);
    args.push(...eqArgs, ...afterArgs);
    if (i < keys.length) {
      const { col } = keys[i]!;
      const v = c.v[i]!;
      if (v === null) eqs.push(`${col} IS NULL`);
      else eqs.push(`${col} = ?`), eqArgs.push(v);
    }
  }
  let sql = `(${ors.join(' OR ')})`;
  const first = keys[0];
  if (first && !first.desc && c.v[0] !== null) {
    sql = `${first.col} >= ? AND ${sql}`;
    args.unshift(c.v[0]);
  }
  return { sql, args };
}

/**
 * A page of an entity's rows in scope: filters, sort (then id ascending), and either an offset
 * or a keyset `cursor` (from a previous page's `nextCursor`, same filters and sort; issue 21):
 * a cursor page costs the same at any depth, an offset page grows with the offset.
 * Errors: DataError INVALID (unknown field, bad filter value, foreign cursor).
 */
export function listRecords(db: Db, entity: EntityName, o: ListOptions): ListPage {
  const e = MODEL[entity];
  const w = whereFor(entity, o.filters ?? [], o.scope);
  const order: string[] = [];
  const keys: Array<{ field: string; col: string; desc: boolean }> = [];
  for (const s of o.sort ?? []) {
    if (!filterableField(entity, s.field)) throw new DataError('INVALID', `${entity} has no field ${s.field} to sort on`);
    order.push(`${q(s.field)} ${s.dir === 'desc' ? 'DESC' : 'ASC'}`);
    keys.push({ field: s.field, col: q(s.field), desc: s.dir === 'desc' });
  }
  // Without a sort, a filter an index serves decides the plan: `+id` keeps SQLite from walking
  // the whole table in id order instead of the filter's index range (issue 21).
  const served = keys.length === 0 && (o.filters ?? []).some((f) => f.field !== e.idColumn && INDEX_SERVED_OPS.has(f.op) && !(f.op === 'isNull' && f.value === false) && f.value !== null);
  order.push(`${served ? '+' : ''}${q(e.idColumn)} ASC`);
  const limit = Math.min(Math.max(1, o.limit ?? 100), MAX_EXPORT_ROWS);
  if (o.cursor !== undefined) decodeCursor(o.cursor, keys.length);
  if (w.never) return { items: [], nextOffset: null, nextCursor: null, cutAt: () => ({ nextOffset: null, nextCursor: null }) };
  let where = w.sql;
  const args = [...w.args];
  let offset = Math.max(0, o.offset ?? 0);
  if (o.cursor !== undefined) {
    if (offset !== 0) throw new DataError('INVALID', 'cursor and offset exclude each other');
    const k = keysetCondition(keys, q(e.idColumn), cursorPosition(db, entity, keys, decodeCursor(o.cursor, keys.length), o.scope));
    where = `${where} AND ${k.sql}`;
    args.push(...k.args);
    offset = 0;
  }
  const rows = stmt(db, `SELECT ${selectList(entity)} FROM ${q(e.table)} WHERE ${where} ORDER BY ${order.join(', ')} LIMIT ? OFFSET ?`).all(...args, limit + 1, offset) as Record<string, unknown>[];
  const more = rows.length > limit;
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  const after = (r: Record<string, unknown>) => encodeCursor(keys.map((k) => r[k.field] as CursorValue), r[e.idColumn] as number);
  const nextCursor = more && last ? after(last) : null;
  const cutAt = (n: number) => (n >= page.length ? { nextOffset: more && o.cursor === undefined ? offset + limit : null, nextCursor } : { nextOffset: o.cursor === undefined ? offset + n : null, nextCursor: after(page[n - 1]!) });
  return { items: page.map((r) => fromRow(entity, r)), nextOffset: more && o.cursor === undefined ? offset + limit : null, nextCursor, cutAt };
}

/** A page of listRecords. */
export interface ListPage {
  items: Record<string, unknown>[];
  /** Offset of the next page (null on the last page and on a cursor page). */
  nextOffset: number | null;
  /** Keyset cursor of the next page (null on the last page). */
  nextCursor: string | null;
  /**
   * The continuation when only the first `n` (1 ≤ n) items are returned (an answer cut by bytes,
   * PROTOCOL.md 7.4): the offset and cursor of the row after the n-th; for n ≥ the page's length,
   * the page's own continuation.
   */
  cutAt(n: number): { nextOffset: number | null; nextCursor: string | null };
}

const IN_WIDTHS = [8, 32, 128, 500] as const;

/**
 * Of these row ids, those in scope: one query per 500 ids (issue 21: a field-visibility check
 * over a page costs one probe per page, not one per row).
 */
export function idsInScope(db: Db, entity: EntityName, ids: readonly number[], scope: RowScope): Set<number> {
  const e = MODEL[entity];
  const out = new Set<number>();
  const c = scopeCondition(entity, scope);
  if (c.sql === '0') return out;
  for (let i = 0; i < ids.length; i += 500) {
    const chunk = ids.slice(i, i + 500);
    // Padded (repeating an id) to one of four lengths, so few statement texts are prepared.
    const width = IN_WIDTHS.find((w) => w >= chunk.length)!;
    while (chunk.length < width) chunk.push(chunk[0]!);
    const rows = stmt(db, `SELECT ${q(e.idColumn)} AS id FROM ${q(e.table)} WHERE ${q(e.idColumn)} IN (${chunk.map(() => '?').join(', ')}) AND (${c.sql})`).all(...chunk, ...c.args) as Array<{ id: number }>;
    for (const r of rows) out.add(r.id);
  }
  return out;
}

/**
 * The ids of an export, in its order: the same filters, scope and sort as listRecords, at most
 * `limit` (<= MAX_EXPORT_ROWS) of them. A streamed export reads these once (8 bytes per row held)
 * and then the rows page by page with recordsByIds, so memory stays bounded by one page.
 */
export function listIds(db: Db, entity: EntityName, o: Omit<ListOptions, 'offset'>): { ids: number[]; truncated: boolean } {
  const e = MODEL[entity];
  const w = whereFor(entity, o.filters ?? [], o.scope);
  const order: string[] = [];
  for (const s of o.sort ?? []) {
    if (!filterableField(entity, s.field)) throw new DataError('INVALID', `${entity} has no field ${s.field} to sort on`);
    order.push(`${q(s.field)} ${s.dir === 'desc' ? 'DESC' : 'ASC'}`);
  }
  order.push(`${q(e.idColumn)} ASC`);
  const limit = Math.min(Math.max(1, o.limit ?? MAX_EXPORT_ROWS), MAX_EXPORT_ROWS);
  const ids = (stmt(db, `SELECT ${q(e.idColumn)} AS id FROM ${q(e.table)} WHERE ${w.sql} ORDER BY ${order.join(', ')} LIMIT ?`).all(...w.args, limit + 1) as Array<{ id: number }>).map((r) => r.id);
  const truncated = ids.length > limit;
  if (truncated) ids.length = limit;
  return { ids, truncated };
}

/** Rows by id (at most 1,000 per call), in the order of `ids`, still within `scope`; ids gone since are skipped. */
export function recordsByIds(db: Db, entity: EntityName, ids: readonly number[], scope: RowScope): Record<string, unknown>[] {
  if (ids.length > 1000) throw new DataError('INVALID', 'at most 1,000 ids per page');
  if (!ids.length) return [];
  const e = MODEL[entity];
  const c = scopeCondition(entity, scope);
  const rows = db.prepare(`SELECT ${selectList(entity)} FROM ${q(e.table)} WHERE ${q(e.idColumn)} IN (${ids.map(() => '?').join(', ')}) AND (${c.sql})`).all(...ids, ...c.args) as Record<string, unknown>[];
  const byId = new Map(rows.map((r) => [r[e.idColumn] as number, r]));
  const out: Record<string, unknown>[] = [];
  for (const id of ids) {
    const r = byId.get(id);
    if (r) out.push(fromRow(entity, r));
  }
  return out;
}
