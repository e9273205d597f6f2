/**
 * The change log commands (log.query, log.export), federation reporting and the club exports:
 * each entry is projected to what the reader may see.
 */
import { z } from 'zod';
import { queryAuditLog, MAX_QUERY_LIMIT, type AuditEntry } from '../../storage/club/audit-log.js';
import { DataError, MAX_EXPORT_ROWS, getRecord, listRecords, blockedPersonIds, recordExists, rowInScope, type Filter, type RowScope, listIds } from '../../storage/club/club-data.js';
import { cborSize } from '../../protocol/answer-size.js';
import { CommandError } from '../edge/command-errors.js';
import { AnswerBudget, LARGEST_INT, LONGEST_CURSOR, MAX_ROWS_PER_ANSWER, firstN, fitAnswer, partCursor, partCursorValue } from './answer-fit.js';
import { DOCUMENT_KINDS } from '../../storage/club/documents.js';
import { MODEL } from '../../storage/club/model.js';
import { revocable, type ClubServices } from './auth.js';
import { DOCUMENT_KIND_AREA, ENTITY_AREA, fieldArea, FIELD_AREA, type DataEntity } from './data-areas.js';
import type { Dispatcher } from '../edge/dispatcher.js';
import { effectiveScope, type Area } from './rights.js';
import { Guard, clubField, cursorField, exportAudit, guard, id, register, strictObject } from './command-guard.js';
import { DATA_COMMAND_ENTITIES, exportRows, project } from './data-commands.js';
import { docArea } from './document-commands.js';

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

/** Rows of the federation report read per answer: more than fit one (a member takes at least 60 bytes). */
const FEDERATION_ROWS = 2000;

function federationCursor(r: Record<string, unknown>): string {
  return Buffer.from(JSON.stringify([r.lastName, r.firstName, r.id]), 'utf8').toString('base64url');
}

function federationCursorValue(cursor: string): [string, string, number] {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    v = undefined;
  }
  if (!Array.isArray(v) || v.length !== 3 || typeof v[0] !== 'string' || typeof v[1] !== 'string' || !Number.isSafeInteger(v[2])) throw new CommandError('BAD_REQUEST', 'cursor is not one this report handed out');
  return v as [string, string, number];
}

/** A page of the change log as the reader sees it, cut by bytes (PROTOCOL.md 7.5): `nextAfterSeq` after the last entry given. */
function logPage(g: Guard, r: { entries: AuditEntry[]; nextAfterSeq: number | null }): { entries: Record<string, unknown>[]; nextAfterSeq: number | null } {
  const all = r.entries.map(logProjector(g));
  const n = fitAnswer(all, { entries: [], nextAfterSeq: LARGEST_INT });
  return { entries: firstN(all, n), nextAfterSeq: n < all.length ? r.entries[n - 1]!.seq : r.nextAfterSeq };
}

