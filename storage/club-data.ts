/**
 * Generic record access for every non-system entity of the data model (storage/model.ts):
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
import type { Db } from './sqlcipher.js';
import type { AuditLog } from './audit-log.js';
import { cachedStatement } from './statements.js';

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
  const base = baseCondition(entity, scope);
  if (!scope.hideBlocked) return base;
  const b = blockedCondition(entity);
  if (!b) return base;
  return { sql: `(${base.sql}) AND ${b}`, args: base.args };
}

/** Rows that are not, and do not refer to, a blocked person (undefined: the entity has no person). */
export function blockedCondition(entity: EntityName): string | undefined {
  if (entity === 'persons') return `"blocked" = 0`;
  const fd = MODEL[entity].fields.personId;
  if (fd?.ref !== 'persons') return undefined;
  return `("personId" IS NULL OR "personId" NOT IN (SELECT "id" FROM persons WHERE "blocked" = 1))`;
}

function baseCondition(entity: EntityName, scope: RowScope): { sql: string; args: unknown[] } {
  if (scope.kind === 'all') return { sql: '1', args: [] };
  if (scope.kind === 'none') return { sql: '0', args: [] };
  if (scope.kind === 'both') {
    const a = baseCondition(entity, scope.a);
    const b = baseCondition(entity, scope.b);
    return { sql: `(${a.sql}) AND (${b.sql})`, args: [...a.args, ...b.args] };
  }
  if (scope.kind === 'registers' && scope.personId !== undefined && scope.personId !== null) {
    const r = baseCondition(entity, { kind: 'registers', registers: scope.registers });
    const o = baseCondition(entity, { kind: 'person', personId: scope.personId });
    return { sql: `(${r.sql}) OR (${o.sql})`, args: [...r.args, ...o.args] };
  }
  const e = MODEL[entity];
  const rs = e.registerScope;
  if (rs.kind === 'none') return { sql: '0', args: [] };
  const active = `("to" IS NULL OR "to" >= ?)`;
  if (rs.kind === 'person') {
    const col = entity === 'persons' ? q('id') : q(rs.field);
    if (scope.kind === 'person') return scope.personId === null ? { sql: '0', args: [] } : { sql: `${col} = ?`, args: [scope.personId] };
    if (scope.registers.length === 0) return { sql: '0', args: [] };
    return {
      sql: `${col} IN (SELECT "personId" FROM register_assignments WHERE "registerId" IN (${scope.registers.map(() => '?').join(', ')}) AND ${active})`,
      args: [...scope.registers, today()],
    };
  }
  const col = q(rs.field);
  if (scope.kind === 'registers') {
    if (scope.registers.length === 0) return { sql: '0', args: [] };
    return { sql: `${col} IN (${scope.registers.map(() => '?').join(', ')})`, args: [...scope.registers] };
  }
  if (scope.personId === null) return { sql: '0', args: [] };
  return { sql: `${col} IN (SELECT "registerId" FROM register_assignments WHERE "personId" = ? AND ${active})`, args: [scope.personId, today()] };
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

function whereFor(entity: EntityName, filters: readonly Filter[], scope: RowScope): { sql: string; args: unknown[] } {
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
        parts.push(`${col} IS ${f.value ? '' : 'NOT '}NULL`);
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
        parts.push(`${col} LIKE ? ESCAPE '\\'`);
        args.push(f.op === 'contains' ? `%${likeEscape(f.value)}%` : `${likeEscape(f.value)}%`);
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
  return { sql: parts.join(' AND '), args };
}

export function listRecords(db: Db, entity: EntityName, o: ListOptions): { items: Record<string, unknown>[]; nextOffset: number | null } {
  const e = MODEL[entity];
  const w = whereFor(entity, o.filters ?? [], o.scope);
  const order: string[] = [];
  for (const s of o.sort ?? []) {
    if (!filterableField(entity, s.field)) throw new DataError('INVALID', `${entity} has no field ${s.field} to sort on`);
    order.push(`${q(s.field)} ${s.dir === 'desc' ? 'DESC' : 'ASC'}`);
  }
  order.push(`${q(e.idColumn)} ASC`);
  const limit = Math.min(Math.max(1, o.limit ?? 100), MAX_EXPORT_ROWS);
  const offset = Math.max(0, o.offset ?? 0);
  const rows = stmt(db, `SELECT ${selectList(entity)} FROM ${q(e.table)} WHERE ${w.sql} ORDER BY ${order.join(', ')} LIMIT ? OFFSET ?`).all(...w.args, limit + 1, offset) as Record<string, unknown>[];
  const more = rows.length > limit;
  return { items: rows.slice(0, limit).map((r) => fromRow(entity, r)), nextOffset: more ? offset + limit : null };
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
