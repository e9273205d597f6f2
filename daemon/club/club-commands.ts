/**
 * The club commands: logins, users and rights, the data commands of every entity of the model,
 * documents, the change log, federation reporting and exports.
 *
 * Every handler: resolves the session to a Principal (daemon/club/auth.ts; UNAUTHENTICATED without),
 * refuses a payload that names another club, checks the right (area x action, deny by default)
 * and turns its scope into a row scope the store applies in SQL. A refusal for lack of rights,
 * a guessed id outside the caller's scope and any attempt at another club's data are reported as
 * 'rights' violations {ip, user, club, command, right} (the ban engine bans at once).
 * Payloads are validated by zod before a handler runs (strict: unknown fields are errors); data
 * fields against the entity's declaration in storage/club/model.ts.
 */
import { z, type ZodTypeAny } from 'zod';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { unlinkSync } from 'node:fs';
import { generateOneTimePassword, hashPassword, verifyPassword } from '../../crypto/password.js';
import { parseLegacySha512, wrapLegacySha512 } from '../../crypto/legacy-password.js';
import { queryAuditLog, MAX_QUERY_LIMIT, type AuditEntry } from '../../storage/club/audit-log.js';
import {
  DataError,
  FILTER_OPS,
  MAX_EXPORT_ROWS,
  MAX_LIST_LIMIT,
  createRecord,
  deleteRecord,
  getRecord,
  idsInScope,
  listRecords,
  MAX_CURSOR_LENGTH,
  blockedPersonIds,
  recordExists,
  rowInScope,
  rowOfBlockedPerson,
  updateRecord,
  visibleFields,
  type Filter,
  type RowScope,
  listIds,
  recordsByIds,
} from '../../storage/club/club-data.js';
import { putDocument, readDocument, DOCUMENT_KINDS } from '../../storage/club/documents.js';
import { StorageError } from '../../storage/engine/errors.js';
import { isOutOfMemory, type Db } from '../../storage/engine/sqlcipher.js';
import { MODEL, validatorFor, type EntityName } from '../../storage/club/model.js';
import {
  countActiveAdmins,
  deleteUser,
  getUserById,
  insertUser,
  listUsers,
  setDisabled,
  setGrants,
  setPasswordHash,
  updateUserProfile,
  userView,
  type UserRecord,
} from '../../storage/club/users.js';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { appendAudit, endSessionOnClose, issueTicket, login, logout, resume, refreshCredVersion, requirePrincipal, grantsOf, revocable, type ClubServices, type Principal } from './auth.js';
import { CommandError } from '../edge/command-errors.js';
import { DOCUMENT_KIND_AREA, ENTITY_AREA, fieldArea, FIELD_AREA, type DataEntity } from './data-areas.js';
import type { CommandContext, Dispatcher } from '../edge/dispatcher.js';
import { ACTIONS, AREAS, ROLES, effectiveScope, grantSchema, roleTemplate, scopeCovers, type Action, type Area, type Effective, type Grant } from './rights.js';

export type { ClubServices } from './auth.js';

export const DATA_COMMAND_ENTITIES = Object.keys(ENTITY_AREA) as DataEntity[];

const clubField = z.string().min(1).max(64).optional();
const id = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const fieldName = z.string().min(1).max(64);
const fieldsList = z.array(fieldName).min(1).max(64).optional();
const filterSchema = z.object({ field: fieldName, op: z.enum(FILTER_OPS), value: z.unknown().optional() }).strict();
const listSchema = {
  filters: z.array(filterSchema).max(20).optional(),
  sort: z.array(z.object({ field: fieldName, dir: z.enum(['asc', 'desc']).optional() }).strict()).max(3).optional(),
  fields: fieldsList,
  club: clubField,
};
const usernameSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/, 'user names are 1..64 letters, digits, . _ @ -');
const passwordSchema = z.string().min(12, 'passwords have at least 12 characters').max(1024);

// ---- helpers --------------------------------------------------------------------------------

class Guard {
  constructor(
    readonly services: ClubServices,
    readonly ctx: CommandContext,
    readonly command: string,
    readonly p: Principal,
  ) {}

  deny(right: string, detail = 'missing right'): never {
    this.services.violations.report({
      ip: this.ctx.conn.ip,
      kind: 'rights',
      detail,
      time: Date.now(),
      club: this.p.clubId,
      user: this.p.user.username,
      command: this.command,
      right,
    });
    throw new CommandError('FORBIDDEN', `you lack the right ${right}`);
  }

  report(right: string, detail: string): void {
    this.services.violations.report({ ip: this.ctx.conn.ip, kind: 'rights', detail, time: Date.now(), club: this.p.clubId, user: this.p.user.username, command: this.command, right });
  }

  /** Report a guessed id outside the caller's scope, answer as if it did not exist. */
  hidden(right: string, what: string): never {
    this.report(right, 'record outside scope');
    throw new CommandError('NOT_FOUND', `${what} does not exist`);
  }

  need(area: Area, action: Action): Effective {
    const e = effectiveScope(this.p.grants, area, action);
    if (!e) this.deny(`${area}:${action}`);
    return e;
  }

  /** Club-wide right (users, change log, exports): a narrower scope does not count. */
  needClub(area: Area, action: Action): void {
    const e = this.need(area, action);
    if (e.kind !== 'club') this.deny(`${area}:${action}`, 'club-wide right needed');
  }

  has(area: Area, action: Action): Effective | undefined {
    return effectiveScope(this.p.grants, area, action);
  }

  /** Whether the caller holds the dedicated right to read blocked persons (GDPR Art. 18). */
  readsBlocked(): boolean {
    return this.has('blockedPersons', 'read')?.kind === 'club';
  }

  /**
   * The rows an effective scope reaches. Blocked persons and the rows referring to them are
   * left out of writes and exports always, and of reads unless the caller holds
   * blockedPersons:read.
   */
  rowScope(e: Effective, entity: EntityName, mode: 'read' | 'write' | 'export' = 'write'): RowScope {
    const hideBlocked = mode !== 'read' || !this.readsBlocked();
    let s: RowScope;
    if (e.kind === 'club') s = { kind: 'all' };
    else if (MODEL[entity].registerScope.kind === 'none') s = { kind: 'none' };
    else if (e.kind === 'registers') s = { kind: 'registers', registers: [...e.registers], ...(e.own ? { personId: this.p.user.personId } : {}) };
    else s = { kind: 'person', personId: this.p.user.personId };
    return hideBlocked ? { ...s, hideBlocked: true } : s;
  }

  /**
   * The effective scopes that bound an entity's rows for an action: the entity's area, and for
   * attendance also persons:read (whether someone came is that person's data).
   * Undefined when a needed right is missing.
   */
  entityScopes(entity: DataEntity, action: Action): Effective[] | undefined {
    const e = this.has(ENTITY_AREA[entity] as Area, action);
    if (!e) return undefined;
    if (entity !== 'attendance') return [e];
    const pe = this.has('persons', 'read');
    return pe ? [e, pe] : undefined;
  }

  /** The row scope of an entity for an action, or undefined without the rights. */
  entityRowScope(entity: DataEntity, action: Action, mode: 'read' | 'write' | 'export'): RowScope | undefined {
    const es = this.entityScopes(entity, action);
    if (!es) return undefined;
    const [a, b] = es.map((e) => this.rowScope(e, entity, mode));
    return b ? { kind: 'both', a: a!, b, ...(a!.hideBlocked ? { hideBlocked: true } : {}) } : a;
  }

  /** Like entityRowScope, refusing (FORBIDDEN + violation) without the rights. */
  needEntity(entity: DataEntity, action: Action, mode: 'read' | 'write' | 'export'): { scope: RowScope; effective: Effective[] } {
    const area = ENTITY_AREA[entity] as Area;
    this.need(area, action);
    if (entity === 'attendance') this.need('persons', 'read');
    return { scope: this.entityRowScope(entity, action, mode)!, effective: this.entityScopes(entity, action)! };
  }
}

async function guard(services: ClubServices, ctx: CommandContext, command: string, payload: { club?: string | undefined }, o: { allowMustChange?: boolean } = {}): Promise<Guard> {
  const p = requirePrincipal(services, ctx, o);
  const g = new Guard(services, ctx, command, p);
  if (payload.club !== undefined && payload.club !== p.clubId) g.deny(`club:${payload.club.slice(0, 64)}`, 'request for another club');
  return g;
}

