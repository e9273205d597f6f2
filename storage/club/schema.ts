/**
 * SQL derived from the model (storage/club/model.ts): CREATE TABLE statements, indexes, and the
 * versioned migrations a club store applies on open (`PRAGMA user_version`).
 *
 * Rules of the derivation:
 * - every table has an INTEGER PRIMARY KEY (`id`, or `seq` for the audit log) plus
 *   `createdAt`/`updatedAt` (ISO time) columns;
 * - column names are the field names, quoted ("from" and "to" are SQL keywords);
 * - required fields are NOT NULL; enums, booleans and max lengths become CHECK constraints, so
 *   the database itself refuses values the model forbids;
 * - references become FOREIGN KEYs (enforced: `PRAGMA foreign_keys=ON`);
 * - a field or entity with `since: v` is created by migration v: new tables by CREATE TABLE,
 *   new fields of older tables by ALTER TABLE ADD COLUMN (so a later field must be optional);
 * - hand-written steps (data moves, renames) go in EXTRA_MIGRATIONS and run after the derived
 *   statements of the same version.
 */
import { INDEX_VERSION, MODEL, type EntityDef, type FieldDef, type EntityName, modelVersion } from './model.js';
import { StorageError } from '../engine/errors.js';

export interface Migration {
  readonly version: number;
  readonly statements: readonly string[];
}

export const EXTRA_MIGRATIONS: Readonly<Record<number, readonly string[]>> = {
  1: [
    // The audit log is append-only; issue 4 adds the hash chain logic on top of these triggers.
    `CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END`,
    `CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END`,
  ],
};

