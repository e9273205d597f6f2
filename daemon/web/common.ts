/**
 * What every web feature plug-in shares below the application itself: the logged-in user's
 * shape, the session cookie's attributes and the "no right" page. Kept apart from app.ts so the
 * plug-ins do not import the application that registers them.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Grant } from '../club/rights.js';
import { t } from './i18n.js';
import { notice, type Nav } from './layout.js';
import { SESSION_COOKIE, type WebSession } from './sessions.js';

/** What a route handler gets for the logged-in user of the request. */
export interface WebUser {
  readonly session: WebSession;
  readonly grants: readonly Grant[];
  readonly admin: boolean;
  readonly user: Record<string, unknown>;
  readonly nav: Nav;
}

/** Session cookie attributes (OWASP Session Management: `__Host-` prefix, Secure, HttpOnly, SameSite=Strict, Path=/, no Domain). */
export const COOKIE_OPTIONS = { path: '/', secure: true, httpOnly: true, sameSite: 'strict' } as const;

export function clearSessionCookie(reply: FastifyReply): void {
  void reply.clearCookie(SESSION_COOKIE, COOKIE_OPTIONS);
}

/** The page for "you may not see persons" etc.: used where a link would otherwise lead nowhere. */
export function noRightPage(req: FastifyRequest, reply: FastifyReply, u: WebUser): FastifyReply {
  return reply.server.web.send(reply, req.lang, t(req.lang, 'noRight'), notice('error', t(req.lang, 'noRight')), u.nav, 403);
}