function dataError(g: Guard, e: unknown, right: string): never {
  if (e instanceof DataError) {
    if (e.code === 'OUT_OF_SCOPE') g.deny(right, e.message);
    if (e.code === 'NOT_FOUND') throw new CommandError('NOT_FOUND', e.message);
    if (e.code === 'CONFLICT') throw new CommandError('CONFLICT', e.message);
    throw new CommandError('BAD_REQUEST', e.message);
  }
  if (e instanceof StorageError) {
    if (e.code === 'VALIDATION_FAILED' || e.code === 'INVALID_ARGUMENT') throw new CommandError('BAD_REQUEST', e.message);
    if (e.code === 'DOC_NOT_FOUND') throw new CommandError('NOT_FOUND', 'the document does not exist');
    if (e.code === 'DOC_TOO_LARGE') throw new CommandError('TOO_LARGE', e.message);
    if (e.code === 'CLUB_EXISTS') throw new CommandError('CONFLICT', e.message);
  }
  // A sort or temporary table SQLite could not hold in memory (temporary storage is in memory: storage/engine/sqlcipher.ts).
  if (isOutOfMemory(e)) throw new CommandError('TOO_LARGE', 'the query needs more working memory than the server allows; narrow it with filters or fewer fields');
  throw e;
}

/** Rows per page of a streamed export: one page of records is all the server holds at a time. */
export const EXPORT_PAGE_ROWS = 500;

/**
 * A streamed export's body: NDJSON, one record per line (with `tag`: {"entity", "record"}), read
 * page by page (EXPORT_PAGE_ROWS ids at a time) from the club store as the client grants credit,
 * each page projected with the caller's field rights. The store is looked up again for every
 * page (it may have been closed between pages); rows deleted since the ids were read are
 * skipped. The caller wraps it in `revocable`, so a session end or a withdrawn right stops it.
 */
async function* exportRows(services: ClubServices, g: Guard, entity: DataEntity, ids: number[], scope: RowScope, fields?: readonly string[], tag?: string): AsyncGenerator<Buffer> {
  for (let i = 0; i < ids.length; i += EXPORT_PAGE_ROWS) {
    const db = services.storage.openClub(g.p.clubId).db;
    const rows = project(g, entity, recordsByIds(db, entity, ids.slice(i, i + EXPORT_PAGE_ROWS), scope), 'export', fields, db);
    if (!rows.length) continue;
    yield Buffer.from(rows.map((r) => JSON.stringify(tag ? { entity: tag, record: r } : r)).join('\n') + '\n', 'utf8');
  }
}

/** Strip fields whose own area the caller lacks for this row; refuse explicitly requested ones. */
function project(g: Guard, entity: DataEntity, rows: Record<string, unknown>[], action: 'read' | 'export', requested?: readonly string[], db: Db = g.p.db): Record<string, unknown>[] {
  const visible = new Set(['id', 'createdAt', 'updatedAt', ...visibleFields(entity)]);
  if (requested) for (const f of requested) if (!visible.has(f)) throw new CommandError('BAD_REQUEST', `${entity} has no field ${f}`);
  const areas = FIELD_AREA[entity] ?? {};
  const scopes = new Map<Area, RowScope | undefined>();
  for (const a of new Set(Object.values(areas))) {
    const e = g.has(a, action);
    scopes.set(a, e && g.rowScope(e, entity, 'read'));
  }
  if (requested) for (const f of requested) {
    const a = areas[f];
    if (a && !scopes.get(a)) g.deny(`${a}:${action}`);
  }
  // Which rows each field area reaches: one query per page and area (issue 21), not one per row.
  const inScope = new Map<Area, Set<number> | 'all' | 'none'>();
  const ids = rows.map((r) => r.id as number);
  for (const [a, s] of scopes) inScope.set(a, !s ? 'none' : s.kind === 'all' ? 'all' : idsInScope(db, entity, ids, s));
  return rows.map((r) => {
    const out: Record<string, unknown> = {};
    for (const k of requested ? ['id', ...requested] : Object.keys(r)) {
      if (!(k in r)) continue;
      const a = areas[k];
      if (a) {
        const s = inScope.get(a);
        const ok = s === 'all' || (s instanceof Set && s.has(r.id as number));
        if (!ok) continue;
      }
      out[k] = r[k];
    }
    return out;
  });
}

/**
 * Filters and sort keys on fields with their own area (point 3 of issue 19): the field must be
 * readable on every row the list ranges over, i.e. the field's scope must cover the row scope.
 * Otherwise the filter is an oracle (binary search with `lt`, `startsWith`, the sort order) for
 * values the caller may not read, and it is refused (FORBIDDEN + rights violation) rather than
 * applied to fewer rows: the stricter of the two choices, so a probe is never silently answered.
 */
function checkFilterFields(g: Guard, entity: DataEntity, rowScopes: readonly Effective[], fields: Iterable<string>, action: 'read' | 'export'): void {
  for (const f of fields) {
    const a = fieldArea(entity, f);
    if (!a) continue;
    const fe = g.has(a, action);
    if (!fe) g.deny(`${a}:${action}`, 'filter or sort on a field without the right');
    if (!rowScopes.some((r) => scopeCovers(fe, r))) g.deny(`${a}:${action}`, 'filter or sort on a field readable on fewer rows than the list covers');
  }
}

function filterFields(p: { filters?: Filter[]; sort?: Array<{ field: string }> }): string[] {
  return [...(p.filters ?? []).map((f) => f.field), ...(p.sort ?? []).map((s) => s.field)];
}

/** Change-log entry for reading blocked persons (or rows of them): every access is logged. */
function logBlockedReads(g: Guard, entity: DataEntity, rows: readonly Record<string, unknown>[]): void {
  if (!g.readsBlocked() || rows.length === 0) return;
  const ids =
    entity === 'persons'
      ? rows.filter((r) => r.blocked === true || r.blocked === 1).map((r) => r.id as number)
      : blockedPersonIds(g.p.db, rows.map((r) => r.personId).filter((x): x is number => typeof x === 'number'));
  if (ids.length === 0) return;
  appendAudit(g.services, g.p.store, { ...g.p.actor, action: 'read.blocked', entity, recordId: null, changes: entity === 'persons' ? { ids } : { personIds: ids, records: rows.length } });
}

/**
 * The record a write answers with, only as far as the caller may read it (point 6 of issue 19):
 * without read on the row, only its id. `changed` names the fields whose value changed among
 * those the caller may read, and every given field it may not read (whether such a value
 * changed would tell whether it equalled the old one).
 */
function writeAnswer(g: Guard, entity: DataEntity, record: Record<string, unknown>, given?: Record<string, unknown>, changes?: Record<string, unknown>): { record: Record<string, unknown>; changed?: string[] } {
  const scope = g.entityRowScope(entity, 'read', 'read');
  const visible = scope && rowInScope(g.p.db, entity, record.id as number, scope) ? project(g, entity, [record], 'read')[0]! : { id: record.id };
  if (!given) return { record: visible };
  return { record: visible, changed: Object.keys(given).filter((k) => (k in visible ? changes !== undefined && k in changes : true)) };
}

/** Entities whose rows define which persons register-scoped and own-record grants reach. */
const SCOPE_DEFINING = new Set<DataEntity>(['registerAssignments']);

/**
 * Point 1 of issue 19: data that defines a scope is guarded at least as strongly as the rights
 * it confers. Register assignments decide which persons a register grant reaches and which
 * registers an own-record grant reaches, so for a non-administrator:
 * - no create, change or delete of assignments of the person linked to their own user;
 * - an assignment that puts a person into a register (create, or an update's resulting
 *   register) is refused when one of the caller's register grants on that register would reach
 *   the person only through this assignment: the caller must already reach the person with
 *   every such right (a leader with contact data for register 1 cannot assign someone of
 *   register 2 to register 1 and then read their address).
 * Refusals are FORBIDDEN with a rights violation.
 */
function checkScopeDefining(g: Guard, entity: DataEntity, action: Action, before: Record<string, unknown> | undefined, values: Record<string, unknown>): void {
  if (!SCOPE_DEFINING.has(entity) || g.p.user.isAdmin) return;
  const own = g.p.user.personId;
  const personId = values.personId ?? before?.personId;
  if (own !== null && (personId === own || before?.personId === own)) g.deny(`${ENTITY_AREA[entity]}:${action}`, 'changing data that defines one\'s own scope');
  if (action === 'delete' || typeof personId !== 'number') return;
  const registerId = values.registerId ?? before?.registerId;
  // A person the caller cannot see at all is the reference check's business (NOT_FOUND).
  const pr = g.has('persons', 'read');
  if (pr && !rowInScope(g.p.db, 'persons', personId, g.rowScope(pr, 'persons'))) return;
  for (const gr of g.p.grants) {
    if (gr.scope.kind !== 'registers' || !gr.scope.registers.includes(registerId as number) || gr.area === 'registers') continue;
    for (const a of gr.actions) {
      const e = g.has(gr.area, a)!;
      if (!rowInScope(g.p.db, 'persons', personId, g.rowScope(e, 'persons', 'read'))) g.deny(`${gr.area}:${a}`, 'an assignment that widens one\'s own reach');
    }
  }
}