export function registerLog(d: Dispatcher, services: ClubServices): void {
  register(d, 'log.query', strictObject(logQuerySchema), async (p, ctx) => {
    const g = await guard(services, ctx, 'log.query', p);
    g.needClub('changeLog', 'read');
    const { club: _c, ...q } = p;
    return { payload: logPage(g, queryAuditLog(g.p.db, q)) };
  });
  register(d, 'log.export', strictObject({ from: logQuerySchema.from, to: logQuerySchema.to, stream: z.boolean().optional(), afterSeq: logQuerySchema.afterSeq, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'log.export', p);
    g.needClub('changeLog', 'export');
    if (p.stream && p.afterSeq !== undefined) throw new CommandError('BAD_REQUEST', 'afterSeq pages an export without a stream');
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
    // Without a stream: the entries that fit one answer (PROTOCOL.md 7.5), then nextAfterSeq.
    const entries: Record<string, unknown>[] = [];
    const view = logProjector(g);
    const budget = new AnswerBudget({ entries: [], count: LARGEST_INT, nextAfterSeq: LARGEST_INT });
    let after = p.afterSeq;
    let nextAfterSeq: number | null = null;
    for (;;) {
      const r = queryAuditLog(g.p.db, { ...(p.from ? { from: p.from } : {}), ...(p.to ? { to: p.to } : {}), ...(after !== undefined ? { afterSeq: after } : {}), limit: MAX_QUERY_LIMIT });
      const page = r.entries.map(view);
      const n = budget.take(page, entries.length ? 0 : 9);
      entries.push(...firstN(page, n));
      if (n < page.length) {
        nextAfterSeq = r.entries[n - 1]?.seq ?? after ?? null;
        break;
      }
      if (r.nextAfterSeq === null) break;
      after = r.nextAfterSeq;
    }
    exportAudit(g, 'auditLog', { count: entries.length, from: p.from ?? null, to: p.to ?? null, ...(p.afterSeq !== undefined ? { continued: true } : {}) });
    return { payload: { entries, count: entries.length, nextAfterSeq } };
  });

  // A page of the report in (lastName, firstName, id) order after the cursor's person; `more` when rows are left.
  const federation = (g: Guard, cursor: string | undefined) => {
    const after = cursor === undefined ? undefined : federationCursorValue(cursor);
    const rows = g.p.db
      .prepare(`SELECT p.id, p.firstName, p.lastName, p.birthDate FROM persons p WHERE p.blocked = 0 AND EXISTS (SELECT 1 FROM memberships m WHERE m.personId = p.id)${after ? ' AND (p.lastName, p.firstName, p.id) > (?, ?, ?)' : ''} ORDER BY p.lastName, p.firstName, p.id LIMIT ?`)
      .all(...(after ?? []), FEDERATION_ROWS + 1) as Array<Record<string, unknown>>;
    const more = rows.length > FEDERATION_ROWS;
    const persons = more ? rows.slice(0, FEDERATION_ROWS) : rows;
    const years = g.p.db.prepare(`SELECT "from", "to" FROM memberships WHERE personId = ? AND kind = 'active'`);
    const honours = g.p.db.prepare(`SELECT level, years, status, date FROM honours WHERE personId = ? ORDER BY id`);
    const now = Date.now();
    const members = persons.map((pr) => {
      let days = 0;
      for (const m of years.all(pr.id) as Array<{ from: string; to: string | null }>) days += Math.max(0, ((m.to ? Date.parse(m.to) : now) - Date.parse(m.from)) / 86_400_000);
      return { personId: pr.id, firstName: pr.firstName, lastName: pr.lastName, birthYear: typeof pr.birthDate === 'string' ? Number(pr.birthDate.slice(0, 4)) : null, activeYears: Math.floor(days / 365.25), honours: honours.all(pr.id) };
    });
    // Cut by bytes (PROTOCOL.md 7.5); the cursor names the last member given.
    const n = fitAnswer(members, { members: [], count: LARGEST_INT, nextCursor: LONGEST_CURSOR });
    const last = persons[n - 1];
    return { members: firstN(members, n), nextCursor: (n < members.length || more) && last ? federationCursor(last) : null };
  };
  const federationSchema = strictObject({ cursor: cursorField, club: clubField });
  register(d, 'federation.report', federationSchema, async (p, ctx) => {
    const g = await guard(services, ctx, 'federation.report', p);
    g.needClub('federationReporting', 'read');
    return { payload: federation(g, p.cursor) };
  });
  register(d, 'federation.export', federationSchema, async (p, ctx) => {
    const g = await guard(services, ctx, 'federation.export', p);
    g.needClub('federationReporting', 'export');
    const page = federation(g, p.cursor);
    exportAudit(g, 'federation', { count: page.members.length, ...(p.cursor !== undefined ? { continued: true } : {}) });
    return { payload: { ...page, count: page.members.length } };
  });

  register(d, 'exports.list', strictObject({ afterSeq: z.number().int().min(0).optional(), limit: z.number().int().min(1).max(MAX_QUERY_LIMIT).optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'exports.list', p);
    g.needClub('exports', 'read');
    return { payload: logPage(g, queryAuditLog(g.p.db, { action: 'export', ...(p.afterSeq !== undefined ? { afterSeq: p.afterSeq } : {}), limit: p.limit ?? 100 })) };
  });
  // What exports.club covers for this caller, in order: each entity it may export (documents: the kinds).
  const exportParts = (g: Guard): Array<{ entity: DataEntity; filters: Filter[]; scope: RowScope }> => {
    const parts: Array<{ entity: DataEntity; filters: Filter[]; scope: RowScope }> = [];
    for (const entity of DATA_COMMAND_ENTITIES) {
      if (entity === 'documents') {
        const kinds = [...DOCUMENT_KINDS].filter((k) => g.has(docArea(k), 'export')?.kind === 'club');
        if (kinds.length) parts.push({ entity, filters: [{ field: 'kind', op: 'in', value: kinds }], scope: { kind: 'all', hideBlocked: true } });
        continue;
      }
      const scope = g.entityRowScope(entity, 'export', 'export');
      if (scope) parts.push({ entity, filters: [], scope });
    }
    return parts;
  };
  register(d, 'exports.club', strictObject({ stream: z.boolean().optional(), cursor: cursorField, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'exports.club', p);
    g.needClub('exports', 'export');
    if (p.stream && p.cursor !== undefined) throw new CommandError('BAD_REQUEST', 'cursor pages an export without a stream');
    const parts = exportParts(g);
    if (p.stream) {
      // Every entity's ids first (8 bytes a row), then the rows page by page: one line per record, {"entity", "record"}.
      const lists = parts.map((x) => ({ ...x, ids: listIds(g.p.db, x.entity, { filters: x.filters, limit: MAX_EXPORT_ROWS, scope: x.scope }).ids }));
      const counts = Object.fromEntries(lists.map((x) => [x.entity, x.ids.length]));
      exportAudit(g, null, { entities: counts, streamed: true });
      async function* lines(): AsyncGenerator<Buffer> {
        for (const x of lists) yield* exportRows(services, g, x.entity, x.ids, x.scope, undefined, x.entity);
      }
      return { payload: { counts, format: 'ndjson' }, download: revocable(services, ctx, lines(), (grants) => effectiveScope(grants, 'exports', 'export')?.kind === 'club') };
    }
    // Without a stream: entities in order, as many records as fit one answer (PROTOCOL.md 7.5),
    // then a cursor naming the entity and row to go on with.
    const start = p.cursor === undefined ? { part: 0, inner: null } : partCursorValue(p.cursor, parts.map((x) => x.entity));
    const budget = new AnswerBudget({ data: {}, nextCursor: LONGEST_CURSOR });
    const out: Record<string, unknown[]> = {};
    let nextCursor: string | null = null;
    for (let i = start.part; i < parts.length; i++) {
      const x = parts[i]!;
      const inner = i === start.part ? start.inner : null;
      if (!budget.room(cborSize(x.entity) + 9)) {
        nextCursor = partCursor(x.entity, inner);
        break;
      }
      try {
        const r = listRecords(g.p.db, x.entity, { filters: x.filters, limit: MAX_ROWS_PER_ANSWER, ...(inner !== null ? { cursor: inner } : {}), scope: x.scope });
        const all = project(g, x.entity, r.items, 'export');
        const n = budget.take(all, 0);
        out[x.entity] = firstN(all, n);
        const next = r.cutAt(n).nextCursor;
        if (n < all.length || next !== null) {
          nextCursor = partCursor(x.entity, n > 0 ? next : inner);
          break;
        }
      } catch (e) {
        if (e instanceof DataError) throw new CommandError('BAD_REQUEST', 'cursor is not one this export handed out');
        throw e;
      }
    }
    exportAudit(g, null, { entities: Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v.length])), ...(p.cursor !== undefined ? { continued: true } : {}) });
    return { payload: { data: out, nextCursor } };
  });
}
