/**
 * Generic record access for every non-system entity of the data model (storage/club/model.ts):
 * get, list (filters, sort, pagination), create, update, delete. Everything is derived from the
 * declarations: which fields exist, their types (zod, strict: unknown fields are errors), which
 * may be filtered or sorted on. No SQL text ever comes from a client: identifiers are the
 * model's own field names (quoted), values are always bound parameters.
 *
 * Row scope: every call takes a RowScope, turned into an SQL condition derived from the entity's
 * `registerScope`, so a row outside the caller's scope is invisible to get, list, filters, update
 * and delete alike. A create or update whose result would lie outside the scope is rolled back
 * (that is what makes "move a person into another register" need rights on both registers).
 *
 * Each mutation runs in one transaction that also appends its change-log entry (old and new
 * value of each changed field; bank/special/secret values redacted), so both commit together,
 * durably (synchronous=FULL), or neither does.
 */
import type { z } from 'zod';
import { MODEL, sensitiveFields, validatorFor, type EntityName, type FieldDef } from './model.js';
import { fromRow, isBoolean, q, toRow } from './schema.js';
import type { Db } from '../engine/sqlcipher.js';
import type { AuditLog } from './audit-log.js';
import { cachedStatement } from '../engine/statements.js';

/**
 * Which rows a caller reaches:
 * - `all`, `none`;
 * - `registers`: rows of these registers, and with `personId` also the rows of that person
 *   (the union of register grants and an own-record grant);
 * - `person`: the rows of one person (own record; null: nothing);
 * - `both`: rows in both scopes (attendance: the events scope and the persons scope).
 * `hideBlocked` also leaves out persons whose processing is restricted (`persons.blocked`,
 * GDPR Art. 18) and every row that refers to such a person through `personId`.
 */
export type RowScope = (
  | { kind: 'all' }
  | { kind: 'registers'; registers: readonly number[]; personId?: number | null }
  | { kind: 'person'; personId: number | null }
  | { kind: 'both'; a: RowScope; b: RowScope }
  | { kind: 'none' }
) & { readonly hideBlocked?: boolean };

export type DataErrorCode = 'NOT_FOUND' | 'CONFLICT' | 'INVALID' | 'OUT_OF_SCOPE';

export class DataError extends Error {
  override readonly name = 'DataError';
  constructor(
    readonly code: DataErrorCode,
    message: string,
    /** For OUT_OF_SCOPE on a write: which side was out of scope. */
    readonly detail?: string,
  ) {
    super(message);
  }
}

export const DATA_ENTITIES = (Object.keys(MODEL) as EntityName[]).filter((n) => !MODEL[n].system);

export const META_COLUMNS = ['id', 'createdAt', 'updatedAt'] as const;

/** Fields a client ever sees: everything but `secret` ones (hashes, wrapped keys). */
export function visibleFields(entity: EntityName): string[] {
  return Object.entries(MODEL[entity].fields)
    .filter(([, fd]) => fd.sensitivity !== 'secret' && !fd.serverOnly)
    .map(([k]) => k);
}

function today(): string {
  return new Date().toISOString().slice(0, 10);
}

/** The SQL condition (over the entity's own table, unaliased) that selects the rows in scope. */
export function scopeCondition(entity: EntityName, scope: RowScope): { sql: string; args: unknown[] } {
  const base = baseCondition(entity, scope, today());
  if (!scope.hideBlocked || base.sql === '0') return base;
  const b = blockedCondition(entity);
  if (!b) return base;
  return { sql: `(${base.sql}) AND ${b}`, args: base.args };
}

/**
 * Rows that are not, and do not refer to, a blocked person (undefined: the entity has no person).
 * A correlated NOT EXISTS: one primary-key probe of `persons` per row considered (issue 21).
 */
export function blockedCondition(entity: EntityName): string | undefined {
  // Unary plus: never pick the (nearly all-zero) blocked index for this; it is a residual check.
  if (entity === 'persons') return `+"persons"."blocked" = 0`;
  const fd = MODEL[entity].fields.personId;
  if (fd?.ref !== 'persons') return undefined;
  return `NOT EXISTS (SELECT 1 FROM persons bp WHERE bp."id" = ${q(MODEL[entity].table)}."personId" AND bp."blocked" = 1)`;
}

/**
 * The scope conditions over the register assignments (issue 21: one index probe per row
 * considered, never a list rebuilt per execution):
 * - rows of persons playing in a set of registers: a correlated EXISTS on the covering index
 *   register_assignments(personId, registerId, to);
 * - rows of the registers one person plays in: that person's few active assignments, read by the
 *   same index.
 * `today` is fixed once per call, so the condition's text (and its prepared statement) depends
 * only on the number of registers.
 */