/**
 * Writes to rows of a blocked person (GDPR Art. 18): refused for everyone, except an
 * administrator lifting the block (`persons.update {id, blocked: false}` alone). A caller who
 * may read blocked persons sees the block and is answered CONFLICT (no violation: nothing was
 * tried that they could not see), or FORBIDDEN with a violation when a non-administrator tries
 * to lift it; for everyone else the row does not exist (NOT_FOUND, reported like a guessed id).
 * Returns the scope to use for the write.
 */
function blockedWrite(g: Guard, entity: DataEntity, id: number, scope: RowScope, values: Record<string, unknown>): RowScope {
  // Blocking a person is an ordinary update; the row is then blocked, which the check after the
  // write must not take for a move out of the scope.
  if (!rowOfBlockedPerson(g.p.db, entity, id)) return entity === 'persons' && values.blocked === true ? { ...scope, hideBlocked: false } : scope;
  const lifting = entity === 'persons' && Object.keys(values).length === 1 && values.blocked === false;
  if (lifting && g.p.user.isAdmin) return { ...scope, hideBlocked: false };
  const read = g.entityRowScope(entity, 'read', 'read');
  if (g.readsBlocked() && read && rowInScope(g.p.db, entity, id, read)) {
    if (lifting) g.deny('blockedPersons:update', 'only an administrator lifts a block');
    throw new CommandError('CONFLICT', 'the person is blocked (processing restricted, GDPR Art. 18); an administrator lifts the block first');
  }
  return scope;
}

/**
 * Writing fields with their own area: create/update on it; setting null (erasing) needs delete.
 * On create, null or false records nothing (no consent is the safe default), so it needs no
 * right on the field's area: a board member may create a person without seeing sensitive data.
 */
function checkWriteFields(g: Guard, entity: DataEntity, values: Record<string, unknown>, action: 'create' | 'update'): void {
  for (const [k, v] of Object.entries(values)) {
    const a = fieldArea(entity, k);
    if (!a) continue;
    if (action === 'create' && (v === null || v === false)) continue;
    g.need(a, v === null && action === 'update' ? 'delete' : action);
  }
}

function refVisible(g: Guard): (entity: EntityName, refId: number) => boolean {
  return (entity, refId) => {
    if (MODEL[entity].system) return false;
    const area = ENTITY_AREA[entity as DataEntity];
    if (area === 'documents') return recordExists(g.p.db, entity, refId);
    const e = g.has(area, 'read');
    // A reference needs the referenced record to exist and, where the caller can read that
    // area, to be visible; references into an area the caller cannot read are checked for
    // existence only (a treasurer may attach a fee to a person without seeing memberships).
    if (!e) return recordExists(g.p.db, entity, refId) && !rowOfBlockedPerson(g.p.db, entity, refId);
    if (rowInScope(g.p.db, entity, refId, g.rowScope(e, entity))) return true;
    // A new reference to a blocked person is a new processing of their data (GDPR Art. 18).
    if (g.readsBlocked() && rowOfBlockedPerson(g.p.db, entity, refId) && rowInScope(g.p.db, entity, refId, g.rowScope(e, entity, 'read'))) {
      throw new CommandError('CONFLICT', `${entity} ${refId} is blocked (processing restricted)`);
    }
    if (recordExists(g.p.db, entity, refId)) g.report(`${area}:read`, 'reference to a record outside scope');
    return false;
  };
}

function strictObject(shape: Record<string, ZodTypeAny>): z.ZodObject<Record<string, ZodTypeAny>, 'strict'> {
  return z.object(shape).strict();
}

function register(d: Dispatcher, name: string, schema: ZodTypeAny, handler: (p: any, ctx: CommandContext) => Promise<{ payload: unknown; download?: AsyncIterable<Uint8Array> }>, upload = false): void {
  d.register({ name, schema, ...(upload ? { upload: true } : {}), handler });
}

function exportAudit(g: Guard, entity: string | null, detail: Record<string, unknown>): void {
  appendAudit(g.services, g.p.store, { ...g.p.actor, action: 'export', entity, recordId: null, changes: detail });
}

// ---- entity commands ------------------------------------------------------------------------

/** Keyset pagination (issue 21): a previous page's opaque `nextCursor`, with the same filters and sort. */
const cursorField = z.string().min(1).max(MAX_CURSOR_LENGTH).regex(/^[A-Za-z0-9_-]+$/).optional().describe('opaque nextCursor of the previous page (same filters and sort); excludes offset');

function registerEntity(d: Dispatcher, services: ClubServices, entity: DataEntity): void {
  const area = ENTITY_AREA[entity] as Area;
  const right = (a: Action) => `${area}:${a}`;
  const createShape = (validatorFor(entity, 'create') as z.ZodObject<Record<string, ZodTypeAny>>).shape;
  const updateShape = (validatorFor(entity, 'update') as z.ZodObject<Record<string, ZodTypeAny>>).shape;

  register(d, `${entity}.get`, strictObject({ id, fields: fieldsList, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.get`, p);
    const { scope } = g.needEntity(entity, 'read', 'read');
    const r = getRecord(g.p.db, entity, p.id, scope);
    if (!r) {
      if (recordExists(g.p.db, entity, p.id)) g.hidden(right('read'), `${entity} ${p.id}`);
      throw new CommandError('NOT_FOUND', `${entity} ${p.id} does not exist`);
    }
    const record = project(g, entity, [r], 'read', p.fields)[0];
    logBlockedReads(g, entity, [r]);
    return { payload: { record } };
  });

  register(d, `${entity}.list`, strictObject({ ...listSchema, limit: z.number().int().min(1).max(MAX_LIST_LIMIT).optional(), offset: z.number().int().min(0).max(1e9).optional(), cursor: cursorField }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.list`, p);
    const { scope, effective } = g.needEntity(entity, 'read', 'read');
    checkFilterFields(g, entity, effective, filterFields(p), 'read');
    try {
      const r = listRecords(g.p.db, entity, { filters: p.filters, sort: p.sort, limit: p.limit ?? 100, offset: p.offset ?? 0, ...(p.cursor !== undefined ? { cursor: p.cursor } : {}), scope });
      const items = project(g, entity, r.items, 'read', p.fields);
      logBlockedReads(g, entity, r.items);
      return { payload: { items, nextOffset: r.nextOffset, nextCursor: r.nextCursor } };
    } catch (e) {
      dataError(g, e, right('read'));
    }
  });

  register(d, `${entity}.export`, strictObject({ ...listSchema, stream: z.boolean().optional() }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.export`, p);
    const { scope, effective } = g.needEntity(entity, 'export', 'export');
    checkFilterFields(g, entity, effective, filterFields(p), 'export');
    if (p.stream) {
      try {
        // Field rights are checked now, before anything is sent (project refuses unreadable requested fields).
        project(g, entity, [], 'export', p.fields);
        const { ids, truncated } = listIds(g.p.db, entity, { filters: p.filters, sort: p.sort, limit: MAX_EXPORT_ROWS, scope });
        exportAudit(g, entity, { count: ids.length, filters: p.filters ?? [], fields: p.fields ?? null, truncated, streamed: true });
        const download = revocable(services, ctx, exportRows(services, g, entity, ids, scope, p.fields), (grants) => effectiveScope(grants, area, 'export') !== undefined);
        return { payload: { count: ids.length, truncated, format: 'ndjson' }, download };
      } catch (e) {
        dataError(g, e, right('export'));
      }
    }
    try {
      const r = listRecords(g.p.db, entity, { filters: p.filters, sort: p.sort, limit: MAX_EXPORT_ROWS, offset: 0, scope });
      const items = project(g, entity, r.items, 'export', p.fields);
      exportAudit(g, entity, { count: items.length, filters: p.filters ?? [], fields: p.fields ?? null, truncated: r.nextOffset !== null });
      return { payload: { items, count: items.length, truncated: r.nextOffset !== null } };
    } catch (e) {
      dataError(g, e, right('export'));
    }
  });

  register(d, `${entity}.create`, strictObject({ ...createShape, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.create`, p);
    let { scope } = g.needEntity(entity, 'create', 'write');
    const { club: _c, ...values } = p;
    if (entity === 'persons' && values.blocked === true) scope = { ...scope, hideBlocked: false };
    checkWriteFields(g, entity, values, 'create');
    checkScopeDefining(g, entity, 'create', undefined, values);
    try {
      const record = createRecord(g.p.db, entity, values, { scope, audit: g.p.audit, actor: g.p.actor, refVisible: refVisible(g) });
      return { payload: writeAnswer(g, entity, record) };
    } catch (e) {
      dataError(g, e, right('create'));
    }
  });

  register(d, `${entity}.update`, strictObject({ ...updateShape, id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.update`, p);
    let { scope } = g.needEntity(entity, 'update', 'write');
    const { club: _c, id: rid, ...values } = p;
    checkWriteFields(g, entity, values, 'update');
    scope = blockedWrite(g, entity, rid, scope, values);
    if (SCOPE_DEFINING.has(entity)) checkScopeDefining(g, entity, 'update', getRecord(g.p.db, entity, rid, scope), values);
    try {
      const r = updateRecord(g.p.db, entity, rid, values, { scope, audit: g.p.audit, actor: g.p.actor, refVisible: refVisible(g) });
      return { payload: writeAnswer(g, entity, r.record, values, r.changes) };
    } catch (e) {
      if (e instanceof DataError && e.code === 'NOT_FOUND' && recordExists(g.p.db, entity, rid) && !getRecord(g.p.db, entity, rid, scope)) g.hidden(right('update'), `${entity} ${rid}`);
      dataError(g, e, right('update'));
    }
  });

  register(d, `${entity}.delete`, strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.delete`, p);
    let { scope } = g.needEntity(entity, 'delete', 'write');
    scope = blockedWrite(g, entity, p.id, scope, {});
    if (SCOPE_DEFINING.has(entity)) checkScopeDefining(g, entity, 'delete', getRecord(g.p.db, entity, p.id, scope), {});
    try {
      deleteRecord(g.p.db, entity, p.id, { scope, audit: g.p.audit, actor: g.p.actor });
      return { payload: { deleted: true, id: p.id } };
    } catch (e) {
      if (e instanceof DataError && e.code === 'NOT_FOUND' && recordExists(g.p.db, entity, p.id)) g.hidden(right('delete'), `${entity} ${p.id}`);
      dataError(g, e, right('delete'));
    }
  });
}

