/**
 * The club's change log: newest first, filtered by time, user, action and entity, paginated by
 * sequence number, with the chain's verification state (storage/club/audit-log.ts verifyAuditLog,
 * signed heads checked against the server identity key). Entries come from `log.query`, so
 * they are projected by the reader's rights as over the protocol. Filters and the page cursor
 * travel in POST bodies (they can name persons), never in the URL.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { identityVerifier } from '../ops/log-ops.js';
import { verifyAuditLog, type VerifyResult } from '../../storage/club/audit-log.js';
import { CommandError } from '../edge/command-errors.js';
import { noRightPage, type WebUser } from './common.js';
import { html } from './html.js';
import { t } from './i18n.js';
import { notice } from './layout.js';

/** Entries per page of the change log. */
export const LOG_PAGE = 50;
const localTime = z
  .string()
  .max(40)
  .regex(/^(\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?)?$/, 'expected YYYY-MM-DDTHH:MM');
const filterForm = z
  .object({
    from: localTime.optional(),
    to: localTime.optional(),
    user: z.string().max(64).optional(),
    action: z.string().max(40).optional(),
    entity: z.string().max(40).optional(),
    before: z.string().regex(/^\d{0,15}$/).optional(),
    _csrf: z.string().max(64),
  })
  .strict();
type Filters = Omit<z.infer<typeof filterForm>, '_csrf' | 'before'>;

/** A datetime-local value is read as UTC (the page says so). */
function utc(v: string | undefined): string | undefined {
  if (!v) return undefined;
  return `${v.length === 16 ? `${v}:00` : v}Z`;
}

export async function logRoutes(app: FastifyInstance): Promise<void> {
  const web = app.web;
  // Read per page: after an identity key rollover the keys of every phase verify (log-ops.ts).
  const verifierNow = () => (web.deps.identity ? identityVerifier(web.deps.services.storage.dataDir) : undefined);

  const render = async (req: FastifyRequest, reply: FastifyReply, u: WebUser, f: Filters, before: number | undefined) => {
    const payload = {
      descending: true,
      limit: LOG_PAGE,
      ...(utc(f.from) ? { from: utc(f.from) } : {}),
      ...(utc(f.to) ? { to: utc(f.to) } : {}),
      ...(f.user ? { user: f.user } : {}),
      ...(f.action ? { action: f.action } : {}),
      ...(f.entity ? { entity: f.entity } : {}),
      ...(before !== undefined ? { afterSeq: before } : {}),
    };
    let r: { entries: Array<Record<string, unknown>>; nextAfterSeq: number | null };
    try {
      r = (await web.call(req, u.session.commands, 'log.query', payload, u.session)).payload;
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    // The reader may read the whole log (log.query allowed it): verify the chain.
    let v: VerifyResult;
    try {
      v = verifyAuditLog(web.deps.services.storage.openClub(u.session.club).db, u.session.club, verifierNow());
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    const lang = req.lang;
    const state = v.ok
      ? notice('ok', `${t(lang, 'chainOk')} (${v.entries} ${t(lang, 'entries')}, ${t(lang, 'signedUpTo')} ${v.signedUpTo})`)
      : notice('error', `${t(lang, 'chainBad')} ${v.firstBad?.seq ?? '?'}: ${v.firstBad?.reason ?? ''}`);
    const csrf = u.session.csrf;
    const hiddenFilters = html`<input type="hidden" name="_csrf" value="${csrf}">${(['from', 'to', 'user', 'action', 'entity'] as const).map((k) => html`<input type="hidden" name="${k}" value="${f[k] ?? ''}">`)}`;
    const rows = r.entries.map(
      (e) => html`<tr><td>${String(e.seq)}</td><td>${String(e.time)}</td><td>${String(e.user ?? '')}</td><td>${String(e.action)}</td><td>${String(e.entity ?? '')}${e.recordId != null ? ` ${String(e.recordId)}` : ''}</td><td>${e.hidden ? t(lang, 'hidden') : html`<pre>${e.changes == null ? '' : JSON.stringify(e.changes, null, 1)}</pre>`}</td></tr>`,
    );
    return web.send(
      reply,
      lang,
      t(lang, 'changeLog'),
      html`<div id="chain">${state}</div>
<form method="post" action="/log" class="filters" aria-label="${t(lang, 'filter')}">
<input type="hidden" name="_csrf" value="${csrf}">
<div><label for="from">${t(lang, 'from')} (UTC)</label><input id="from" name="from" type="datetime-local" value="${f.from ?? ''}"></div>
<div><label for="to">${t(lang, 'to')} (UTC)</label><input id="to" name="to" type="datetime-local" value="${f.to ?? ''}"></div>
<div><label for="user">${t(lang, 'user')}</label><input id="user" name="user" maxlength="64" value="${f.user ?? ''}"></div>
<div><label for="action">${t(lang, 'action')}</label><input id="action" name="action" maxlength="40" value="${f.action ?? ''}"></div>
<div><label for="entity">${t(lang, 'entity')}</label><input id="entity" name="entity" maxlength="40" value="${f.entity ?? ''}"></div>
<div><button type="submit" id="filter">${t(lang, 'filter')}</button></div>
</form>
${rows.length === 0 ? html`<p>${t(lang, 'none')}</p>` : html`<table id="log"><thead><tr><th scope="col">#</th><th scope="col">${t(lang, 'time')}</th><th scope="col">${t(lang, 'user')}</th><th scope="col">${t(lang, 'action')}</th><th scope="col">${t(lang, 'entity')}</th><th scope="col">${t(lang, 'details')}</th></tr></thead><tbody>${rows}</tbody></table>`}
${r.nextAfterSeq !== null ? html`<form method="post" action="/log">${hiddenFilters}<input type="hidden" name="before" value="${String(r.nextAfterSeq)}"><button type="submit" id="next">${t(lang, 'next')}</button></form>` : ''}`,
      u.nav,
    );
  };

  app.get('/log', async (req, reply) => {
    const u = await web.user(req, reply);
    if (!u) return reply;
    if (!u.nav.changeLog) return noRightPage(req, reply, u);
    return render(req, reply, u, {}, undefined);
  });

  app.post('/log', async (req, reply) => {
    const s = req.webSession;
    if (!s) return reply.redirect('/login', 303);
    if (!web.csrfOk(s, req.body)) return web.csrfRefused(req, reply);
    const u = await web.user(req, reply);
    if (!u) return reply;
    if (!u.nav.changeLog) return noRightPage(req, reply, u);
    const f = filterForm.safeParse(req.body);
    if (!f.success) return web.fail(req, reply, new CommandError('BAD_REQUEST', 'bad filter'), u.nav);
    const { _csrf, before, ...filters } = f.data;
    return render(req, reply, u, filters, before ? Number(before) : undefined);
  });
}
