/**
 * For user managers (users:read club-wide): the club's users with their role, register scope
 * and state, and setting a user's rights from a role template and a register list
 * for administrators (`rights.set`, which checks users:update and that no one grants more than they hold, and
 * writes one change-log entry).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { CommandError } from '../edge/command-errors.js';
import { ROLES, type Grant } from '../club/rights.js';
import { noRightPage, type WebUser } from './common.js';
import { html } from './html.js';
import { t } from './i18n.js';
import { notice } from './layout.js';

const rightsForm = z
  .object({
    userId: z.string().regex(/^[1-9][0-9]{0,15}$/),
    role: z.enum(ROLES),
    registers: z.string().max(400).regex(/^[0-9,\s]*$/),
    _csrf: z.string().max(64),
  })
  .strict();

function registersOf(grants: readonly Grant[]): string {
  const set = new Set<number>();
  for (const g of grants) if (g.scope.kind === 'registers') for (const r of g.scope.registers) set.add(r);
  return [...set].sort((a, b) => a - b).join(', ');
}

export async function adminRoutes(app: FastifyInstance): Promise<void> {
  const web = app.web;

  const render = async (req: FastifyRequest, reply: FastifyReply, u: WebUser, msg?: ReturnType<typeof notice>, status = 200) => {
    let users: Array<Record<string, unknown>>;
    try {
      // Every page (answers are cut by bytes, PROTOCOL.md 7.4).
      users = [];
      for (let cursor: string | null | undefined; ; ) {
        const page = (await web.call(req, u.session.commands, 'users.list', cursor ? { cursor } : {}, u.session)).payload as { items: Array<Record<string, unknown>>; nextCursor: string | null };
        users.push(...page.items);
        cursor = page.nextCursor;
        if (!cursor) break;
      }
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    const lang = req.lang;
    const rows = [];
    for (const x of users) {
      const rights = (await web.call(req, u.session.commands, 'rights.get', { userId: x.id }, u.session)).payload as { admin: boolean; role: string | null; grants: Grant[] };
      rows.push(html`<tr><td>${String(x.username)}</td><td>${String(x.displayName ?? '')}</td><td>${rights.admin ? t(lang, 'admin') : String(rights.role ?? '')}</td><td>${registersOf(rights.grants)}</td><td>${x.disabled ? t(lang, 'disabled') : ''}</td>
<td>${rights.admin || !u.admin ? '' : html`<form method="post" action="/admin/rights"><input type="hidden" name="_csrf" value="${u.session.csrf}"><input type="hidden" name="userId" value="${String(x.id)}">
<label for="role-${String(x.id)}">${t(lang, 'role')}</label><select id="role-${String(x.id)}" name="role">${ROLES.filter((r) => r !== 'administrator').map((r) => html`<option value="${r}"${r === rights.role ? html` selected` : ''}>${r}</option>`)}</select>
<label for="reg-${String(x.id)}">${t(lang, 'registers')}</label><input id="reg-${String(x.id)}" name="registers" value="${registersOf(rights.grants)}">
<button type="submit">${t(lang, 'setRights')}</button></form>`}</td></tr>`);
    }
    return web.send(
      reply,
      lang,
      t(lang, 'users'),
      html`${msg ?? ''}<table id="users"><thead><tr><th scope="col">${t(lang, 'user')}</th><th scope="col">Name</th><th scope="col">${t(lang, 'role')}</th><th scope="col">Register</th><th scope="col">Status</th><th scope="col">${t(lang, 'setRights')}</th></tr></thead><tbody>${rows}</tbody></table>`,
      u.nav,
      status,
    );
  };

  app.get('/admin/users', async (req, reply) => {
    const u = await web.user(req, reply);
    if (!u) return reply;
    if (!u.nav.users) return noRightPage(req, reply, u);
    return render(req, reply, u);
  });

  app.post('/admin/rights', async (req, reply) => {
    const s = req.webSession;
    if (!s) return reply.redirect('/login', 303);
    if (!web.csrfOk(s, req.body)) return web.csrfRefused(req, reply);
    const u = await web.user(req, reply);
    if (!u) return reply;
    // Only administrators get the form: they may grant every right (rights.set checks it again).
    if (!u.admin) return noRightPage(req, reply, u);
    const f = rightsForm.safeParse(req.body);
    if (!f.success) return web.fail(req, reply, new CommandError('BAD_REQUEST', 'bad form'), u.nav);
    const registers = f.data.registers.split(',').map((x) => x.trim()).filter(Boolean).map(Number);
    try {
      await web.call(req, s.commands, 'rights.set', { userId: Number(f.data.userId), role: f.data.role, ...(registers.length ? { registers } : {}) }, s);
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    return render(req, reply, u, notice('ok', t(req.lang, 'rightsSet')));
  });
}