// ---- documents ------------------------------------------------------------------------------

function docArea(kind: unknown): Area {
  const a = DOCUMENT_KIND_AREA[String(kind)];
  if (!a) throw new CommandError('BAD_REQUEST', 'unknown document kind');
  return a;
}

function registerDocuments(d: Dispatcher, services: ClubServices): void {
  const kinds = [...DOCUMENT_KINDS] as [string, ...string[]];
  // A document of a kind the caller may not use answers exactly like a missing one
  // (NOT_FOUND, same message), and is reported as a guessed id (point 9 of issue 19).
  const docRow = (g: Guard, docId: number, action: Action): Record<string, unknown> => {
    const hideBlocked = action !== 'read' || !g.readsBlocked();
    const r = getRecord(g.p.db, 'documents', docId, { kind: 'all', ...(hideBlocked ? { hideBlocked } : {}) });
    if (!r) {
      if (recordExists(g.p.db, 'documents', docId)) g.hidden(`blockedPersons:${action}`, `documents ${docId}`);
      throw new CommandError('NOT_FOUND', `documents ${docId} does not exist`);
    }
    const a = docArea(r.kind);
    if (g.has(a, action)?.kind !== 'club') g.hidden(`${a}:${action}`, `documents ${docId}`);
    return r;
  };
  const readableKinds = (g: Guard, action: Action): string[] => kinds.filter((k) => g.has(docArea(k), action)?.kind === 'club');

  // documents.get / list / export: like the generic ones, restricted to the kinds the caller may read.
  register(d, 'documents.get', strictObject({ id, fields: fieldsList, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'documents.get', p);
    const r = docRow(g, p.id, 'read');
    const record = project(g, 'documents', [r], 'read', p.fields)[0];
    logBlockedReads(g, 'documents', [r]);
    return { payload: { record } };
  });
  for (const action of ['read', 'export'] as const) {
    const name = action === 'read' ? 'documents.list' : 'documents.export';
    const extra: Record<string, ZodTypeAny> = action === 'read' ? { limit: z.number().int().min(1).max(MAX_LIST_LIMIT).optional(), offset: z.number().int().min(0).max(1e9).optional(), cursor: cursorField } : { stream: z.boolean().optional() };
    register(d, name, strictObject({ ...listSchema, ...extra }), async (p, ctx) => {
      const g = await guard(services, ctx, name, p);
      const allowed = readableKinds(g, action);
      const asked = (p.filters ?? []).filter((f: Filter) => f.field === 'kind' && f.op === 'eq').map((f: Filter) => String(f.value));
      for (const k of asked) if (!allowed.includes(k)) g.deny(`${docArea(k)}:${action}`);
      if (allowed.length === 0) g.deny(`documents.other:${action}`, 'no document kind allowed');
      try {
        if (action === 'export' && p.stream) {
          project(g, 'documents', [], 'export', p.fields);
          const scope: RowScope = { kind: 'all', hideBlocked: true };
          const { ids, truncated } = listIds(g.p.db, 'documents', { filters: [...(p.filters ?? []), { field: 'kind', op: 'in', value: allowed }], sort: p.sort, limit: MAX_EXPORT_ROWS, scope });
          exportAudit(g, 'documents', { count: ids.length, kinds: allowed, streamed: true });
          const download = revocable(services, ctx, exportRows(services, g, 'documents', ids, scope, p.fields), (grants) => allowed.every((k) => effectiveScope(grants, docArea(k), 'export')?.kind === 'club'));
          return { payload: { count: ids.length, truncated, format: 'ndjson' }, download };
        }
        const hideBlocked = action !== 'read' || !g.readsBlocked();
        const r = listRecords(g.p.db, 'documents', { filters: [...(p.filters ?? []), { field: 'kind', op: 'in', value: allowed }], sort: p.sort, limit: action === 'read' ? (p.limit ?? 100) : MAX_EXPORT_ROWS, offset: p.offset ?? 0, ...(p.cursor !== undefined ? { cursor: p.cursor as string } : {}), scope: { kind: 'all', ...(hideBlocked ? { hideBlocked } : {}) } });
        const items = project(g, 'documents', r.items, action, p.fields);
        if (action === 'read') logBlockedReads(g, 'documents', r.items);
        if (action === 'export') {
          exportAudit(g, 'documents', { count: items.length, kinds: allowed });
          return { payload: { items, count: items.length, truncated: r.nextOffset !== null } };
        }
        return { payload: { items, nextOffset: r.nextOffset, nextCursor: r.nextCursor } };
      } catch (e) {
        dataError(g, e, `documents:${action}`);
      }
    });
  }

  register(
    d,
    'documents.upload',
    strictObject({ kind: z.enum(kinds), name: z.string().trim().min(1).max(255), mediaType: z.string().max(100).optional(), personId: id.optional(), club: clubField }),
    async (p, ctx) => {
      const g = await guard(services, ctx, 'documents.upload', p);
      const e = g.need(docArea(p.kind), 'create');
      if (e.kind !== 'club') g.deny(`${docArea(p.kind)}:create`, 'club-wide right needed');
      if (p.personId !== undefined && !refVisible(g)('persons', p.personId)) throw new CommandError('NOT_FOUND', `personId: persons ${p.personId} does not exist`);
      const clubId = g.p.clubId;
      const actor = g.p.actor;
      let db = g.p.db;
      try {
        // An upload, like a download, stops when the user is disabled or loses the right.
        const area = docArea(p.kind);
        const upload = revocable(services, ctx, ctx.upload!, (grants) => effectiveScope(grants, area, 'create')?.kind === 'club');
        const info = await putDocument(services.storage, clubId, upload, { kind: p.kind, name: p.name, ...(p.mediaType !== undefined ? { mediaType: p.mediaType } : {}), ...(p.personId !== undefined ? { personId: p.personId } : {}) }, {
          onStep: (step) => {
            // 'renamed' and 'recorded' run in the same tick around the row insert: one transaction
            // holds the row and its change-log entry.
            if (step === 'renamed') {
              db = services.storage.openClub(clubId).db;
              db.exec('BEGIN IMMEDIATE');
            } else if (step === 'recorded') {
              const row = db.prepare('SELECT id, kind, name, mediaType, personId, size, sha256 FROM documents ORDER BY id DESC LIMIT 1').get() as Record<string, unknown>;
              const changes: Record<string, { old: unknown; new: unknown }> = {};
              for (const [k, v] of Object.entries(row)) if (k !== 'id' && v !== null) changes[k] = { old: null, new: v };
              const store = services.storage.openClub(clubId);
              g.p.audit.append({ ...actor, action: 'create', entity: 'documents', recordId: row.id as number, changes });
              void store;
              db.exec('COMMIT');
            }
          },
        });
        return { payload: { document: info } };
      } catch (err) {
        if (db.inTransaction) db.exec('ROLLBACK');
        dataError(g, err, `${docArea(p.kind)}:create`);
      }
    },
    true,
  );

  register(d, 'documents.download', strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'documents.download', p);
    const row = docRow(g, p.id, 'read');
    logBlockedReads(g, 'documents', [row]);
    const area = docArea(row.kind);
    try {
      const { info, stream } = readDocument(services.storage, g.p.clubId, p.id);
      // Revocation reaches the stream: every chunk re-checks the session and, after a change of
      // rights, the right to read this kind (point 7 of issue 19).
      return { payload: { document: info }, download: revocable(services, ctx, stream as Readable, (grants) => effectiveScope(grants, area, 'read')?.kind === 'club') };
    } catch (e) {
      dataError(g, e, 'documents:read');
    }
  });

  register(d, 'documents.update', strictObject({ id, name: z.string().trim().min(1).max(255).optional(), mediaType: z.string().max(100).nullable().optional(), personId: id.nullable().optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'documents.update', p);
    const r = docRow(g, p.id, 'update');
    const { club: _c, id: rid, ...values } = p;
    try {
      const u = updateRecord(g.p.db, 'documents', rid, values, { scope: { kind: 'all', hideBlocked: true }, audit: g.p.audit, actor: g.p.actor, writable: ['name', 'mediaType', 'personId'], refVisible: refVisible(g) });
      // The answer, like any read, only with read on the kind (point 6 of issue 19).
      const readable = g.has(docArea(r.kind), 'read')?.kind === 'club';
      const changed = Object.keys(values).filter((k) => !readable || k in u.changes);
      return { payload: { record: readable ? project(g, 'documents', [u.record], 'read')[0] : { id: rid }, changed } };
    } catch (e) {
      dataError(g, e, `${docArea(r.kind)}:update`);
    }
  });

  register(d, 'documents.delete', strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'documents.delete', p);
    const r = docRow(g, p.id, 'delete');
    const db = g.p.db;
    const file = (db.prepare('SELECT file FROM documents WHERE id = ?').get(p.id) as { file: string } | undefined)?.file;
    try {
      deleteRecord(db, 'documents', p.id, { scope: { kind: 'all', hideBlocked: true }, audit: g.p.audit, actor: g.p.actor });
    } catch (e) {
      dataError(g, e, `${docArea(r.kind)}:delete`);
    }
    // The row (and the wrapped document key with it) is gone: the file is unreadable now; remove it.
    if (file) {
      try {
        unlinkSync(join(g.p.store.docsDir, file));
        fsyncDir(g.p.store.docsDir);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') services.logger?.warn('document file not removed', { club: g.p.clubId });
      }
    }
    return { payload: { deleted: true, id: p.id } };
  });
}

