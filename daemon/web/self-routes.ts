/**
 * The user's own record and its GDPR Art. 15 export ("right of access", as a file). Both show
 * what the user's rights show of them: the user account (auth.whoami) and, when the user is
 * linked to a person, that person's record and the rows about them of every entity the user
 * may read (each read through the entity's command, so scope and field areas apply). Nothing is
 * asked for that the rights do not allow, so the export never trips a rights violation. The
 * export writes one change-log entry (`export`, entity persons, source web).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { MAX_LIST_LIMIT } from '../../storage/club/club-data.js';
import { MODEL } from '../../storage/club/model.js';
import { appendAudit } from '../club/auth.js';
import { DATA_COMMAND_ENTITIES } from '../club/club-commands.js';
import { ENTITY_AREA } from '../club/data-areas.js';
import { effectiveScope, type Area } from '../club/rights.js';
import type { WebUser } from './common.js';
import { html } from './html.js';
import { t } from './i18n.js';

const csrfOnly = z.object({ _csrf: z.string().max(64) }).strict();

/** Entities whose rows are about one person (a `personId` field), readable as lists. */
const PERSON_ROWS = DATA_COMMAND_ENTITIES.filter((e) => e !== 'persons' && e !== 'documents' && 'personId' in MODEL[e].fields);

export async function selfRoutes(app: FastifyInstance): Promise<void> {
  const web = app.web;

  /** The own record as far as the rights show it. */
  const collect = async (req: FastifyRequest, u: WebUser): Promise<Record<string, unknown>> => {
    const personId = typeof u.user.personId === 'number' ? u.user.personId : null;
    const out: Record<string, unknown> = { user: u.user, rights: u.grants };
    if (personId === null || !effectiveScope(u.grants, 'persons', 'read')) return out;
    out.person = (await web.call(req, u.session.commands, 'persons.get', { id: personId }, u.session).catch(() => ({ payload: { record: null } }))).payload.record;
    if (!out.person) return out;
    const related: Record<string, unknown> = {};
    for (const e of PERSON_ROWS) {
      if (!effectiveScope(u.grants, ENTITY_AREA[e] as Area, 'read')) continue;
      related[e] = (await web.call(req, u.session.commands, `${e}.list`, { filters: [{ field: 'personId', op: 'eq', value: personId }], limit: MAX_LIST_LIMIT }, u.session)).payload.items;
    }
    out.related = related;
    return out;
  };

  app.get('/me', async (req, reply) => {
    const u = await web.user(req, reply);
    if (!u) return reply;
    let data: Record<string, unknown>;
    try {
      data = await collect(req, u);
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    const lang = req.lang;
    const rows = (o: Record<string, unknown>) => Object.entries(o).map(([k, v]) => html`<tr><th scope="row">${k}</th><td>${v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v)}</td></tr>`);
    return web.send(
      reply,
      lang,
      t(lang, 'myRecord'),
      html`<h2>${t(lang, 'user')}</h2><table id="me-user">${rows(u.user)}</table>
${data.person ? html`<h2>${t(lang, 'person')}</h2><table id="me-person">${rows(data.person as Record<string, unknown>)}</table>` : html`<p>${t(lang, 'noPerson')}</p>`}
<h2>${t(lang, 'export')}</h2><p>${t(lang, 'exportHint')}</p>
<form method="post" action="/me/export"><input type="hidden" name="_csrf" value="${u.session.csrf}"><button type="submit" id="export">${t(lang, 'export')}</button></form>`,
      u.nav,
    );
  });

  app.post('/me/export', async (req, reply: FastifyReply) => {
    const s = req.webSession;
    if (!s) return reply.redirect('/login', 303);
    const f = csrfOnly.safeParse(req.body);
    if (!f.success || !web.csrfOk(s, f.data)) return web.csrfRefused(req, reply);
    const u = await web.user(req, reply);
    if (!u) return reply;
    let data: Record<string, unknown>;
    try {
      data = await collect(req, u);
      const store = web.deps.services.storage.openClub(s.club);
      appendAudit(web.deps.services, store, {
        user: String(u.user.username),
        ip: req.clientIp,
        session: null,
        action: 'export',
        entity: 'persons',
        recordId: typeof u.user.personId === 'number' ? u.user.personId : null,
        changes: { kind: 'gdpr-art15', source: 'web', sections: Object.keys(data) },
      });
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    const body = JSON.stringify({ format: 'commusic-gdpr-art15-v1', club: s.club, exportedAt: new Date().toISOString(), ...data }, null, 2);
    return reply
      .type('application/json; charset=utf-8')
      .header('Content-Disposition', 'attachment; filename="commusic-auskunft.json"')
      .header('X-Content-Type-Options', 'nosniff')
      .send(body);
  });
}
