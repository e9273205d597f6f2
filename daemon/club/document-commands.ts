/**
 * The documents commands (upload, get, list, export, download, update, delete): a document's kind
 * selects its area, and a kind the caller may not use answers like a missing document.
 */
import { z, type ZodTypeAny } from 'zod';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { unlinkSync } from 'node:fs';
import { MAX_EXPORT_ROWS, MAX_LIST_LIMIT, deleteRecord, getRecord, listRecords, recordExists, updateRecord, type Filter, type RowScope, listIds } from '../../storage/club/club-data.js';
import { putDocument, readDocument, DOCUMENT_KINDS, type DocumentInfo } from '../../storage/club/documents.js';
import { fsyncDir } from '../../crypto/atomic-file.js';
import { revocable, type ClubServices } from './auth.js';
import { CommandError } from '../edge/command-errors.js';
import { LARGEST_INT, LONGEST_CURSOR, MAX_ROWS_PER_ANSWER, firstN, fitAnswer } from './answer-fit.js';
import { DOCUMENT_KIND_AREA } from './data-areas.js';
import type { Dispatcher } from '../edge/dispatcher.js';
import { keepAnswer } from '../edge/keyed-answer.js';
import { effectiveScope, type Action, type Area } from './rights.js';
import { Guard, clubField, cursorField, dataError, exportAudit, fieldsList, guard, id, listSchema, register, strictObject } from './command-guard.js';
import { exportRows, logBlockedReads, project, refVisible } from './data-commands.js';

// ---- documents ------------------------------------------------------------------------------

export function docArea(kind: unknown): Area {
  const a = DOCUMENT_KIND_AREA[String(kind)];
  if (!a) throw new CommandError('BAD_REQUEST', 'unknown document kind');
  return a;
}

export function registerDocuments(d: Dispatcher, services: ClubServices): void {
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
    const extra: Record<string, ZodTypeAny> = action === 'read' ? { limit: z.number().int().min(1).max(MAX_LIST_LIMIT).optional(), offset: z.number().int().min(0).max(1e9).optional(), cursor: cursorField } : { stream: z.boolean().optional(), cursor: cursorField };
    register(d, name, strictObject({ ...listSchema, ...extra }), async (p, ctx) => {
      const g = await guard(services, ctx, name, p);
      const allowed = readableKinds(g, action);
      const asked = (p.filters ?? []).filter((f: Filter) => f.field === 'kind' && f.op === 'eq').map((f: Filter) => String(f.value));
      for (const k of asked) if (!allowed.includes(k)) g.deny(`${docArea(k)}:${action}`);
      if (allowed.length === 0) g.deny(`documents.other:${action}`, 'no document kind allowed');
      if (p.stream && p.cursor !== undefined) throw new CommandError('BAD_REQUEST', 'cursor pages an export without a stream');
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
        const r = listRecords(g.p.db, 'documents', { filters: [...(p.filters ?? []), { field: 'kind', op: 'in', value: allowed }], sort: p.sort, limit: action === 'read' ? (p.limit ?? 100) : MAX_ROWS_PER_ANSWER, offset: p.offset ?? 0, ...(p.cursor !== undefined ? { cursor: p.cursor as string } : {}), scope: { kind: 'all', ...(hideBlocked ? { hideBlocked } : {}) } });
        const all = project(g, 'documents', r.items, action, p.fields);
        // Cut by bytes (PROTOCOL.md 7.4): what fits one answer, and the continuation after it.
        if (action === 'export') {
          const n = fitAnswer(all, { items: [], count: LARGEST_INT, truncated: false, nextCursor: LONGEST_CURSOR });
          const { nextCursor } = r.cutAt(n);
          exportAudit(g, 'documents', { count: n, kinds: allowed, ...(p.cursor !== undefined ? { continued: true } : {}) });
          return { payload: { items: firstN(all, n), count: n, truncated: nextCursor !== null, nextCursor } };
        }
        const n = fitAnswer(all, { items: [], nextOffset: LARGEST_INT, nextCursor: LONGEST_CURSOR });
        logBlockedReads(g, 'documents', firstN(r.items, n));
        return { payload: { items: firstN(all, n), ...r.cutAt(n) } };
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
      let kept: { payload: { document: DocumentInfo } } | undefined;
      try {
        // An upload, like a download, stops when the user is disabled or loses the right.
        const area = docArea(p.kind);
        const upload = revocable(services, ctx, ctx.upload!, (grants) => effectiveScope(grants, area, 'create')?.kind === 'club');
        const replicate = services.replicateDocument;
        const info = await putDocument(services.storage, clubId, upload, { kind: p.kind, name: p.name, ...(p.mediaType !== undefined ? { mediaType: p.mediaType } : {}), ...(p.personId !== undefined ? { personId: p.personId } : {}) }, {
          // In a cluster the standbys hold the file before its row exists (docs/CLUSTER.md "Documents").
          ...(replicate ? { beforeRecord: (file: string) => replicate(clubId, file) } : {}),
          onStep: (step, recorded) => {
            // 'renamed' and 'recorded' run in the same tick around the row insert: one transaction
            // holds the row and its change-log entry.
            if (step === 'renamed') {
              db = services.storage.openClub(clubId).db;
              db.exec('BEGIN IMMEDIATE');
            } else if (step === 'recorded' && recorded) {
              const { id: docId, kind, name, mediaType, personId, size, sha256 } = recorded;
              const changes: Record<string, { old: unknown; new: unknown }> = {};
              for (const [k, v] of Object.entries({ kind, name, mediaType, personId, size, sha256 })) if (v !== null) changes[k] = { old: null, new: v };
              g.p.audit.append({ ...actor, action: 'create', entity: 'documents', recordId: docId, changes });
              // A keyed upload's answer commits with its row (daemon/edge/keyed-answer.ts).
              kept = keepAnswer(db, { payload: { document: recorded } });
              db.exec('COMMIT');
            }
          },
        });
        return kept ?? { payload: { document: info } };
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
      return g.p.db.transaction(() => {
        const u = updateRecord(g.p.db, 'documents', rid, values, { scope: { kind: 'all', hideBlocked: true }, audit: g.p.audit, actor: g.p.actor, writable: ['name', 'mediaType', 'personId'], refVisible: refVisible(g) });
        // The answer, like any read, only with read on the kind (point 6 of issue 19).
        const readable = g.has(docArea(r.kind), 'read')?.kind === 'club';
        const changed = Object.keys(values).filter((k) => !readable || k in u.changes);
        return keepAnswer(g.p.db, { payload: { record: readable ? project(g, 'documents', [u.record], 'read')[0] : { id: rid }, changed } });
      }).immediate();
    } catch (e) {
      dataError(g, e, `${docArea(r.kind)}:update`);
    }
  });

  register(d, 'documents.delete', strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'documents.delete', p);
    const r = docRow(g, p.id, 'delete');
    const db = g.p.db;
    const file = (db.prepare('SELECT file FROM documents WHERE id = ?').get(p.id) as { file: string } | undefined)?.file;
    const answer = { payload: { deleted: true, id: p.id } };
    try {
      db.transaction(() => {
        deleteRecord(db, 'documents', p.id, { scope: { kind: 'all', hideBlocked: true }, audit: g.p.audit, actor: g.p.actor });
        keepAnswer(db, answer);
      }).immediate();
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
    return answer;
  });
}