// ---- users and rights -----------------------------------------------------------------------

const roleSchema = z.enum(ROLES);
const registersSchema = z.array(id).max(200).optional();

interface RightsInput {
  role?: (typeof ROLES)[number] | undefined;
  registers?: number[] | undefined;
  grants?: Grant[] | undefined;
  admin?: boolean | undefined;
}

function resolveGrants(i: RightsInput): { role: string | null; grants: Grant[] } {
  if (i.grants !== undefined) return { role: i.role ?? null, grants: i.grants };
  if (i.role !== undefined) return { role: i.role, grants: roleTemplate(i.role, i.registers ?? []) };
  return { role: null, grants: [] };
}

/** Nobody hands out rights they do not hold club-wide themselves; only administrators make administrators. */
function checkGrantable(g: Guard, grants: readonly Grant[], admin: boolean | undefined): void {
  if (g.p.user.isAdmin) return;
  if (admin) g.deny('users:admin', 'only administrators appoint administrators');
  for (const gr of grants) for (const a of gr.actions) {
    if (g.has(gr.area, a)?.kind !== 'club') g.deny(`${gr.area}:${a}`, 'granting a right one does not hold');
  }
}

/**
 * The account an account action (reset password, disable, enable, re-link, delete, rights)
 * aims at. Acting on another account is allowed only where the caller could grant everything
 * that account holds (point 2 of issue 19, generalising the rule of rights.set): otherwise a
 * user manager resets a stronger account's password and logs in as it. Only administrators act
 * on administrators.
 */
function targetUser(g: Guard, userId: number, mayBeSelf: boolean): UserRecord {
  const u = getUserById(g.p.db, userId);
  if (!u) throw new CommandError('NOT_FOUND', `user ${userId} does not exist`);
  if (u.id === g.p.user.id) {
    if (!mayBeSelf) throw new CommandError('CONFLICT', 'use users.changeOwnPassword for yourself; your own rights and status are changed by another administrator');
    return u;
  }
  if (u.isAdmin && !g.p.user.isAdmin) g.deny('users:admin', 'only administrators change administrators');
  if (!g.p.user.isAdmin) {
    for (const gr of grantsOf(u)) for (const a of gr.actions) {
      if (g.has(gr.area, a)?.kind !== 'club') g.deny(`${gr.area}:${a}`, 'acting on an account that holds a right one could not grant');
    }
  }
  return u;
}

function publicUser(u: UserRecord): Record<string, unknown> {
  return { ...userView(u), role: u.role };
}

/** A user in the answer to a write: in full only with users:read club-wide (point 6 of issue 19). */
function userAnswer(g: Guard, u: UserRecord): Record<string, unknown> {
  return g.has('users', 'read')?.kind === 'club' ? publicUser(u) : { id: u.id };
}

