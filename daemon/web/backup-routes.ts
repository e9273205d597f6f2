/**
 * For club administrators: the club's backup passphrase and the addresses the nightly backup is
 * mailed to (`backup.status`, `backup.setPassphrase`; the handler checks the administrator right
 * and the current passphrase, and writes one change-log entry). The passphrase is never shown
 * or kept: the server keeps only the public key derived from it.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { CommandError } from '../edge/command-errors.js';
import { effectiveScope } from '../club/rights.js';
import { noRightPage, type WebUser } from './common.js';
import { html, type SafeHtml } from './html.js';
import { t } from './i18n.js';
import { notice } from './layout.js';

const backupForm = z
  .object({
    passphrase: z.string().max(1024),
    repeat: z.string().max(1024),
    currentPassphrase: z.string().max(1024).optional(),
    emails: z.string().max(20 * 260),
    _csrf: z.string().max(64),
  })
  .strict();

export async function backupRoutes(app: FastifyInstance): Promise<void> {
  const web = app.web;

  const render = async (req: FastifyRequest, reply: FastifyReply, u: WebUser, msg?: SafeHtml, status = 200) => {
    let st: { passphraseSet: boolean; passphraseSetAt: string | null; emails: string[]; nightlyMail: boolean };
    try {
      st = (await web.call(req, u.session.commands, 'backup.status', {}, u.session)).payload;
    } catch (e) {
      return web.fail(req, reply, e, u.nav);
    }
    const lang = req.lang;
    return web.send(
      reply,
      lang,
      t(lang, 'backupPassphrase'),
      html`${msg ?? ''}<p id="backup-state">${st.passphraseSet ? `${t(lang, 'backupSetAt')} ${st.passphraseSetAt ?? ''}` : t(lang, 'backupNotSet')}</p>
<form method="post" action="/admin/backup">
<input type="hidden" name="_csrf" value="${u.session.csrf}">
${st.passphraseSet ? html`<label for="currentPassphrase">${t(lang, 'backupCurrent')}</label><input id="currentPassphrase" name="currentPassphrase" type="password" required autocomplete="off">` : ''}
<label for="passphrase">${t(lang, 'backupNew')}</label><input id="passphrase" name="passphrase" type="password" required minlength="12" autocomplete="new-password">
<label for="repeat">${t(lang, 'repeatPassword')}</label><input id="repeat" name="repeat" type="password" required minlength="12" autocomplete="new-password">
<label for="emails">${t(lang, 'backupEmails')}</label><input id="emails" name="emails" value="${st.emails.join(', ')}" size="60">
<button type="submit" id="set-backup">${t(lang, 'backupSave')}</button>
</form>`,
      u.nav,
      status,
    );
  };

  const allowed = (u: WebUser) => u.admin && effectiveScope(u.grants, 'backups', 'read')?.kind === 'club';

  app.get('/admin/backup', async (req, reply) => {
    const u = await web.user(req, reply);
    if (!u) return reply;
    if (!allowed(u)) return noRightPage(req, reply, u);
    return render(req, reply, u);
  });

  app.post('/admin/backup', async (req, reply) => {
    const s = req.webSession;
    if (!s) return reply.redirect('/login', 303);
    if (!web.csrfOk(s, req.body)) return web.csrfRefused(req, reply);
    const u = await web.user(req, reply);
    if (!u) return reply;
    if (!allowed(u)) return noRightPage(req, reply, u);
    const f = backupForm.safeParse(req.body);
    if (!f.success) return web.fail(req, reply, new CommandError('BAD_REQUEST', 'bad form'), u.nav);
    const lang = req.lang;
    if (f.data.passphrase !== f.data.repeat) return render(req, reply, u, notice('error', t(lang, 'passwordsDiffer')), 400);
    const emails = f.data.emails.split(/[,\s]+/).map((x) => x.trim()).filter(Boolean);
    try {
      await web.call(req, s.commands, 'backup.setPassphrase', { passphrase: f.data.passphrase, emails, ...(f.data.currentPassphrase ? { currentPassphrase: f.data.currentPassphrase } : {}) }, s);
    } catch (e) {
      if (e instanceof CommandError && (e.code === 'BAD_REQUEST' || e.code === 'FORBIDDEN')) return render(req, reply, u, notice('error', e.code === 'FORBIDDEN' ? t(lang, 'backupCurrentWrong') : t(lang, 'badRequest')), 400);
      return web.fail(req, reply, e, u.nav);
    }
    return render(req, reply, u, notice('ok', t(lang, 'backupSaved')));
  });
}
