/**
 * The data commands of every entity of the model (ENTITY.get, list, export, create, update, delete):
 * the right's scope becomes a row scope the store applies in SQL; fields are projected per area.
 */
import { z, type ZodTypeAny } from 'zod';
import { DataError, MAX_EXPORT_ROWS, MAX_LIST_LIMIT, createRecord, deleteRecord, getRecord, idsInScope, listRecords, blockedPersonIds, recordExists, rowInScope, rowOfBlockedPerson, updateRecord, visibleFields, type Filter, type RowScope, listIds, recordsByIds } from '../../storage/club/club-data.js';
import { type Db } from '../../storage/engine/sqlcipher.js';
import { MODEL, validatorFor, type EntityName } from '../../storage/club/model.js';
import { appendAudit, revocable, type ClubServices } from './auth.js';
import { CommandError } from '../edge/command-errors.js';
import { LARGEST_INT, LONGEST_CURSOR, MAX_ROWS_PER_ANSWER, firstN, fitAnswer } from './answer-fit.js';
import { ENTITY_AREA, fieldArea, FIELD_AREA, type DataEntity } from './data-areas.js';
import type { CommandContext, Dispatcher } from '../edge/dispatcher.js';
import { effectiveScope, scopeCovers, type Action, type Area, type Effective } from './rights.js';
import { Guard, clubField, grouped, cursorField, dataError, exportAudit, getSchema, guard, id, listSchema, quickGetPayload, quickUpdateParser, register, strictObject } from './command-guard.js';

export const DATA_COMMAND_ENTITIES = Object.keys(ENTITY_AREA) as DataEntity[];

/** Rows per page of a streamed export: one page of records is all the server holds at a time. */
export const EXPORT_PAGE_ROWS = 500;

/**
 * A streamed export's body: NDJSON, one record per line (with `tag`: {"entity", "record"}), read
 * page by page (EXPORT_PAGE_ROWS ids at a time) from the club store as the client grants credit,
 * each page projected with the caller's field rights. The store is looked up again for every
 * page (it may have been closed between pages); rows deleted since the ids were read are
 * skipped. The caller wraps it in `revocable`, so a session end or a withdrawn right stops it.
 */
export async function* exportRows(services: ClubServices, g: Guard, entity: DataEntity, ids: number[], scope: RowScope, fields?: readonly string[], tag?: string): AsyncGenerator<Buffer> {
  for (let i = 0; i < ids.length; i += EXPORT_PAGE_ROWS) {
    const db = services.storage.openClub(g.p.clubId).db;
    const rows = project(g, entity, recordsByIds(db, entity, ids.slice(i, i + EXPORT_PAGE_ROWS), scope), 'export', fields, db);
    if (!rows.length) continue;
    yield Buffer.from(rows.map((r) => JSON.stringify(tag ? { entity: tag, record: r } : r)).join('\n') + '\n', 'utf8');
  }
}

/** Per entity, built once: the fields a client may name, and the field areas with their fields. */
interface Projection {
  readonly visible: ReadonlySet<string>;
  readonly areas: Readonly<Record<string, Area>>;
  readonly areaList: readonly Area[];
}

const PROJECTIONS = new Map<DataEntity, Projection>();

function projectionOf(entity: DataEntity): Projection {
  let pr = PROJECTIONS.get(entity);
  if (!pr) {
    const areas = FIELD_AREA[entity] ?? {};
    pr = { visible: new Set(['id', 'createdAt', 'updatedAt', ...visibleFields(entity)]), areas, areaList: [...new Set(Object.values(areas))] };
    PROJECTIONS.set(entity, pr);
  }
  return pr;
}

/** Which rows of the page a field area reaches: all, none, or these ids. */
type Reach = Set<number> | 'all' | 'none';

/**
 * Strip fields whose own area the caller lacks for this row; refuse explicitly requested ones.
 * The per-entity facts are precomputed (projectionOf); a caller with club-wide rights on every
 * field area costs no set or map per request.
 */