function registerUsers(d: Dispatcher, services: ClubServices): void {
  const cost = services.passwordLog2N;
  register(d, 'users.list', strictObject({ club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.list', p);
    g.needClub('users', 'read');
    return { payload: { items: listUsers(g.p.db).map(publicUser) } };
  });
  register(d, 'users.get', strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.get', p);
    g.needClub('users', 'read');
    const u = getUserById(g.p.db, p.id);
    if (!u) throw new CommandError('NOT_FOUND', `user ${p.id} does not exist`);
    return { payload: { user: publicUser(u) } };
  });
  register(d, 'users.export', strictObject({ club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.export', p);
    g.needClub('users', 'export');
    const items = listUsers(g.p.db).map((u) => ({ ...publicUser(u), grants: grantsOf(u) }));
    exportAudit(g, 'users', { count: items.length });
    return { payload: { items, count: items.length } };
  });
  register(
    d,
    'users.create',
    strictObject({ username: usernameSchema, password: passwordSchema.optional(), displayName: z.string().max(200).optional(), personId: id.optional(), role: roleSchema.optional(), registers: registersSchema, grants: z.array(grantSchema).max(500).optional(), admin: z.boolean().optional(), club: clubField }),
    async (p, ctx) => {
      const g = await guard(services, ctx, 'users.create', p);
      g.needClub('users', 'create');
      const r = resolveGrants(p);
      checkGrantable(g, r.grants, p.admin);
      if (p.personId !== undefined && !recordExists(g.p.db, 'persons', p.personId)) throw new CommandError('NOT_FOUND', `personId: persons ${p.personId} does not exist`);
      const otp = p.password === undefined ? generateOneTimePassword() : undefined;
      const hash = await hashPassword(p.password ?? otp!, cost);
      const g2 = await guard(services, ctx, 'users.create', p);
      const db = g2.p.db;
      let newId = 0;
      try {
        db.transaction(() => {
          newId = insertUser(db, { username: p.username, displayName: p.displayName ?? null, personId: p.personId ?? null, passwordHash: hash, mustChangePassword: otp !== undefined, isAdmin: p.admin ?? false, role: r.role, grants: r.grants });
          g2.p.audit.append({ ...g2.p.actor, action: 'create', entity: 'users', recordId: newId, changes: { username: { old: null, new: p.username }, displayName: { old: null, new: p.displayName ?? null }, personId: { old: null, new: p.personId ?? null }, role: { old: null, new: r.role }, admin: { old: null, new: p.admin ?? false }, grants: { old: null, new: r.grants } } });
        }).immediate();
      } catch (e) {
        dataError(g2, e, 'users:create');
      }
      return { payload: { user: userAnswer(g2, getUserById(db, newId)!), ...(otp ? { oneTimePassword: otp } : {}) } };
    },
  );
  register(
    d,
    'users.import',
    strictObject({
      users: z.array(z.object({ username: usernameSchema, legacyHash: z.string().max(300), displayName: z.string().max(200).optional(), personId: id.optional(), role: roleSchema.optional(), registers: registersSchema }).strict()).min(1).max(1000),
      club: clubField,
    }),
    async (p, ctx) => {
      const g = await guard(services, ctx, 'users.import', p);
      g.needClub('users', 'create');
      const prepared = p.users.map((u: { username: string; legacyHash: string; displayName?: string; personId?: number; role?: (typeof ROLES)[number]; registers?: number[] }) => {
        const h = parseLegacySha512(u.legacyHash);
        if (!h) throw new CommandError('BAD_REQUEST', `user ${u.username}: legacy hash is not sha512$<salt hex>$<128 hex digits>`);
        const r = resolveGrants({ role: u.role, registers: u.registers });
        checkGrantable(g, r.grants, false);
        return { ...u, hash: h, ...r };
      });
      // Nothing fast is ever written: each SHA-512 value is wrapped in scrypt before it is stored.
      const wrapped = await Promise.all(prepared.map((u: { hash: string }) => wrapLegacySha512(u.hash, services.passwordLog2N)));
      prepared.forEach((u: { hash: string }, i: number) => (u.hash = wrapped[i]!));
      const g2 = await guard(services, ctx, 'users.import', p);
      g2.needClub('users', 'create');
      const db = g2.p.db;
      const ids: number[] = [];
      try {
        db.transaction(() => {
          for (const u of prepared) {
            const nid = insertUser(db, { username: u.username, displayName: u.displayName ?? null, personId: u.personId ?? null, passwordHash: u.hash, mustChangePassword: false, role: u.role, grants: u.grants });
            ids.push(nid);
            g2.p.audit.append({ ...g2.p.actor, action: 'create', entity: 'users', recordId: nid, changes: { username: { old: null, new: u.username }, imported: { old: null, new: 'legacy sha512 hash, stored wrapped in scrypt' }, role: { old: null, new: u.role } } });
          }
        }).immediate();
      } catch (e) {
        dataError(g2, e, 'users:create');
      }
      return { payload: { imported: ids.length, ids } };
    },
  );
  register(d, 'users.update', strictObject({ id, displayName: z.string().max(200).nullable().optional(), personId: id.nullable().optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.update', p);
    g.needClub('users', 'update');
    const u = targetUser(g, p.id, true);
    // The person linked to a user is what its own-record grants reach: re-linking oneself would
    // turn "own bank data" into anyone's (point 1 of issue 19). Administrators reach everything
    // anyway.
    if (u.id === g.p.user.id && p.personId !== undefined && p.personId !== u.personId && !g.p.user.isAdmin) g.deny('users:update', 'changing the person linked to one\'s own user');
    if (p.personId !== undefined && p.personId !== null && !recordExists(g.p.db, 'persons', p.personId)) throw new CommandError('NOT_FOUND', `personId: persons ${p.personId} does not exist`);
    const changes: Record<string, { old: unknown; new: unknown }> = {};
    if (p.displayName !== undefined && p.displayName !== u.displayName) changes.displayName = { old: u.displayName, new: p.displayName };
    if (p.personId !== undefined && p.personId !== u.personId) changes.personId = { old: u.personId, new: p.personId };
    if (Object.keys(changes).length) {
      g.p.db.transaction(() => {
        updateUserProfile(g.p.db, u.id, { ...(changes.displayName ? { displayName: p.displayName } : {}), ...(changes.personId ? { personId: p.personId } : {}) });
        g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: u.id, changes });
      }).immediate();
    }
    // Without users:read, whether a given value changed would tell the old one: name them all.
    const given = (['displayName', 'personId'] as const).filter((k) => p[k] !== undefined);
    return { payload: { user: userAnswer(g, getUserById(g.p.db, u.id)!), changed: g.has('users', 'read')?.kind === 'club' ? Object.keys(changes) : given } };
  });
  for (const [name, disabled] of [['users.disable', true], ['users.enable', false]] as const) {
    register(d, name, strictObject({ id, club: clubField }), async (p, ctx) => {
      const g = await guard(services, ctx, name, p);
      g.needClub('users', 'update');
      const u = targetUser(g, p.id, false);
      if (u.disabled !== disabled) {
        if (disabled && u.isAdmin && countActiveAdmins(g.p.db) <= 1) throw new CommandError('CONFLICT', 'the last administrator cannot be disabled');
        g.p.db.transaction(() => {
          setDisabled(g.p.db, u.id, disabled);
          g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: u.id, changes: { disabled: { old: u.disabled, new: disabled } } });
        }).immediate();
      }
      return { payload: { user: userAnswer(g, getUserById(g.p.db, u.id)!) } };
    });
  }
  register(d, 'users.delete', strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.delete', p);
    g.needClub('users', 'delete');
    const u = targetUser(g, p.id, false);
    if (u.isAdmin && countActiveAdmins(g.p.db) <= 1) throw new CommandError('CONFLICT', 'the last administrator cannot be deleted');
    g.p.db.transaction(() => {
      deleteUser(g.p.db, u.id);
      g.p.audit.append({ ...g.p.actor, action: 'delete', entity: 'users', recordId: u.id, changes: { username: { old: u.username, new: null }, role: { old: u.role, new: null } } });
    }).immediate();
    return { payload: { deleted: true, id: u.id } };
  });
  register(d, 'users.resetPassword', strictObject({ id, password: passwordSchema.optional(), club: clubField }), async (p, ctx) => {
    let g = await guard(services, ctx, 'users.resetPassword', p);
    g.needClub('users', 'update');
    targetUser(g, p.id, false);
    const otp = p.password === undefined ? generateOneTimePassword() : undefined;
    const hash = await hashPassword(p.password ?? otp!, cost);
    g = await guard(services, ctx, 'users.resetPassword', p);
    const u = targetUser(g, p.id, false);
    g.p.db.transaction(() => {
      setPasswordHash(g.p.db, u.id, hash, true, true);
      g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: u.id, changes: { passwordHash: { old: '[redacted]', new: '[redacted]' }, mustChangePassword: { old: u.mustChangePassword, new: true } } });
    }).immediate();
    return { payload: { id: u.id, mustChangePassword: true, ...(otp ? { oneTimePassword: otp } : {}) } };
  });
  register(d, 'users.changeOwnPassword', strictObject({ oldPassword: z.string().max(1024), newPassword: passwordSchema, club: clubField }), async (p, ctx) => {
    let g = await guard(services, ctx, 'users.changeOwnPassword', p, { allowMustChange: true });
    let ok = false;
    try {
      ok = await verifyPassword(p.oldPassword, g.p.user.passwordHash);
    } catch {
      ok = false;
    }
    if (!ok) {
      services.violations.report({ ip: ctx.conn.ip, kind: 'login', detail: 'wrong current password', time: Date.now(), club: g.p.clubId, user: g.p.user.username, command: 'users.changeOwnPassword' });
      appendAudit(services, g.p.store, { ...g.p.actor, action: 'login.failed', entity: 'users', recordId: g.p.user.id, changes: { reason: 'wrong current password at password change' } });
      throw new CommandError('UNAUTHENTICATED', 'the current password is wrong');
    }
    if (p.oldPassword === p.newPassword) throw new CommandError('BAD_REQUEST', 'the new password must differ from the old one');
    const hash = await hashPassword(p.newPassword, cost);
    g = await guard(services, ctx, 'users.changeOwnPassword', p, { allowMustChange: true });
    const uid = g.p.user.id;
    g.p.db.transaction(() => {
      setPasswordHash(g.p.db, uid, hash, false, true);
      g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: uid, changes: { passwordHash: { old: '[redacted]', new: '[redacted]' }, mustChangePassword: { old: g.p.user.mustChangePassword, new: false } } });
    }).immediate();
    refreshCredVersion(ctx, getUserById(g.p.db, uid)!.credVersion);
    return { payload: { changed: true } };
  });

  register(d, 'rights.roles', strictObject({ club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'rights.roles', p);
    g.needClub('users', 'read');
    return { payload: { areas: [...AREAS], actions: [...ACTIONS], roles: ROLES.map((r) => ({ role: r, grants: roleTemplate(r, [1]) })) } };
  });
  register(d, 'rights.get', strictObject({ userId: id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'rights.get', p);
    if (p.userId !== g.p.user.id) g.needClub('users', 'read');
    const u = getUserById(g.p.db, p.userId);
    if (!u) throw new CommandError('NOT_FOUND', `user ${p.userId} does not exist`);
    return { payload: { userId: u.id, admin: u.isAdmin, role: u.role, grants: grantsOf(u) } };
  });
  register(d, 'rights.set', strictObject({ userId: id, role: roleSchema.optional(), registers: registersSchema, grants: z.array(grantSchema).max(500).optional(), admin: z.boolean().optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'rights.set', p);
    g.needClub('users', 'update');
    const u = targetUser(g, p.userId, false);
    if (p.role === undefined && p.grants === undefined && p.admin === undefined) throw new CommandError('BAD_REQUEST', 'give role (with registers), grants, or admin');
    const r = p.role === undefined && p.grants === undefined ? { role: u.role, grants: grantsOf({ ...u, isAdmin: false }) } : resolveGrants(p);
    checkGrantable(g, r.grants, p.admin);
    if (p.admin === false && u.isAdmin && countActiveAdmins(g.p.db) <= 1) throw new CommandError('CONFLICT', 'the last administrator cannot be demoted');
    const before = { role: u.role, admin: u.isAdmin, grants: grantsOf({ ...u, isAdmin: false }) };
    g.p.db.transaction(() => {
      setGrants(g.p.db, u.id, r.role, r.grants, p.admin);
      g.p.audit.append({ ...g.p.actor, action: 'rights.set', entity: 'users', recordId: u.id, changes: { role: { old: before.role, new: r.role }, admin: { old: before.admin, new: p.admin ?? before.admin }, grants: { old: before.grants, new: r.grants } } });
    }).immediate();
    const after = getUserById(g.p.db, u.id)!;
    if (g.has('users', 'read')?.kind !== 'club') return { payload: { userId: u.id } };
    return { payload: { userId: u.id, admin: after.isAdmin, role: after.role, grants: grantsOf(after) } };
  });
}