/** The condition no row meets; callers skip the query for it. */
const NEVER: { sql: string; args: unknown[] } = { sql: '0', args: [] };

function baseCondition(entity: EntityName, scope: RowScope, today: string): { sql: string; args: unknown[] } {
  if (scope.kind === 'all') return { sql: '1', args: [] };
  if (scope.kind === 'none') return { sql: '0', args: [] };
  if (scope.kind === 'both') {
    const a = baseCondition(entity, scope.a, today);
    const b = baseCondition(entity, scope.b, today);
    if (a.sql === '0' || b.sql === '0') return NEVER;
    return { sql: `(${a.sql}) AND (${b.sql})`, args: [...a.args, ...b.args] };
  }
  if (scope.kind === 'registers' && scope.personId !== undefined && scope.personId !== null) {
    const r = baseCondition(entity, { kind: 'registers', registers: scope.registers }, today);
    const o = baseCondition(entity, { kind: 'person', personId: scope.personId }, today);
    if (r.sql === '0') return o;
    if (o.sql === '0') return r;
    return { sql: `(${r.sql}) OR (${o.sql})`, args: [...r.args, ...o.args] };
  }
  const e = MODEL[entity];
  const rs = e.registerScope;
  if (rs.kind === 'none') return { sql: '0', args: [] };
  const active = `(ra."to" IS NULL OR ra."to" >= ?)`;
  const table = q(e.table);
  if (rs.kind === 'person') {
    const col = `${table}.${entity === 'persons' ? q('id') : q(rs.field)}`;
    if (scope.kind === 'person') return scope.personId === null ? { sql: '0', args: [] } : { sql: `${col} = ?`, args: [scope.personId] };
    if (scope.registers.length === 0) return { sql: '0', args: [] };
    return {
      sql: `EXISTS (SELECT 1 FROM register_assignments ra WHERE ra."personId" = ${col} AND ra."registerId" IN (${scope.registers.map(() => '?').join(', ')}) AND ${active})`,
      args: [...scope.registers, today],
    };
  }
  const col = `${table}.${q(rs.field)}`;
  if (scope.kind === 'registers') {
    if (scope.registers.length === 0) return { sql: '0', args: [] };
    return { sql: `${col} IN (${scope.registers.map(() => '?').join(', ')})`, args: [...scope.registers] };
  }
  if (scope.personId === null) return { sql: '0', args: [] };
  return { sql: `${col} IN (SELECT ra."registerId" FROM register_assignments ra WHERE ra."personId" = ? AND ${active})`, args: [scope.personId, today] };
}

/** Whether the row is a blocked person or refers to one (`personId`). */
export function rowOfBlockedPerson(db: Db, entity: EntityName, id: number): boolean {
  const b = blockedCondition(entity);
  if (!b) return false;
  const e = MODEL[entity];
  const r = stmt(db, `SELECT 1 FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ? AND NOT (${b})`).get(id);
  return r !== undefined;
}

/** Of these person ids, the blocked ones. */
export function blockedPersonIds(db: Db, ids: readonly number[]): number[] {
  const out: number[] = [];
  const s = stmt(db, `SELECT 1 FROM persons WHERE "id" = ? AND "blocked" = 1`);
  for (const id of new Set(ids)) if (s.get(id) !== undefined) out.push(id);
  return out;
}

const stmt = cachedStatement;

function selectList(entity: EntityName): string {
  return [...META_COLUMNS, ...visibleFields(entity)].map(q).join(', ');
}

function readRow(db: Db, entity: EntityName, id: number, scope: RowScope): Record<string, unknown> | undefined {
  const e = MODEL[entity];
  const c = scopeCondition(entity, scope);
  if (c.sql === '0') return undefined;
  const r = stmt(db, `SELECT ${selectList(entity)} FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ? AND (${c.sql})`).get(id, ...c.args) as Record<string, unknown> | undefined;
  return r && fromRow(entity, r);
}

/** Whether a row with this id exists at all (used to tell a guessed id from a missing one). */
export function recordExists(db: Db, entity: EntityName, id: number): boolean {
  const e = MODEL[entity];
  return stmt(db, `SELECT 1 FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ?`).get(id) !== undefined;
}

export function getRecord(db: Db, entity: EntityName, id: number, scope: RowScope): Record<string, unknown> | undefined {
  return readRow(db, entity, id, scope);
}

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