export function project(g: Guard, entity: DataEntity, rows: Record<string, unknown>[], action: 'read' | 'export', requested?: readonly string[], db: Db = g.p.db): Record<string, unknown>[] {
  const { visible, areas, areaList } = projectionOf(entity);
  if (requested) for (const f of requested) if (!visible.has(f)) throw new CommandError('BAD_REQUEST', `${entity} has no field ${f}`);
  const scopes: Array<RowScope | undefined> = new Array(areaList.length);
  for (let i = 0; i < areaList.length; i++) {
    const e = g.has(areaList[i]!, action);
    scopes[i] = e && g.rowScope(e, entity, 'read');
  }
  if (requested) for (const f of requested) {
    const a = areas[f];
    if (a && !scopes[areaList.indexOf(a)]) g.deny(`${a}:${action}`);
  }
  // Which rows each field area reaches: one query per page and area (issue 21), not one per row.
  const reach: Reach[] = new Array(areaList.length);
  let allReached = true;
  for (let i = 0; i < areaList.length; i++) {
    const s = scopes[i];
    reach[i] = !s ? 'none' : s.kind === 'all' ? 'all' : idsInScope(db, entity, rows.map((r) => r.id as number), s);
    if (reach[i] !== 'all') allReached = false;
  }
  // Every field reached and none named: each row goes out whole. The rows are the caller's own
  // fresh objects (one statement call each), so they are answered as they are, not copied.
  if (allReached && !requested) return rows;
  const ctx: ProjectCtx = { areas, areaList, reach, allReached };
  const out: Record<string, unknown>[] = new Array(rows.length);
  for (let n = 0; n < rows.length; n++) {
    const r = rows[n]!;
    const o: Record<string, unknown> = {};
    if (requested) {
      copyField(ctx, r, o, 'id');
      for (const k of requested) copyField(ctx, r, o, k);
    } else for (const k in r) copyField(ctx, r, o, k);
    out[n] = o;
  }
  return out;
}

interface ProjectCtx {
  readonly areas: Readonly<Record<string, Area>>;
  readonly areaList: readonly Area[];
  readonly reach: readonly Reach[];
  readonly allReached: boolean;
}

