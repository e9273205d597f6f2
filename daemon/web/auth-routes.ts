/**
 * Login, first-login password change and logout. The login form is CSRF-protected by a signed
 * double-submit token bound to a pre-session cookie (no server state before login); a session
 * and its id are made only after `auth.login` succeeded (no fixation). Failures answer with
 * the protocol's one message for unknown club, unknown user and wrong password; the command
 * handler reports each as a 'login' violation for the ban engine and logs `login.failed`.
 * One login (one password check) in flight per HTTP connection, as per protocol connection
 * (daemon/club/password-work.ts): a pipelined second login on the same socket gets 503 at once.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { CommandError } from '../edge/command-errors.js';
import { COOKIE_OPTIONS, clearSessionCookie } from './common.js';
import { html } from './html.js';
import { t } from './i18n.js';
import { notice } from './layout.js';
import { PRE_COOKIE, SESSION_COOKIE } from './sessions.js';

const loginForm = z.object({ club: z.string().min(1).max(64), user: z.string().min(1).max(64), password: z.string().min(1).max(1024), _csrf: z.string().max(64) }).strict();
const passwordForm = z.object({ oldPassword: z.string().max(1024), newPassword: z.string().max(1024), repeat: z.string().max(1024), _csrf: z.string().max(64) }).strict();
const csrfOnly = z.object({ _csrf: z.string().max(64) }).strict();

/** Connections (sockets) with a login's password check in flight. */
const loginInFlight = new WeakSet<object>();