// ---- change log, federation reporting, exports ---------------------------------------------

const logQuerySchema = {
  from: z.string().datetime({ offset: true }).optional(),
  to: z.string().datetime({ offset: true }).optional(),
  user: z.string().max(64).optional(),
  action: z.string().max(40).optional(),
  entity: z.string().max(40).optional(),
  recordId: id.optional(),
  afterSeq: z.number().int().min(0).optional(),
  limit: z.number().int().min(1).max(MAX_QUERY_LIMIT).optional(),
  descending: z.boolean().optional(),
  club: clubField,
};

function logView(e: AuditEntry): Record<string, unknown> {
  return { seq: e.seq, time: e.time, user: e.user, ip: e.ip, session: e.session, action: e.action, entity: e.entity, recordId: e.recordId, changes: e.changes };
}

const HIDDEN = '[hidden]';

function changeSide(changes: Record<string, unknown>, field: string): unknown {
  const c = changes[field] as { old?: unknown; new?: unknown } | undefined;
  return c && typeof c === 'object' ? (c.new ?? c.old) : undefined;
}

/**
 * The change log as the reader may see it (point 5 of issue 19): an entry about a record is
 * projected with the same area, field and scope rules as the record itself.
 * - A record the reader could not read now (its area, its register scope, its document kind,
 *   a blocked person without blockedPersons:read; users and rights without users:read
 *   club-wide) shows as the entry without values: `changes: null, hidden: true`.
 * - A deleted record counts as readable only with a club-wide right, or for rows of a person,
 *   when that person is readable (the person named in the entry).
 * - Within a readable record, fields with their own area (contact, birth date, reasons of
 *   absence) show `[hidden]` unless that area is readable on the record.
 * Entries about no record (logins, logouts, exports) are shown as they are. Bank, secret and
 * special-category values are never in the log in the first place (storage/club/club-data.ts).
 */
function logProjector(g: Guard): (e: AuditEntry) => Record<string, unknown> {
  const readsBlocked = g.readsBlocked();
  const cache = new Map<string, boolean>();
  const usersRead = g.has('users', 'read')?.kind === 'club';
  const recordReadable = (entity: DataEntity, id: number, changes: Record<string, unknown>): boolean => {
    const db = g.p.db;
    if (entity === 'documents') {
      const row = getRecord(db, 'documents', id, { kind: 'all' });
      const kind = row?.kind ?? changeSide(changes, 'kind');
      const a = DOCUMENT_KIND_AREA[String(kind)];
      if (!a || g.has(a, 'read')?.kind !== 'club') return false;
      const personId = row ? row.personId : changeSide(changes, 'personId');
      return readsBlocked || typeof personId !== 'number' || blockedPersonIds(db, [personId]).length === 0;
    }
    const scope = g.entityRowScope(entity, 'read', 'read');
    if (!scope) return false;
    // Club-wide, blocked persons included: every record, present or deleted, is readable.
    if (scope.kind === 'all' && !scope.hideBlocked) return true;
    if (recordExists(db, entity, id)) return rowInScope(db, entity, id, scope);
    // Deleted: judge by what the entry names.
    const personId = changeSide(changes, 'personId');
    if (!readsBlocked && typeof personId === 'number' && blockedPersonIds(db, [personId]).length > 0) return false;
    if (g.entityScopes(entity, 'read')!.every((e) => e.kind === 'club')) return true;
    if (entity === 'persons' || MODEL[entity].registerScope.kind !== 'person' || typeof personId !== 'number') return false;
    const ps = g.entityRowScope('persons', 'read', 'read');
    return !!ps && rowInScope(db, 'persons', personId, ps);
  };
  const fieldReadable = (entity: DataEntity, id: number, a: Area): boolean => {
    const fe = g.has(a, 'read');
    if (!fe) return false;
    if (fe.kind === 'club') return true;
    return recordExists(g.p.db, entity, id) && rowInScope(g.p.db, entity, id, g.rowScope(fe, entity, 'read'));
  };
  const cached = (key: string, f: () => boolean): boolean => {
    let v = cache.get(key);
    if (v === undefined) {
      v = f();
      cache.set(key, v);
    }
    return v;
  };
  // An export entry records the filters it ran with; a filter value on a field the reader may
  // not read club-wide (or on an entity whose area they cannot read) can be someone's data.
  const filterValueReadable = (entity: string | null, field: string): boolean => {
    if (entity === null || !Object.hasOwn(ENTITY_AREA, entity)) return false;
    const ea = ENTITY_AREA[entity as DataEntity];
    if (ea !== 'documents' && !g.has(ea, 'read')) return false;
    const a = fieldArea(entity as DataEntity, field);
    return !a || g.has(a, 'read')?.kind === 'club';
  };
  return (e) => {
    const v = logView(e);
    if (e.action === 'export' && e.changes && Array.isArray((e.changes as { filters?: unknown }).filters)) {
      const filters = ((e.changes as { filters: Array<Record<string, unknown>> }).filters).map((f) => ('value' in f && !filterValueReadable(e.entity, String(f.field)) ? { ...f, value: HIDDEN } : f));
      return { ...v, changes: { ...(e.changes as Record<string, unknown>), filters } };
    }
    if (e.entity === null || e.recordId === null || e.changes === null || typeof e.changes !== 'object') return v;
    const entity = e.entity;
    const id = e.recordId;
    const changes = e.changes as Record<string, unknown>;
    let ok: boolean;
    if (entity === 'users' || entity === 'userRights') ok = usersRead;
    else if (Object.hasOwn(ENTITY_AREA, entity)) ok = cached(`${entity}:${id}`, () => recordReadable(entity as DataEntity, id, changes));
    else ok = false;
    if (!ok) return { ...v, changes: null, hidden: true };
    const areas = FIELD_AREA[entity as DataEntity];
    if (!areas) return v;
    const out: Record<string, unknown> = {};
    for (const [k, c] of Object.entries(changes)) {
      const a = areas[k];
      out[k] = a && !cached(`${entity}:${id}:${a}`, () => fieldReadable(entity as DataEntity, id, a)) ? { old: HIDDEN, new: HIDDEN } : c;
    }
    return { ...v, changes: out };
  };
}