/** Copy field k of row r into o when the caller reaches it on this row. */
function copyField(c: ProjectCtx, r: Record<string, unknown>, o: Record<string, unknown>, k: string): void {
  if (!(k in r)) return;
  const a = c.allReached ? undefined : c.areas[k];
  if (a) {
    const s = c.reach[c.areaList.indexOf(a)];
    if (!(s === 'all' || (s instanceof Set && s.has(r.id as number)))) return;
  }
  o[k] = r[k];
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
export function logBlockedReads(g: Guard, entity: DataEntity, rows: readonly Record<string, unknown>[]): void {
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

export function refVisible(g: Guard): (entity: EntityName, refId: number) => boolean {
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

export function registerEntity(d: Dispatcher, services: ClubServices, entity: DataEntity): void {
  const area = ENTITY_AREA[entity] as Area;
  const right = (a: Action) => `${area}:${a}`;
  const createShape = (validatorFor(entity, 'create') as z.ZodObject<Record<string, ZodTypeAny>>).shape;
  const updateShape = (validatorFor(entity, 'update') as z.ZodObject<Record<string, ZodTypeAny>>).shape;

  // Answered without a promise when it succeeds (the dispatcher sends a plain result in the same
  // turn); a failure is a rejected promise, as the dispatcher requires.
  const get = (p: { id: number; fields?: string[]; club?: string }, ctx: CommandContext): { payload: unknown } => {
    const g = guard(services, ctx, `${entity}.get`, p);
    const { scope } = g.needEntity(entity, 'read', 'read');
    const r = getRecord(g.p.db, entity, p.id, scope);
    if (!r) {
      if (recordExists(g.p.db, entity, p.id)) g.hidden(right('read'), `${entity} ${p.id}`);
      throw new CommandError('NOT_FOUND', `${entity} ${p.id} does not exist`);
    }
    const record = project(g, entity, [r], 'read', p.fields)[0];
    logBlockedReads(g, entity, [r]);
    return { payload: { record } };
  };
  d.register({ name: `${entity}.get`, schema: getSchema, quickParse: quickGetPayload, handler: (p: { id: number; fields?: string[]; club?: string }, ctx) => {
    try {
      return get(p, ctx);
    } catch (e) {
      return Promise.reject(e);
    }
  } });

  register(d, `${entity}.list`, strictObject({ ...listSchema, limit: z.number().int().min(1).max(MAX_LIST_LIMIT).optional(), offset: z.number().int().min(0).max(1e9).optional(), cursor: cursorField }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.list`, p);
    const { scope, effective } = g.needEntity(entity, 'read', 'read');
    checkFilterFields(g, entity, effective, filterFields(p), 'read');
    try {
      const r = listRecords(g.p.db, entity, { filters: p.filters, sort: p.sort, limit: p.limit ?? 100, offset: p.offset ?? 0, ...(p.cursor !== undefined ? { cursor: p.cursor } : {}), scope });
      const all = project(g, entity, r.items, 'read', p.fields);
      // Cut by bytes (PROTOCOL.md 7.4): what fits one answer, and the continuation after it.
      const n = fitAnswer(all, { items: [], nextOffset: LARGEST_INT, nextCursor: LONGEST_CURSOR });
      logBlockedReads(g, entity, firstN(r.items, n));
      return { payload: { items: firstN(all, n), ...r.cutAt(n) } };
    } catch (e) {
      dataError(g, e, right('read'));
    }
  });

  register(d, `${entity}.export`, strictObject({ ...listSchema, stream: z.boolean().optional(), cursor: cursorField }), async (p, ctx) => {
    const g = await guard(services, ctx, `${entity}.export`, p);
    const { scope, effective } = g.needEntity(entity, 'export', 'export');
    checkFilterFields(g, entity, effective, filterFields(p), 'export');
    if (p.stream && p.cursor !== undefined) throw new CommandError('BAD_REQUEST', 'cursor pages an export without a stream');
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
      const r = listRecords(g.p.db, entity, { filters: p.filters, sort: p.sort, limit: MAX_ROWS_PER_ANSWER, offset: 0, ...(p.cursor !== undefined ? { cursor: p.cursor } : {}), scope });
      const all = project(g, entity, r.items, 'export', p.fields);
      const n = fitAnswer(all, { items: [], count: LARGEST_INT, truncated: false, nextCursor: LONGEST_CURSOR });
      const { nextCursor } = r.cutAt(n);
      // Each page is an export of its own in the change log (a later page names its cursor's use).
      exportAudit(g, entity, { count: n, filters: p.filters ?? [], fields: p.fields ?? null, truncated: nextCursor !== null, ...(p.cursor !== undefined ? { continued: true } : {}) });
      return { payload: { items: firstN(all, n), count: n, truncated: nextCursor !== null, nextCursor } };
    } catch (e) {
      dataError(g, e, right('export'));
    }
  });

  // Writes go through the store's group commit (storage/club/write-group.ts): the work runs in
  // the group's transaction, answer included, and the promise settles once the group is durable.
  register(d, `${entity}.create`, strictObject({ ...createShape, club: clubField }), async (p, ctx) => {
    const g = guard(services, ctx, `${entity}.create`, p);
    return grouped(g, () => {
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
  });

  const updateSchema = strictObject({ ...updateShape, id, club: clubField });
  d.register({ name: `${entity}.update`, schema: updateSchema, quickParse: quickUpdateParser(entity, Object.keys(updateSchema.shape)), handler: async (p: any, ctx) => {
    const g = guard(services, ctx, `${entity}.update`, p);
    return grouped(g, () => {
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
  } });

  register(d, `${entity}.delete`, strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = guard(services, ctx, `${entity}.delete`, p);
    return grouped(g, () => {
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
  });
}