/** Opaque to clients: base64url of JSON `{ v: [sort values...], id }`. */
function encodeCursor(values: CursorValue[], id: number): string {
  return Buffer.from(JSON.stringify({ v: values, id }), 'utf8').toString('base64url');
}

function decodeCursor(cursor: string, keys: number): { v: CursorValue[]; id: number } {
  const bad = () => new DataError('INVALID', 'cursor is not one this list handed out (same sort needed)');
  if (typeof cursor !== 'string' || cursor.length > MAX_CURSOR_LENGTH || !/^[A-Za-z0-9_-]*$/.test(cursor)) throw bad();
  let o: unknown;
  try {
    o = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw bad();
  }
  const c = o as { v?: unknown; id?: unknown };
  if (!c || typeof c !== 'object' || !Array.isArray(c.v) || c.v.length !== keys || !Number.isSafeInteger(c.id) || (c.id as number) < 0) throw bad();
  for (const x of c.v) if (!(x === null || typeof x === 'string' || (typeof x === 'number' && Number.isFinite(x)))) throw bad();
  return { v: c.v as CursorValue[], id: c.id as number };
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
export function listRecords(db: Db, entity: EntityName, o: ListOptions): { items: Record<string, unknown>[]; nextOffset: number | null; nextCursor: string | null } {
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
  if (w.never) return { items: [], nextOffset: null, nextCursor: null };
  let where = w.sql;
  const args = [...w.args];
  let offset = Math.max(0, o.offset ?? 0);
  if (o.cursor !== undefined) {
    if (offset !== 0) throw new DataError('INVALID', 'cursor and offset exclude each other');
    const k = keysetCondition(keys, q(e.idColumn), decodeCursor(o.cursor, keys.length));
    where = `${where} AND ${k.sql}`;
    args.push(...k.args);
    offset = 0;
  }
  const rows = stmt(db, `SELECT ${selectList(entity)} FROM ${q(e.table)} WHERE ${where} ORDER BY ${order.join(', ')} LIMIT ? OFFSET ?`).all(...args, limit + 1, offset) as Record<string, unknown>[];
  const more = rows.length > limit;
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  const nextCursor = more && last ? encodeCursor(keys.map((k) => last[k.field] as CursorValue), last[e.idColumn] as number) : null;
  return { items: page.map((r) => fromRow(entity, r)), nextOffset: more && o.cursor === undefined ? offset + limit : null, nextCursor };
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

// ---- mutations ------------------------------------------------------------------------------

export interface Actor {
  user: string | null;
  ip: string | null;
  session: string | null;
}

export interface MutationOptions {
  scope: RowScope;
  audit: AuditLog;
  actor: Actor;
  /** Fields the caller may write (documents: metadata only). Default: every visible field. */
  writable?: readonly string[];
  /** Checks that a referenced record is visible to the caller; false = treated as missing. */
  refVisible?: (entity: EntityName, id: number) => boolean;
}

export type Changes = Record<string, { old: unknown; new: unknown }>;

const REDACTED = '[redacted]';

function redact(entity: EntityName, changes: Changes): Changes {
  const s = new Set(sensitiveFields(entity));
  const out: Changes = {};
  for (const [k, v] of Object.entries(changes)) out[k] = s.has(k) ? { old: v.old === null ? null : REDACTED, new: v.new === null ? null : REDACTED } : v;
  return out;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

function validate(entity: EntityName, mode: 'create' | 'update', input: unknown, writable: readonly string[] | undefined): Record<string, unknown> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw new DataError('INVALID', 'values must be an object');
  const allowed = new Set(writable ?? visibleFields(entity));
  for (const k of Object.keys(input)) if (!allowed.has(k)) throw new DataError('INVALID', `${entity} has no writable field ${k.slice(0, 64)}`);
  const r = validatorFor(entity, mode).safeParse(input);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new DataError('INVALID', `invalid value at ${i.path.join('.') || '(root)'}: ${i.message}`);
  }
  if (mode === 'update' && Object.keys(r.data as object).length === 0) throw new DataError('INVALID', 'nothing to update');
  return r.data as Record<string, unknown>;
}

function checkRefs(entity: EntityName, values: Record<string, unknown>, o: MutationOptions): void {
  if (!o.refVisible) return;
  for (const [k, v] of Object.entries(values)) {
    const fd = MODEL[entity].fields[k];
    if (fd?.ref && typeof v === 'number' && !o.refVisible(fd.ref, v)) throw new DataError('NOT_FOUND', `${k}: ${fd.ref} ${v} does not exist`);
  }
}

/** SQLite constraint errors to typed data errors (the message names no values). */
function sqlError(e: unknown): never {
  const code = (e as { code?: string }).code ?? '';
  if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') throw new DataError('CONFLICT', 'a referenced record does not exist, or other records still refer to this one');
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw new DataError('CONFLICT', 'a record with this value exists already');
  if (code.startsWith('SQLITE_CONSTRAINT')) throw new DataError('INVALID', 'the values break a constraint of the data model');
  throw e;
}

export function rowInScope(db: Db, entity: EntityName, id: number, scope: RowScope): boolean {
  const e = MODEL[entity];
  const c = scopeCondition(entity, scope);
  if (c.sql === '0') return false;
  return stmt(db, `SELECT 1 FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ? AND (${c.sql})`).get(id, ...c.args) !== undefined;
}

export function createRecord(db: Db, entity: EntityName, input: unknown, o: MutationOptions): Record<string, unknown> {
  const values = validate(entity, 'create', input, o.writable);
  const e = MODEL[entity];
  return db.transaction(() => {
    checkRefs(entity, values, o);
    const row = toRow(entity, values);
    const cols = Object.keys(row);
    let id: number;
    try {
      const r = stmt(db, cols.length ? `INSERT INTO ${q(e.table)} (${cols.map(q).join(', ')}) VALUES (${cols.map(() => '?').join(', ')}) RETURNING ${q(e.idColumn)} AS id` : `INSERT INTO ${q(e.table)} DEFAULT VALUES RETURNING ${q(e.idColumn)} AS id`).get(...cols.map((c) => row[c])) as { id: number };
      id = r.id;
    } catch (err) {
      sqlError(err);
    }
    if (!rowInScope(db, entity, id, o.scope)) throw new DataError('OUT_OF_SCOPE', `the new ${entity} record would lie outside your registers`, 'new');
    const created = readRow(db, entity, id, { kind: 'all' })!;
    const changes: Changes = {};
    for (const k of visibleFields(entity)) if (created[k] !== null && created[k] !== undefined) changes[k] = { old: null, new: created[k] };
    o.audit.append({ ...o.actor, action: 'create', entity, recordId: id, changes: redact(entity, changes) });
    return created;
  }).immediate();
}

export function updateRecord(db: Db, entity: EntityName, id: number, input: unknown, o: MutationOptions): { record: Record<string, unknown>; changes: Changes } {
  const values = validate(entity, 'update', input, o.writable);
  const e = MODEL[entity];
  return db.transaction(() => {
    const old = readRow(db, entity, id, o.scope);
    if (!old) throw new DataError('NOT_FOUND', `${entity} ${id} does not exist`);
    const changed: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(values)) if (!same(old[k], v)) changed[k] = v;
    checkRefs(entity, changed, o);
    if (Object.keys(changed).length === 0) return { record: old, changes: {} };
    const row = toRow(entity, changed);
    const cols = Object.keys(row);
    try {
      stmt(db, `UPDATE ${q(e.table)} SET ${cols.map((c) => `${q(c)} = ?`).join(', ')}, "updatedAt" = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE ${q(e.idColumn)} = ?`).run(...cols.map((c) => row[c]), id);
    } catch (err) {
      sqlError(err);
    }
    if (!rowInScope(db, entity, id, o.scope)) throw new DataError('OUT_OF_SCOPE', `the change would move ${entity} ${id} outside your registers`, 'new');
    const record = readRow(db, entity, id, { kind: 'all' })!;
    const changes: Changes = {};
    for (const k of Object.keys(changed)) changes[k] = { old: old[k] ?? null, new: record[k] ?? null };
    o.audit.append({ ...o.actor, action: 'update', entity, recordId: id, changes: redact(entity, changes) });
    return { record, changes };
  }).immediate();
}

export function deleteRecord(db: Db, entity: EntityName, id: number, o: MutationOptions, also?: (old: Record<string, unknown>) => void): Record<string, unknown> {
  const e = MODEL[entity];
  return db.transaction(() => {
    const old = readRow(db, entity, id, o.scope);
    if (!old) throw new DataError('NOT_FOUND', `${entity} ${id} does not exist`);
    try {
      stmt(db, `DELETE FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ?`).run(id);
    } catch (err) {
      sqlError(err);
    }
    also?.(old);
    const changes: Changes = {};
    for (const k of visibleFields(entity)) if (old[k] !== null && old[k] !== undefined) changes[k] = { old: old[k], new: null };
    o.audit.append({ ...o.actor, action: 'delete', entity, recordId: id, changes: redact(entity, changes) });
    return old;
  }).immediate();
}