function registerLog(d: Dispatcher, services: ClubServices): void {
  register(d, 'log.query', strictObject(logQuerySchema), async (p, ctx) => {
    const g = await guard(services, ctx, 'log.query', p);
    g.needClub('changeLog', 'read');
    const { club: _c, ...q } = p;
    const r = queryAuditLog(g.p.db, q);
    return { payload: { entries: r.entries.map(logProjector(g)), nextAfterSeq: r.nextAfterSeq } };
  });
  register(d, 'log.export', strictObject({ from: logQuerySchema.from, to: logQuerySchema.to, stream: z.boolean().optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'log.export', p);
    g.needClub('changeLog', 'export');
    if (p.stream) {
      const range = { ...(p.from ? { from: p.from } : {}), ...(p.to ? { to: p.to } : {}) };
      // First pass counts (for the audit entry, written before anything is sent) and fixes the
      // last entry; the stream then pages up to it. The log is append-only, so both see the same entries.
      let count = 0;
      let last: number | undefined;
      let after: number | undefined;
      for (;;) {
        const r = queryAuditLog(g.p.db, { ...range, ...(after !== undefined ? { afterSeq: after } : {}), limit: MAX_QUERY_LIMIT });
        const take = r.entries.slice(0, MAX_EXPORT_ROWS - count);
        count += take.length;
        if (take.length) last = take[take.length - 1]!.seq;
        if (r.nextAfterSeq === null || count >= MAX_EXPORT_ROWS) break;
        after = r.nextAfterSeq;
      }
      exportAudit(g, 'auditLog', { count, from: p.from ?? null, to: p.to ?? null, streamed: true });
      const view = logProjector(g);
      const clubId = g.p.clubId;
      async function* lines(): AsyncGenerator<Buffer> {
        let cursor: number | undefined;
        while (last !== undefined) {
          const r = queryAuditLog(services.storage.openClub(clubId).db, { ...range, ...(cursor !== undefined ? { afterSeq: cursor } : {}), limit: MAX_QUERY_LIMIT });
          const page = r.entries.filter((e) => e.seq <= last!);
          if (page.length) yield Buffer.from(page.map((e) => JSON.stringify(view(e))).join('\n') + '\n', 'utf8');
          if (!page.length || page[page.length - 1]!.seq >= last || r.nextAfterSeq === null) return;
          cursor = r.nextAfterSeq;
        }
      }
      return { payload: { count, format: 'ndjson' }, download: revocable(services, ctx, lines(), (grants) => effectiveScope(grants, 'changeLog', 'export')?.kind === 'club') };
    }
    const entries: Record<string, unknown>[] = [];
    const view = logProjector(g);
    let after: number | undefined;
    for (;;) {
      const r = queryAuditLog(g.p.db, { ...(p.from ? { from: p.from } : {}), ...(p.to ? { to: p.to } : {}), ...(after !== undefined ? { afterSeq: after } : {}), limit: MAX_QUERY_LIMIT });
      entries.push(...r.entries.map(view));
      if (r.nextAfterSeq === null || entries.length >= MAX_EXPORT_ROWS) break;
      after = r.nextAfterSeq;
    }
    exportAudit(g, 'auditLog', { count: entries.length, from: p.from ?? null, to: p.to ?? null });
    return { payload: { entries, count: entries.length } };
  });

  const federation = (g: Guard) => {
    const persons = g.p.db.prepare(`SELECT p.id, p.firstName, p.lastName, p.birthDate FROM persons p WHERE p.blocked = 0 AND EXISTS (SELECT 1 FROM memberships m WHERE m.personId = p.id) ORDER BY p.lastName, p.firstName, p.id`).all() as Array<Record<string, unknown>>;
    const years = g.p.db.prepare(`SELECT "from", "to" FROM memberships WHERE personId = ? AND kind = 'active'`);
    const honours = g.p.db.prepare(`SELECT level, years, status, date FROM honours WHERE personId = ? ORDER BY id`);
    const now = Date.now();
    return persons.map((pr) => {
      let days = 0;
      for (const m of years.all(pr.id) as Array<{ from: string; to: string | null }>) days += Math.max(0, ((m.to ? Date.parse(m.to) : now) - Date.parse(m.from)) / 86_400_000);
      return { personId: pr.id, firstName: pr.firstName, lastName: pr.lastName, birthYear: typeof pr.birthDate === 'string' ? Number(pr.birthDate.slice(0, 4)) : null, activeYears: Math.floor(days / 365.25), honours: honours.all(pr.id) };
    });
  };
  register(d, 'federation.report', strictObject({ club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'federation.report', p);
    g.needClub('federationReporting', 'read');
    return { payload: { members: federation(g) } };
  });
  register(d, 'federation.export', strictObject({ club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'federation.export', p);
    g.needClub('federationReporting', 'export');
    const members = federation(g);
    exportAudit(g, 'federation', { count: members.length });
    return { payload: { members, count: members.length } };
  });

  register(d, 'exports.list', strictObject({ afterSeq: z.number().int().min(0).optional(), limit: z.number().int().min(1).max(MAX_QUERY_LIMIT).optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'exports.list', p);
    g.needClub('exports', 'read');
    const r = queryAuditLog(g.p.db, { action: 'export', ...(p.afterSeq !== undefined ? { afterSeq: p.afterSeq } : {}), limit: p.limit ?? 100 });
    return { payload: { entries: r.entries.map(logProjector(g)), nextAfterSeq: r.nextAfterSeq } };
  });
  register(d, 'exports.club', strictObject({ stream: z.boolean().optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'exports.club', p);
    g.needClub('exports', 'export');
    if (p.stream) {
      // Every entity's ids first (8 bytes a row), then the rows page by page: one line per record, {"entity", "record"}.
      const parts: Array<{ entity: DataEntity; ids: number[]; scope: RowScope }> = [];
      for (const entity of DATA_COMMAND_ENTITIES) {
        if (entity === 'documents') {
          const kinds = [...DOCUMENT_KINDS].filter((k) => g.has(docArea(k), 'export')?.kind === 'club');
          const scope: RowScope = { kind: 'all', hideBlocked: true };
          if (kinds.length) parts.push({ entity, ids: listIds(g.p.db, entity, { filters: [{ field: 'kind', op: 'in', value: kinds }], limit: MAX_EXPORT_ROWS, scope }).ids, scope });
          continue;
        }
        const scope = g.entityRowScope(entity, 'export', 'export');
        if (!scope) continue;
        parts.push({ entity, ids: listIds(g.p.db, entity, { limit: MAX_EXPORT_ROWS, scope }).ids, scope });
      }
      const counts = Object.fromEntries(parts.map((x) => [x.entity, x.ids.length]));
      exportAudit(g, null, { entities: counts, streamed: true });
      async function* lines(): AsyncGenerator<Buffer> {
        for (const x of parts) yield* exportRows(services, g, x.entity, x.ids, x.scope, undefined, x.entity);
      }
      return { payload: { counts, format: 'ndjson' }, download: revocable(services, ctx, lines(), (grants) => effectiveScope(grants, 'exports', 'export')?.kind === 'club') };
    }
    const out: Record<string, unknown[]> = {};
    for (const entity of DATA_COMMAND_ENTITIES) {
      if (entity === 'documents') {
        const kinds = [...DOCUMENT_KINDS].filter((k) => g.has(docArea(k), 'export')?.kind === 'club');
        if (kinds.length) out.documents = project(g, entity, listRecords(g.p.db, entity, { filters: [{ field: 'kind', op: 'in', value: kinds }], limit: MAX_EXPORT_ROWS, scope: { kind: 'all', hideBlocked: true } }).items, 'export');
        continue;
      }
      const scope = g.entityRowScope(entity, 'export', 'export');
      if (!scope) continue;
      out[entity] = project(g, entity, listRecords(g.p.db, entity, { limit: MAX_EXPORT_ROWS, scope }).items, 'export');
    }
    exportAudit(g, null, { entities: Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.length])) });
    return { payload: { data: out } };
  });
}

// ---- entry point ----------------------------------------------------------------------------

/** Register every club command. startServer calls this once storage is open. */
export function registerClubCommands(d: Dispatcher, services: ClubServices): void {
  d.onConnectionClosed((conn, session) => endSessionOnClose(services, conn, session));
  register(d, 'auth.login', strictObject({ club: z.string().min(1).max(64), user: z.string().min(1).max(64), password: z.string().min(1).max(1024) }), async (p, ctx) => ({ payload: await login(services, ctx, p) }));
  register(d, 'auth.logout', strictObject({ revokeTicket: z.boolean().optional() }).default({}), async (p, ctx) => ({ payload: logout(services, ctx, p) }));
  register(d, 'auth.ticket', strictObject({}).default({}), async (_p, ctx) => ({ payload: issueTicket(services, ctx) }));
  register(d, 'auth.resume', strictObject({ club: z.string().min(1).max(64), ticket: z.string().min(1).max(128) }), async (p, ctx) => ({ payload: resume(services, ctx, p) }));
  register(d, 'auth.whoami', strictObject({}).default({}), async (_p, ctx) => {
    const pr = requirePrincipal(services, ctx, { allowMustChange: true });
    return { payload: { club: pr.clubId, user: publicUser(pr.user), admin: pr.user.isAdmin, grants: pr.grants } };
  });
  for (const e of DATA_COMMAND_ENTITIES) if (e !== 'documents') registerEntity(d, services, e);
  registerDocuments(d, services);
  registerUsers(d, services);
  registerLog(d, services);
}
