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
import { MODEL, sensitiveFields, validatorFor, type EntityName } from './model.js';
import { q, toRow } from './schema.js';
import type { Db } from '../engine/sqlcipher.js';
import type { AuditLog } from './audit-log.js';
import { DataError, RowScope, readRow, scopeCondition, stmt, visibleFields } from './data-rows.js';

export { DataError, DATA_ENTITIES, META_COLUMNS, visibleFields, scopeCondition, blockedCondition, rowOfBlockedPerson, blockedPersonIds, recordExists, getRecord, type RowScope, type DataErrorCode } from './data-rows.js';
export { FILTER_OPS, MAX_LIST_LIMIT, MAX_EXPORT_ROWS, filterableField, prefixSuccessor, MAX_CURSOR_LENGTH, listRecords, idsInScope, listIds, recordsByIds, type FilterOp, type Filter, type ListOptions } from './data-query.js';

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

/** Per entity, built once: its sensitive fields, and the fields a write may name by default. */
const SENSITIVE = new Map<EntityName, ReadonlySet<string>>();
const WRITABLE = new Map<EntityName, ReadonlySet<string>>();

function sensitiveSet(entity: EntityName): ReadonlySet<string> {
  let s = SENSITIVE.get(entity);
  if (!s) SENSITIVE.set(entity, (s = new Set(sensitiveFields(entity))));
  return s;
}

function writableSet(entity: EntityName, writable: readonly string[] | undefined): ReadonlySet<string> {
  if (writable) return new Set(writable);
  let s = WRITABLE.get(entity);
  if (!s) WRITABLE.set(entity, (s = new Set(visibleFields(entity))));
  return s;
}

/**
 * Run `fn` in an IMMEDIATE transaction (a savepoint when one is open already, e.g. inside a
 * group commit: storage/club/write-group.ts). One transaction function per connection, made
 * once: better-sqlite3's `db.transaction()` builds five functions per call.
 */
const TXNS = new WeakMap<Db, { immediate<T>(fn: () => T): T }>();

function immediate<T>(db: Db, fn: () => T): T {
  let t = TXNS.get(db);
  if (!t) TXNS.set(db, (t = db.transaction((f: () => unknown) => f()) as unknown as { immediate<T>(fn: () => T): T }));
  return t.immediate(fn);
}

function redact(entity: EntityName, changes: Changes): Changes {
  const s = sensitiveSet(entity);
  const out: Changes = {};
  for (const [k, v] of Object.entries(changes)) out[k] = s.has(k) ? { old: v.old === null ? null : REDACTED, new: v.new === null ? null : REDACTED } : v;
  return out;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

function validate(entity: EntityName, mode: 'create' | 'update', input: unknown, writable: readonly string[] | undefined): Record<string, unknown> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) throw new DataError('INVALID', 'values must be an object');
  const allowed = writableSet(entity, writable);
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
  return immediate(db, () => {
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
  });
}

export function updateRecord(db: Db, entity: EntityName, id: number, input: unknown, o: MutationOptions): { record: Record<string, unknown>; changes: Changes } {
  const values = validate(entity, 'update', input, o.writable);
  const e = MODEL[entity];
  return immediate(db, () => {
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
  });
}

export function deleteRecord(db: Db, entity: EntityName, id: number, o: MutationOptions, also?: (old: Record<string, unknown>) => void): Record<string, unknown> {
  const e = MODEL[entity];
  return immediate(db, () => {
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
  });
}
