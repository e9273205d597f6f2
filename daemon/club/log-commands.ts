/**
 * The change log commands (log.query, log.export), federation reporting and the club exports:
 * each entry is projected to what the reader may see.
 */
import { z } from 'zod';
import { queryAuditLog, MAX_QUERY_LIMIT, type AuditEntry } from '../../storage/club/audit-log.js';
import { MAX_EXPORT_ROWS, getRecord, listRecords, blockedPersonIds, recordExists, rowInScope, type RowScope, listIds } from '../../storage/club/club-data.js';
import { DOCUMENT_KINDS } from '../../storage/club/documents.js';
import { MODEL } from '../../storage/club/model.js';
import { revocable, type ClubServices } from './auth.js';
import { DOCUMENT_KIND_AREA, ENTITY_AREA, fieldArea, FIELD_AREA, type DataEntity } from './data-areas.js';
import type { Dispatcher } from '../edge/dispatcher.js';
import { effectiveScope, type Area } from './rights.js';
import { Guard, clubField, exportAudit, guard, id, register, strictObject } from './command-guard.js';
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

export function registerLog(d: Dispatcher, services: ClubServices): void {
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