export async function authRoutes(app: FastifyInstance): Promise<void> {
  const web = app.web;

  const loginPage = (req: FastifyRequest, reply: FastifyReply, error?: string, status = 200) => {
    const pre = web.sessions.newPre();
    void reply.setCookie(PRE_COOKIE, pre, { ...COOKIE_OPTIONS, maxAge: 3600 });
    const lang = req.lang;
    return web.send(
      reply,
      lang,
      t(lang, 'login'),
      html`${error ? notice('error', error) : ''}
<form method="post" action="/login">
<input type="hidden" name="_csrf" value="${web.sessions.preToken(pre)}">
<label for="club">${t(lang, 'club')}</label><input id="club" name="club" required maxlength="64" autocomplete="organization">
<label for="user">${t(lang, 'user')}</label><input id="user" name="user" required maxlength="64" autocomplete="username">
<label for="password">${t(lang, 'password')}</label><input id="password" name="password" type="password" required maxlength="1024" autocomplete="current-password">
<button type="submit" id="login">${t(lang, 'login')}</button>
</form>`,
      undefined,
      status,
    );
  };

  app.get('/login', async (req, reply) => {
    if (req.webSession) return reply.redirect('/', 303);
    return loginPage(req, reply);
  });

  app.post('/login', async (req, reply) => {
    const f = loginForm.safeParse(req.body);
    if (!f.success || !web.sessions.checkPre(req.cookies[PRE_COOKIE], f.data._csrf)) return web.csrfRefused(req, reply);
    // A login replaces whatever session the browser had (it is logged out first).
    const old = req.webSession;
    if (old) {
      await web.call(req, old.commands, 'auth.logout', {}, old).catch(() => undefined);
      web.sessions.delete(old);
    }
    const commands = new Map<string, unknown>();
    const socket = req.raw.socket;
    if (loginInFlight.has(socket)) return loginPage(req, reply, t(req.lang, 'tryLater'), 503);
    let r: { mustChangePassword: boolean; user: string; club: string };
    loginInFlight.add(socket);
    try {
      r = (await web.call(req, commands, 'auth.login', { club: f.data.club, user: f.data.user, password: f.data.password })).payload;
    } catch (e) {
      if (e instanceof CommandError && e.code === 'UNAUTHENTICATED') return loginPage(req, reply, t(req.lang, 'loginFailed'), 401);
      if (e instanceof CommandError && (e.code === 'BUSY' || e.code === 'FORBIDDEN')) return loginPage(req, reply, t(req.lang, 'tryLater'), 503);
      throw e;
    } finally {
      loginInFlight.delete(socket);
    }
    const { id } = web.sessions.create({ club: r.club, user: r.user, ip: req.clientIp, commands, mustChangePassword: r.mustChangePassword });
    void reply.clearCookie(PRE_COOKIE, COOKIE_OPTIONS);
    void reply.setCookie(SESSION_COOKIE, id, COOKIE_OPTIONS);
    return reply.redirect(r.mustChangePassword ? '/password' : '/persons', 303);
  });

  const passwordPage = async (req: FastifyRequest, reply: FastifyReply, msg?: { kind: 'error' | 'ok'; text: string }, status = 200) => {
    const u = await web.user(req, reply, { allowMustChange: true });
    if (!u) return reply;
    const lang = req.lang;
    return web.send(
      reply,
      lang,
      t(lang, 'changePassword'),
      html`${u.session.mustChangePassword ? notice('error', t(lang, 'mustChange')) : ''}${msg ? notice(msg.kind, msg.text) : ''}
<form method="post" action="/password">
<input type="hidden" name="_csrf" value="${u.session.csrf}">
<label for="oldPassword">${t(lang, 'oldPassword')}</label><input id="oldPassword" name="oldPassword" type="password" required autocomplete="current-password">
<label for="newPassword">${t(lang, 'newPassword')}</label><input id="newPassword" name="newPassword" type="password" required minlength="12" autocomplete="new-password">
<label for="repeat">${t(lang, 'repeatPassword')}</label><input id="repeat" name="repeat" type="password" required minlength="12" autocomplete="new-password">
<button type="submit" id="change">${t(lang, 'changePassword')}</button>
</form>`,
      u.nav,
      status,
    );
  };

  app.get('/password', async (req, reply) => passwordPage(req, reply));

  app.post('/password', async (req, reply) => {
    const s = req.webSession;
    if (!s) return reply.redirect('/login', 303);
    if (!web.csrfOk(s, req.body)) return web.csrfRefused(req, reply);
    const f = passwordForm.safeParse(req.body);
    if (!f.success) return passwordPage(req, reply, { kind: 'error', text: t(req.lang, 'badRequest') }, 400);
    if (f.data.newPassword !== f.data.repeat) return passwordPage(req, reply, { kind: 'error', text: t(req.lang, 'passwordsDiffer') }, 400);
    try {
      await web.call(req, s.commands, 'users.changeOwnPassword', { oldPassword: f.data.oldPassword, newPassword: f.data.newPassword }, s);
    } catch (e) {
      if (e instanceof CommandError && (e.code === 'UNAUTHENTICATED' || e.code === 'BAD_REQUEST')) {
        // A wrong current password does not end the session (the handler reports it as a 'login' violation).
        if (!s.commands.size) {
          web.sessions.delete(s);
          clearSessionCookie(reply);
          return reply.redirect('/login', 303);
        }
        return passwordPage(req, reply, { kind: 'error', text: e.code === 'UNAUTHENTICATED' ? t(req.lang, 'wrongCurrent') : t(req.lang, 'badRequest') }, 400);
      }
      // Another password check of this session is in flight, or this address has too many waiting.
      if (e instanceof CommandError && e.code === 'BUSY') return passwordPage(req, reply, { kind: 'error', text: t(req.lang, 'tryLater') }, 503);
      throw e;
    }
    s.mustChangePassword = false;
    return passwordPage(req, reply, { kind: 'ok', text: t(req.lang, 'passwordChanged') });
  });

  app.post('/logout', async (req, reply) => {
    const s = req.webSession;
    if (!s) return reply.redirect('/login', 303);
    const f = csrfOnly.safeParse(req.body);
    if (!f.success || !web.csrfOk(s, f.data)) return web.csrfRefused(req, reply);
    await web.call(req, s.commands, 'auth.logout', {}, s);
    web.sessions.delete(s);
    clearSessionCookie(reply);
    return reply.redirect('/login', 303);
  });
}