export function q(ident: string): string {
  return '"' + ident.replace(/"/g, '""') + '"';
}

function sqlString(s: string): string {
  return "'" + s.replace(/'/g, "''") + "'";
}

export function columnSql(name: string, fd: FieldDef, model: Readonly<Record<string, EntityDef>>): string {
  const parts = [q(name), fd.sql];
  if (fd.required) parts.push('NOT NULL');
  if (fd.unique) parts.push('UNIQUE');
  const c = q(name);
  const checks: string[] = [];
  if (fd.enumValues) checks.push(`${c} IN (${fd.enumValues.map(sqlString).join(', ')})`);
  else if (isBoolean(fd)) checks.push(`${c} IN (0, 1)`);
  if (fd.maxLength !== undefined && fd.sql === 'TEXT') checks.push(`length(${c}) <= ${fd.maxLength}`);
  if (fd.maxLength !== undefined && fd.sql === 'BLOB') checks.push(`length(${c}) <= ${fd.maxLength}`);
  if (checks.length) parts.push(`CHECK (${fd.required ? '' : `${c} IS NULL OR `}(${checks.join(' AND ')}))`);
  if (fd.ref) {
    const target = model[fd.ref];
    if (!target) throw new Error(`model: field ${name} references unknown entity ${fd.ref}`);
    parts.push(`REFERENCES ${q(target.table)}(${q(target.idColumn)})`);
  }
  return parts.join(' ');
}

export function isBoolean(fd: FieldDef): boolean {
  let t = fd.zod;
  while (t._def?.innerType) t = t._def.innerType;
  return t._def?.typeName === 'ZodBoolean';
}

export function createTableSql(e: EntityDef, uptoVersion: number, model: Readonly<Record<string, EntityDef>> = MODEL): string[] {
  const cols = [`${q(e.idColumn)} INTEGER PRIMARY KEY`];
  for (const [name, fd] of Object.entries(e.fields)) if (fd.since <= uptoVersion) cols.push(columnSql(name, fd, model));
  cols.push(`"createdAt" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))`);
  cols.push(`"updatedAt" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))`);
  const out = [`CREATE TABLE ${q(e.table)} (\n  ${cols.join(',\n  ')}\n) STRICT`];
  for (const ix of indexesOf(e)) if (ix.since <= uptoVersion) out.push(ix.sql);
  return out;
}

export interface IndexDef {
  readonly name: string;
  readonly columns: readonly string[];
  readonly since: number;
  readonly sql: string;
}

/** Whether a client may filter or sort on this declared field (storage/club/data-query.ts filterableField). */
function clientFilterable(fd: FieldDef): boolean {
  return fd.sensitivity !== 'secret' && !fd.serverOnly && fd.sql !== 'BLOB';
}

/**
 * Every index of an entity, derived from its declaration (issue 21), so a new entity or field
 * gets its indexes by being declared:
 * - a field marked `index` or a reference: its own index (since the field's version);
 * - of a data (non-system) entity, every other field a client may filter or sort on, and the
 *   `createdAt`/`updatedAt` meta columns: their own index from INDEX_VERSION on (unique fields
 *   have theirs already);
 * - the entity's declared composite `indexes` (scope probes, change-log filters).
 * SQLite appends the rowid to every index, so a filter on one column followed by ORDER BY id,
 * and a keyset cursor on (column, id), are both one index range.
 */
export function indexesOf(e: EntityDef): IndexDef[] {
  const out: IndexDef[] = [];
  const add = (columns: readonly string[], since: number) => {
    const name = `${e.table}_${columns.join('_')}_idx`;
    out.push({ name, columns, since, sql: `CREATE INDEX IF NOT EXISTS ${q(name)} ON ${q(e.table)}(${columns.map(q).join(', ')})` });
  };
  for (const [name, fd] of Object.entries(e.fields)) {
    if (fd.unique) continue;
    if (fd.index || fd.ref) add([name], fd.since);
    else if (!e.system && clientFilterable(fd)) add([name], Math.max(fd.since, INDEX_VERSION));
  }
  if (!e.system) for (const m of ['createdAt', 'updatedAt']) add([m], Math.max(e.since, INDEX_VERSION));
  for (const ix of e.indexes ?? []) add(ix.columns, Math.max(ix.since, e.since));
  return out;
}

/** All migrations from version 1 to the model's version, derived from the declarations. */
export function deriveMigrations(model: Readonly<Record<string, EntityDef>> = MODEL, extra: Readonly<Record<number, readonly string[]>> = EXTRA_MIGRATIONS): Migration[] {
  const top = modelVersion(model);
  const out: Migration[] = [];
  for (let v = 1; v <= top; v++) {
    const statements: string[] = [];
    for (const e of Object.values(model)) {
      if (e.since === v) statements.push(...createTableSql(e, v, model));
      else if (e.since < v) {
        for (const [name, fd] of Object.entries(e.fields)) {
          if (fd.since !== v) continue;
          if (fd.required) throw new Error(`model: ${e.name}.${name} is added in version ${v} to an existing table, so it must be optional`);
          statements.push(`ALTER TABLE ${q(e.table)} ADD COLUMN ${columnSql(name, fd, model)}`);
        }
        for (const ix of indexesOf(e)) if (ix.since === v) statements.push(ix.sql);
      }
    }
    statements.push(...(extra[v] ?? []));
    out.push({ version: v, statements });
  }
  return out;
}

export const MIGRATIONS: readonly Migration[] = deriveMigrations();
export const SCHEMA_VERSION = MIGRATIONS.length;

// ---- row mapping ------------------------------------------------------------------------

function jsonish(fd: FieldDef): boolean {
  let t = fd.zod;
  while (t._def?.innerType) t = t._def.innerType;
  return t._def?.typeName === 'ZodArray' || t._def?.typeName === 'ZodUnknown';
}

/** A validated JS object to SQL parameters: booleans to 0/1, lists/JSON to text. */
export function toRow(entity: EntityName, obj: Record<string, unknown>): Record<string, unknown> {
  const e = MODEL[entity];
  const row: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const fd = e.fields[k];
    if (!fd) throw new StorageError('VALIDATION_FAILED', `${entity} has no field ${k}`);
    if (v === undefined) continue;
    if (v === null) row[k] = null;
    else if (isBoolean(fd)) row[k] = v ? 1 : 0;
    else if (jsonish(fd)) row[k] = JSON.stringify(v);
    else row[k] = v;
  }
  return row;
}

/** Per entity, built once: which columns come back converted (1: boolean from 0/1, 2: JSON text). */
const CONVERSIONS = new WeakMap<object, Readonly<Record<string, 1 | 2>>>();

function conversionsOf(entity: EntityName): Readonly<Record<string, 1 | 2>> {
  const e = MODEL[entity];
  let c = CONVERSIONS.get(e);
  if (!c) {
    const m: Record<string, 1 | 2> = Object.create(null) as Record<string, 1 | 2>;
    for (const [k, fd] of Object.entries(e.fields)) {
      if (isBoolean(fd)) m[k] = 1;
      else if (jsonish(fd)) m[k] = 2;
    }
    CONVERSIONS.set(e, (c = m));
  }
  return c;
}

/**
 * fromRow for a row read in raw mode: `values[i]` is column `columns[i]`; the object has the
 * columns in that order, converted as fromRow converts them.
 */
export function rowFromValues(entity: EntityName, columns: readonly string[], values: readonly unknown[]): Record<string, unknown> {
  const conv = conversionsOf(entity);
  const out: Record<string, unknown> = {};
  for (let i = 0; i < columns.length; i++) {
    const k = columns[i]!;
    const v = values[i];
    const c = v === null ? undefined : conv[k];
    out[k] = c === undefined ? v : c === 1 ? v === 1 : JSON.parse(String(v));
  }
  return out;
}

/** An SQL row back to a JS object (inverse of toRow). */
export function fromRow(entity: EntityName, row: Record<string, unknown>): Record<string, unknown> {
  const e = MODEL[entity];
  const out: Record<string, unknown> = {};
  for (const k in row) {
    const v = row[k];
    const fd = e.fields[k];
    if (!fd || v === null) out[k] = v;
    else if (isBoolean(fd)) out[k] = v === 1;
    else if (jsonish(fd)) out[k] = JSON.parse(String(v));
    else out[k] = v;
  }
  return out;
}
