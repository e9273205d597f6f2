/**
 * Rows of the club data under a scope: the row scope a right becomes (applied in SQL on every read),
 * blocked persons, the data errors, and reading one record.
 */
import { MODEL, type EntityName } from './model.js';
import { q, rowFromValues } from './schema.js';
import type { Db } from '../engine/sqlcipher.js';
import { cachedRawStatement, cachedStatement } from '../engine/statements.js';

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

/** The conditions of the club-wide scope per entity, built once (the common case of the request path). */
const ALL_CONDITIONS = new Map<EntityName, { plain: { sql: string; args: unknown[] }; hideBlocked: { sql: string; args: unknown[] } }>();

/**
 * The SQL condition (over the entity's own table, unaliased) that selects the rows in scope.
 * The result may be shared between calls: callers copy `args` before adding to them.
 */
export function scopeCondition(entity: EntityName, scope: RowScope): { sql: string; args: unknown[] } {
  if (scope.kind === 'all') {
    let c = ALL_CONDITIONS.get(entity);
    if (!c) {
      const b = blockedCondition(entity);
      c = { plain: { sql: '1', args: [] }, hideBlocked: b ? { sql: `(1) AND ${b}`, args: [] } : { sql: '1', args: [] } };
      ALL_CONDITIONS.set(entity, c);
    }
    return scope.hideBlocked ? c.hideBlocked : c.plain;
  }
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

export const stmt = cachedStatement;

const SELECT_LISTS = new Map<EntityName, string>();

/** The columns a client may see, quoted and joined (built once per entity). */
export function selectList(entity: EntityName): string {
  let l = SELECT_LISTS.get(entity);
  if (l === undefined) {
    l = [...META_COLUMNS, ...visibleFields(entity)].map(q).join(', ');
    SELECT_LISTS.set(entity, l);
  }
  return l;
}

/** The SQL of readRow per shared (constant) condition, so the request path builds no string. */
const READ_SQL = new WeakMap<{ sql: string }, string>();

export function readRow(db: Db, entity: EntityName, id: number, scope: RowScope): Record<string, unknown> | undefined {
  const c = scopeCondition(entity, scope);
  if (c.sql === '0') return undefined;
  let sql = c.args.length === 0 ? READ_SQL.get(c) : undefined;
  if (sql === undefined) {
    const e = MODEL[entity];
    sql = `SELECT ${selectList(entity)} FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ? AND (${c.sql})`;
    if (c.args.length === 0) READ_SQL.set(c, sql);
  }
  const { statement, columns } = cachedRawStatement(db, sql);
  const r = c.args.length === 0 ? statement.get(id) : statement.get(id, ...c.args);
  return r && rowFromValues(entity, columns, r);
}

/** Whether a row with this id exists at all (used to tell a guessed id from a missing one). */
export function recordExists(db: Db, entity: EntityName, id: number): boolean {
  const e = MODEL[entity];
  return stmt(db, `SELECT 1 FROM ${q(e.table)} WHERE ${q(e.idColumn)} = ?`).get(id) !== undefined;
}

export function getRecord(db: Db, entity: EntityName, id: number, scope: RowScope): Record<string, unknown> | undefined {
  return readRow(db, entity, id, scope);
}
