/**
 * The club's persons: a list and a person's page, each exactly what `persons.list` and
 * `persons.get` answer for the user (rights, register scope, field areas, blocked persons). The
 * path carries the row id only; an id outside the user's scope answers "not found" and the
 * handler reports it as a rights violation, as over the protocol.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { CommandError } from '../edge/command-errors.js';
import { noRightPage } from './common.js';
import { html } from './html.js';
import { t } from './i18n.js';
import { notice } from './layout.js';

/** Rows per page of the persons list. */
export const PERSONS_PAGE = 50;
const pageQuery = z.object({ page: z.coerce.number().int().min(0).max(100_000).optional(), offset: z.coerce.number().int().min(0).max(1e9).optional() }).strict();
const idParam = z.object({ id: z.string().regex(/^[1-9][0-9]{0,15}$/) }).strict();

function show(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) return v.map(show).join(', ');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

export async function personsRoutes(app: FastifyInstance): Promise<void> {
  const web = app.web;

  app.get('/persons', async (req, reply) => {
    const u = await web.user(req, reply);
    if (!u) return reply;
    if (!u.nav.persons) return noRightPage(req, reply, u);
    const q = pageQuery.safeParse(req.query);
    if (!q.success) return web.fail(req, reply, new CommandError('BAD_REQUEST', 'bad page'), u.nav);
    // A page may hold fewer rows than asked (answers are cut by bytes, PROTOCOL.md 7.4): the next
    // link follows the answer's nextOffset, so no row is skipped.
    const offset = q.data.offset ?? (q.data.page ?? 0) * PERSONS_PAGE;
    let r: { items: Array<Record<string, unknown>>; nextOffset: number | null };
    try {
      r = (await web.call(req, u.session.commands, 'persons.list', { limit: PERSONS_PAGE, offset, sort: [{ field: 'lastName' }, { field: 'firstName' }] }, u.session)).payload;
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    const lang = req.lang;
    const rows = r.items.map(
      (p) => html`<tr><td><a href="/persons/${String(p.id)}">${show(p.lastName)}, ${show(p.firstName)}</a></td><td>${show(p.city)}</td></tr>`,
    );
    return web.send(
      reply,
      lang,
      t(lang, 'persons'),
      html`${rows.length === 0 ? html`<p>${t(lang, 'none')}</p>` : html`<table id="persons"><thead><tr><th scope="col">Name</th><th scope="col">${lang === 'de' ? 'Ort' : 'City'}</th></tr></thead><tbody>${rows}</tbody></table>`}
<p>${offset > 0 ? html`<a href="/persons?offset=${String(Math.max(0, offset - PERSONS_PAGE))}" rel="prev">${t(lang, 'previous')}</a> ` : ''}${r.nextOffset !== null ? html`<a href="/persons?offset=${String(r.nextOffset)}" rel="next">${t(lang, 'next')}</a>` : ''}</p>`,
      u.nav,
    );
  });

  app.get('/persons/:id', async (req, reply) => {
    const u = await web.user(req, reply);
    if (!u) return reply;
    const p = idParam.safeParse(req.params);
    if (!p.success) return web.send(reply, req.lang, t(req.lang, 'notFound'), notice('error', t(req.lang, 'notFound')), u.nav, 404);
    if (!u.nav.persons) return noRightPage(req, reply, u);
    let record: Record<string, unknown>;
    try {
      record = (await web.call(req, u.session.commands, 'persons.get', { id: Number(p.data.id) }, u.session)).payload.record;
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    const lang = req.lang;
    const rows = Object.entries(record).map(([k, v]) => html`<tr><th scope="row">${k}</th><td>${show(v)}</td></tr>`);
    return web.send(reply, lang, `${t(lang, 'person')}: ${show(record.firstName)} ${show(record.lastName)}`, html`<table id="person">${rows}</table>`, u.nav);
  });
}
