/**
 * daemon/club/: the club commands (logins and sessions, rights, users, data, documents, change
 * log, exports) and the checks they run. This file is the entry point: registerClubCommands
 * registers the auth.* commands here and the rest from one file each:
 *   data-commands.ts      ENTITY.get/list/export/create/update/delete for every entity of the
 *                         model (so `persons.get` is registerEntity's `${entity}.get`)
 *   document-commands.ts  documents.*
 *   user-commands.ts      users.* and rights.*
 *   log-commands.ts       log.*, federation.*, exports.*
 *   command-guard.ts      the Guard every handler starts with: session -> Principal
 *                         (auth.ts), club check, right check (Guard.need / needEntity on
 *                         rights.ts effectiveScope; entity -> area in data-areas.ts)
 *   auth.ts, rights.ts, data-areas.ts, club-bulk.ts: logins and sessions, the rights model,
 *                         which area each entity and field belongs to, bulk provisioning.
 *
 * Every handler: resolves the session to a Principal (daemon/club/auth.ts; UNAUTHENTICATED without),
 * refuses a payload that names another club, checks the right (area x action, deny by default)
 * and turns its scope into a row scope the store applies in SQL. A refusal for lack of rights,
 * a guessed id outside the caller's scope and any attempt at another club's data are reported as
 * 'rights' violations {ip, user, club, command, right} (the ban engine bans at once).
 * Payloads are validated by zod before a handler runs (strict: unknown fields are errors); data
 * fields against the entity's declaration in storage/club/model.ts.
 */
import { z } from 'zod';
import { endSessionOnClose, issueTicket, login, logout, resume, requirePrincipal, type ClubServices } from './auth.js';
import type { Dispatcher } from '../edge/dispatcher.js';
import { register, strictObject } from './command-guard.js';
import { boundedRightsAnswer, publicUser, registerRights, registerUsers } from './user-commands.js';
import { DATA_COMMAND_ENTITIES, registerEntity } from './data-commands.js';
import { registerDocuments } from './document-commands.js';
import { registerLog } from './log-commands.js';

export { DATA_COMMAND_ENTITIES, EXPORT_PAGE_ROWS } from './data-commands.js';

export type { ClubServices } from './auth.js';

// ---- entry point ----------------------------------------------------------------------------

/** Register every club command. startServer calls this once storage is open. */
export function registerClubCommands(d: Dispatcher, services: ClubServices): void {
  d.onConnectionClosed((conn, session) => endSessionOnClose(services, conn, session));
  register(d, 'auth.login', strictObject({ club: z.string().min(1).max(64), user: z.string().min(1).max(64), password: z.string().min(1).max(1024) }), async (p, ctx) => ({ payload: await login(services, ctx, p) }));
  register(d, 'auth.logout', strictObject({ revokeTicket: z.boolean().optional() }).default({}), async (p, ctx) => ({ payload: logout(services, ctx, p) }));
  register(d, 'auth.ticket', strictObject({}).default({}), async (_p, ctx) => ({ payload: issueTicket(services, ctx) }));
  register(d, 'auth.resume', strictObject({ club: z.string().min(1).max(64), ticket: z.string().min(1).max(128) }), async (p, ctx) => ({ payload: resume(services, ctx, p) }));
  register(d, 'auth.whoami', strictObject({}).default({}), async (_p, ctx) => {
    const pr = requirePrincipal(services, ctx, { allowMustChange: true });
    return boundedRightsAnswer({ club: pr.clubId, user: publicUser(pr.user), admin: pr.user.isAdmin, grants: pr.grants });
  });
  for (const e of DATA_COMMAND_ENTITIES) if (e !== 'documents') registerEntity(d, services, e);
  registerDocuments(d, services);
  registerUsers(d, services);
  registerRights(d, services);
  registerLog(d, services);
}
