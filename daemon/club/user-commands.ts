/**
 * The users commands (list, get, export, create, update, delete, password resets, the own password)
 * and the rights commands (roles, get, set): who may log in to the club and with which grants.
 */
import { z } from 'zod';
import { generateOneTimePassword, hashPassword, verifyPassword } from '../../crypto/password.js';
import { parseLegacySha512, wrapLegacySha512 } from '../../crypto/legacy-password.js';
import { isHashQueueError, withPasswordWork } from './password-work.js';
import { MAX_LIST_LIMIT, recordExists } from '../../storage/club/club-data.js';
import { countActiveAdmins, deleteUser, getUserById, insertUser, listUsers, setDisabled, setGrants, setPasswordHash, updateUserProfile, userView, type UserRecord } from '../../storage/club/users.js';
import { appendAudit, refreshCredVersion, grantsOf, type ClubServices } from './auth.js';
import { CommandError } from '../edge/command-errors.js';
import type { Dispatcher } from '../edge/dispatcher.js';
import { keepAnswer } from '../edge/keyed-answer.js';
import { ACTIONS, AREAS, ROLES, grantSchema, roleTemplate, type Grant } from './rights.js';
import { Guard, clubField, cursorField, dataError, exportAudit, guard, id, passwordSchema, register, strictObject, usernameSchema } from './command-guard.js';
import { LARGEST_INT, LONGEST_CURSOR, firstN, fitAnswer, textCursor, textCursorKey } from './answer-fit.js';
import { MAX_ANSWER_PAYLOAD, cborSize } from '../../protocol/answer-size.js';

// ---- users and rights -----------------------------------------------------------------------

const roleSchema = z.enum(ROLES);
const registersSchema = z.array(id).max(200).optional();

interface RightsInput {
  role?: (typeof ROLES)[number] | undefined;
  registers?: number[] | undefined;
  grants?: Grant[] | undefined;
  admin?: boolean | undefined;
}

function resolveGrants(i: RightsInput): { role: string | null; grants: Grant[] } {
  const r = i.grants !== undefined ? { role: i.role ?? null, grants: i.grants } : i.role !== undefined ? { role: i.role, grants: roleTemplate(i.role, i.registers ?? []) } : { role: null, grants: [] };
  checkGrantsSize(r.grants);
  return r;
}

/**
 * The byte bound of one user's grants (their CBOR size): every answer that carries them
 * (rights.get, rights.set, auth.whoami) then fits one message with room for the rest of the
 * answer, and so does the change-log entry of rights.set (old and new grants) in a log.query
 * answer (tests/rights-bounds.test.ts). 500 grants of 200 registers each would be about 1 MB;
 * the largest role template, over 200 registers, takes under 8 KiB even with 9-byte ids.
 */
export const MAX_GRANTS_BYTES = 16 * 1024;

function checkGrantsSize(grants: readonly Grant[]): void {
  const n = cborSize(grants);
  if (n > MAX_GRANTS_BYTES) throw new CommandError('BAD_REQUEST', `these grants take ${n} bytes, more than the ${MAX_GRANTS_BYTES} one user may hold; give fewer grants or registers`);
}

/**
 * An answer that carries a user's grants, checked against the answer bound: grants stored before
 * MAX_GRANTS_BYTES (the store allows 200,000 characters) could exceed one message. Such an answer
 * is TOO_LARGE with a clear message instead of a message the channel refuses to send.
 */
export function boundedRightsAnswer<T extends Record<string, unknown>>(payload: T): { payload: T } {
  if (cborSize(payload) > MAX_ANSWER_PAYLOAD) throw new CommandError('TOO_LARGE', 'this user holds more grants than one answer can carry; reduce them with rights.set');
  return { payload };
}

/** Nobody hands out rights they do not hold club-wide themselves; only administrators make administrators. */
function checkGrantable(g: Guard, grants: readonly Grant[], admin: boolean | undefined): void {
  if (g.p.user.isAdmin) return;
  if (admin) g.deny('users:admin', 'only administrators appoint administrators');
  for (const gr of grants) for (const a of gr.actions) {
    if (g.has(gr.area, a)?.kind !== 'club') g.deny(`${gr.area}:${a}`, 'granting a right one does not hold');
  }
}

/**
 * The account an account action (reset password, disable, enable, re-link, delete, rights)
 * aims at. Acting on another account is allowed only where the caller could grant everything
 * that account holds (point 2 of issue 19, generalising the rule of rights.set): otherwise a
 * user manager resets a stronger account's password and logs in as it. Only administrators act
 * on administrators.
 */
function targetUser(g: Guard, userId: number, mayBeSelf: boolean): UserRecord {
  const u = getUserById(g.p.db, userId);
  if (!u) throw new CommandError('NOT_FOUND', `user ${userId} does not exist`);
  if (u.id === g.p.user.id) {
    if (!mayBeSelf) throw new CommandError('CONFLICT', 'use users.changeOwnPassword for yourself; your own rights and status are changed by another administrator');
    return u;
  }
  if (u.isAdmin && !g.p.user.isAdmin) g.deny('users:admin', 'only administrators change administrators');
  if (!g.p.user.isAdmin) {
    for (const gr of grantsOf(u)) for (const a of gr.actions) {
      if (g.has(gr.area, a)?.kind !== 'club') g.deny(`${gr.area}:${a}`, 'acting on an account that holds a right one could not grant');
    }
  }
  return u;
}

export function publicUser(u: UserRecord): Record<string, unknown> {
  return { ...userView(u), role: u.role };
}

/** A user in the answer to a write: in full only with users:read club-wide (point 6 of issue 19). */
function userAnswer(g: Guard, u: UserRecord): Record<string, unknown> {
  return g.has('users', 'read')?.kind === 'club' ? publicUser(u) : { id: u.id };
}

/**
 * The club's users in user-name order (SQLite's binary order, byte for byte), after a cursor's
 * user name, at most `limit` of them; `more` when the limit left some out.
 */
function usersAfter(g: Guard, cursor: string | undefined, limit: number | undefined): { users: UserRecord[]; more: boolean } {
  let users = listUsers(g.p.db);
  if (cursor !== undefined) {
    const key = textCursorKey(cursor);
    users = users.filter((u) => Buffer.compare(Buffer.from(u.username, 'utf8'), key) > 0);
  }
  const more = limit !== undefined && users.length > limit;
  return { users: more ? users.slice(0, limit) : users, more };
}

export function registerUsers(d: Dispatcher, services: ClubServices): void {
  const cost = services.passwordLog2N;
  register(d, 'users.list', strictObject({ limit: z.number().int().min(1).max(MAX_LIST_LIMIT).optional(), cursor: cursorField, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.list', p);
    g.needClub('users', 'read');
    const { users, more } = usersAfter(g, p.cursor, p.limit);
    const all = users.map(publicUser);
    const n = fitAnswer(all, { items: [], nextCursor: LONGEST_CURSOR });
    return { payload: { items: firstN(all, n), nextCursor: n < all.length || more ? textCursor(users[n - 1]!.username) : null } };
  });
  register(d, 'users.get', strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.get', p);
    g.needClub('users', 'read');
    const u = getUserById(g.p.db, p.id);
    if (!u) throw new CommandError('NOT_FOUND', `user ${p.id} does not exist`);
    return { payload: { user: publicUser(u) } };
  });
  register(d, 'users.export', strictObject({ cursor: cursorField, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.export', p);
    g.needClub('users', 'export');
    const { users } = usersAfter(g, p.cursor, undefined);
    const all = users.map((u) => ({ ...publicUser(u), grants: grantsOf(u) }));
    const n = fitAnswer(all, { items: [], count: LARGEST_INT, nextCursor: LONGEST_CURSOR });
    const nextCursor = n < all.length ? textCursor(users[n - 1]!.username) : null;
    exportAudit(g, 'users', { count: n, ...(p.cursor !== undefined ? { continued: true } : {}) });
    return { payload: { items: firstN(all, n), count: n, nextCursor } };
  });
  register(
    d,
    'users.create',
    strictObject({ username: usernameSchema, password: passwordSchema.optional(), displayName: z.string().max(200).optional(), personId: id.optional(), role: roleSchema.optional(), registers: registersSchema, grants: z.array(grantSchema).max(500).optional(), admin: z.boolean().optional(), club: clubField }),
    async (p, ctx) => {
      const g = await guard(services, ctx, 'users.create', p);
      g.needClub('users', 'create');
      const r = resolveGrants(p);
      checkGrantable(g, r.grants, p.admin);
      if (p.personId !== undefined && !recordExists(g.p.db, 'persons', p.personId)) throw new CommandError('NOT_FOUND', `personId: persons ${p.personId} does not exist`);
      const otp = p.password === undefined ? generateOneTimePassword() : undefined;
      const hash = await withPasswordWork(ctx, (opts) => hashPassword(p.password ?? otp!, cost, opts));
      const g2 = await guard(services, ctx, 'users.create', p);
      const db = g2.p.db;
      try {
        return db.transaction(() => {
          const newId = insertUser(db, { username: p.username, displayName: p.displayName ?? null, personId: p.personId ?? null, passwordHash: hash, mustChangePassword: otp !== undefined, isAdmin: p.admin ?? false, role: r.role, grants: r.grants });
          g2.p.audit.append({ ...g2.p.actor, action: 'create', entity: 'users', recordId: newId, changes: { username: { old: null, new: p.username }, displayName: { old: null, new: p.displayName ?? null }, personId: { old: null, new: p.personId ?? null }, role: { old: null, new: r.role }, admin: { old: null, new: p.admin ?? false }, grants: { old: null, new: r.grants } } });
          return keepAnswer(db, { payload: { user: userAnswer(g2, getUserById(db, newId)!), ...(otp ? { oneTimePassword: otp } : {}) } });
        }).immediate();
      } catch (e) {
        dataError(g2, e, 'users:create');
      }
    },
  );
  register(
    d,
    'users.import',
    strictObject({
      users: z.array(z.object({ username: usernameSchema, legacyHash: z.string().max(300), displayName: z.string().max(200).optional(), personId: id.optional(), role: roleSchema.optional(), registers: registersSchema }).strict()).min(1).max(1000),
      club: clubField,
    }),
    async (p, ctx) => {
      const g = await guard(services, ctx, 'users.import', p);
      g.needClub('users', 'create');
      const prepared = p.users.map((u: { username: string; legacyHash: string; displayName?: string; personId?: number; role?: (typeof ROLES)[number]; registers?: number[] }) => {
        const h = parseLegacySha512(u.legacyHash);
        if (!h) throw new CommandError('BAD_REQUEST', `user ${u.username}: legacy hash is not sha512$<salt hex>$<128 hex digits>`);
        const r = resolveGrants({ role: u.role, registers: u.registers });
        checkGrantable(g, r.grants, false);
        return { ...u, hash: h, ...r };
      });
      // Nothing fast is ever written: each SHA-512 value is wrapped in scrypt before it is stored.
      const wrapped = await Promise.all(prepared.map((u: { hash: string }) => wrapLegacySha512(u.hash, services.passwordLog2N)));
      prepared.forEach((u: { hash: string }, i: number) => (u.hash = wrapped[i]!));
      const g2 = await guard(services, ctx, 'users.import', p);
      g2.needClub('users', 'create');
      const db = g2.p.db;
      try {
        return db.transaction(() => {
          const ids: number[] = [];
          for (const u of prepared) {
            const nid = insertUser(db, { username: u.username, displayName: u.displayName ?? null, personId: u.personId ?? null, passwordHash: u.hash, mustChangePassword: false, role: u.role, grants: u.grants });
            ids.push(nid);
            g2.p.audit.append({ ...g2.p.actor, action: 'create', entity: 'users', recordId: nid, changes: { username: { old: null, new: u.username }, imported: { old: null, new: 'legacy sha512 hash, stored wrapped in scrypt' }, role: { old: null, new: u.role } } });
          }
          return keepAnswer(db, { payload: { imported: ids.length, ids } });
        }).immediate();
      } catch (e) {
        dataError(g2, e, 'users:create');
      }
    },
  );
  register(d, 'users.update', strictObject({ id, displayName: z.string().max(200).nullable().optional(), personId: id.nullable().optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.update', p);
    g.needClub('users', 'update');
    const u = targetUser(g, p.id, true);
    // The person linked to a user is what its own-record grants reach: re-linking oneself would
    // turn "own bank data" into anyone's (point 1 of issue 19). Administrators reach everything
    // anyway.
    if (u.id === g.p.user.id && p.personId !== undefined && p.personId !== u.personId && !g.p.user.isAdmin) g.deny('users:update', 'changing the person linked to one\'s own user');
    if (p.personId !== undefined && p.personId !== null && !recordExists(g.p.db, 'persons', p.personId)) throw new CommandError('NOT_FOUND', `personId: persons ${p.personId} does not exist`);
    const changes: Record<string, { old: unknown; new: unknown }> = {};
    if (p.displayName !== undefined && p.displayName !== u.displayName) changes.displayName = { old: u.displayName, new: p.displayName };
    if (p.personId !== undefined && p.personId !== u.personId) changes.personId = { old: u.personId, new: p.personId };
    // Without users:read, whether a given value changed would tell the old one: name them all.
    const given = (['displayName', 'personId'] as const).filter((k) => p[k] !== undefined);
    const answer = () => ({ payload: { user: userAnswer(g, getUserById(g.p.db, u.id)!), changed: g.has('users', 'read')?.kind === 'club' ? Object.keys(changes) : given } });
    if (!Object.keys(changes).length) return answer();
    return g.p.db.transaction(() => {
      updateUserProfile(g.p.db, u.id, { ...(changes.displayName ? { displayName: p.displayName } : {}), ...(changes.personId ? { personId: p.personId } : {}) });
      g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: u.id, changes });
      return keepAnswer(g.p.db, answer());
    }).immediate();
  });
  for (const [name, disabled] of [['users.disable', true], ['users.enable', false]] as const) {
    register(d, name, strictObject({ id, club: clubField }), async (p, ctx) => {
      const g = await guard(services, ctx, name, p);
      g.needClub('users', 'update');
      const u = targetUser(g, p.id, false);
      const answer = () => ({ payload: { user: userAnswer(g, getUserById(g.p.db, u.id)!) } });
      if (u.disabled === disabled) return answer();
      if (disabled && u.isAdmin && countActiveAdmins(g.p.db) <= 1) throw new CommandError('CONFLICT', 'the last administrator cannot be disabled');
      return g.p.db.transaction(() => {
        setDisabled(g.p.db, u.id, disabled);
        g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: u.id, changes: { disabled: { old: u.disabled, new: disabled } } });
        return keepAnswer(g.p.db, answer());
      }).immediate();
    });
  }
  register(d, 'users.delete', strictObject({ id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'users.delete', p);
    g.needClub('users', 'delete');
    const u = targetUser(g, p.id, false);
    if (u.isAdmin && countActiveAdmins(g.p.db) <= 1) throw new CommandError('CONFLICT', 'the last administrator cannot be deleted');
    return g.p.db.transaction(() => {
      deleteUser(g.p.db, u.id);
      g.p.audit.append({ ...g.p.actor, action: 'delete', entity: 'users', recordId: u.id, changes: { username: { old: u.username, new: null }, role: { old: u.role, new: null } } });
      return keepAnswer(g.p.db, { payload: { deleted: true, id: u.id } });
    }).immediate();
  });
  register(d, 'users.resetPassword', strictObject({ id, password: passwordSchema.optional(), club: clubField }), async (p, ctx) => {
    let g = await guard(services, ctx, 'users.resetPassword', p);
    g.needClub('users', 'update');
    targetUser(g, p.id, false);
    const otp = p.password === undefined ? generateOneTimePassword() : undefined;
    const hash = await withPasswordWork(ctx, (opts) => hashPassword(p.password ?? otp!, cost, opts));
    g = await guard(services, ctx, 'users.resetPassword', p);
    const u = targetUser(g, p.id, false);
    return g.p.db.transaction(() => {
      setPasswordHash(g.p.db, u.id, hash, true, true);
      g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: u.id, changes: { passwordHash: { old: '[redacted]', new: '[redacted]' }, mustChangePassword: { old: u.mustChangePassword, new: true } } });
      return keepAnswer(g.p.db, { payload: { id: u.id, mustChangePassword: true, ...(otp ? { oneTimePassword: otp } : {}) } });
    }).immediate();
  });
  register(d, 'users.changeOwnPassword', strictObject({ oldPassword: z.string().max(1024), newPassword: passwordSchema, club: clubField }), async (p, ctx) => {
    let g = await guard(services, ctx, 'users.changeOwnPassword', p, { allowMustChange: true });
    // One password check per connection: the old password's verification and the new hash.
    const hash = await withPasswordWork(ctx, async (opts) => {
      let ok = false;
      try {
        ok = await verifyPassword(p.oldPassword, g.p.user.passwordHash, opts);
      } catch (e) {
        if (isHashQueueError(e)) throw e;
        ok = false;
      }
      if (!ok) {
        services.violations.report({ ip: ctx.conn.ip, kind: 'login', detail: 'wrong current password', time: Date.now(), club: g.p.clubId, user: g.p.user.username, command: 'users.changeOwnPassword' });
        appendAudit(services, g.p.store, { ...g.p.actor, action: 'login.failed', entity: 'users', recordId: g.p.user.id, changes: { reason: 'wrong current password at password change' } });
        throw new CommandError('UNAUTHENTICATED', 'the current password is wrong');
      }
      if (p.oldPassword === p.newPassword) throw new CommandError('BAD_REQUEST', 'the new password must differ from the old one');
      return hashPassword(p.newPassword, cost, opts);
    });
    g = await guard(services, ctx, 'users.changeOwnPassword', p, { allowMustChange: true });
    const uid = g.p.user.id;
    const result = g.p.db.transaction(() => {
      setPasswordHash(g.p.db, uid, hash, false, true);
      g.p.audit.append({ ...g.p.actor, action: 'update', entity: 'users', recordId: uid, changes: { passwordHash: { old: '[redacted]', new: '[redacted]' }, mustChangePassword: { old: g.p.user.mustChangePassword, new: false } } });
      return keepAnswer(g.p.db, { payload: { changed: true } });
    }).immediate();
    refreshCredVersion(ctx, getUserById(g.p.db, uid)!.credVersion);
    return result;
  });
}

/** rights.roles, rights.get, rights.set: the role templates and a user's grants (deny by default). */
export function registerRights(d: Dispatcher, services: ClubServices): void {
  register(d, 'rights.roles', strictObject({ club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'rights.roles', p);
    g.needClub('users', 'read');
    return { payload: { areas: [...AREAS], actions: [...ACTIONS], roles: ROLES.map((r) => ({ role: r, grants: roleTemplate(r, [1]) })) } };
  });
  register(d, 'rights.get', strictObject({ userId: id, club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'rights.get', p);
    if (p.userId !== g.p.user.id) g.needClub('users', 'read');
    const u = getUserById(g.p.db, p.userId);
    if (!u) throw new CommandError('NOT_FOUND', `user ${p.userId} does not exist`);
    return boundedRightsAnswer({ userId: u.id, admin: u.isAdmin, role: u.role, grants: grantsOf(u) });
  });
  register(d, 'rights.set', strictObject({ userId: id, role: roleSchema.optional(), registers: registersSchema, grants: z.array(grantSchema).max(500).optional(), admin: z.boolean().optional(), club: clubField }), async (p, ctx) => {
    const g = await guard(services, ctx, 'rights.set', p);
    g.needClub('users', 'update');
    const u = targetUser(g, p.userId, false);
    if (p.role === undefined && p.grants === undefined && p.admin === undefined) throw new CommandError('BAD_REQUEST', 'give role (with registers), grants, or admin');
    const r = p.role === undefined && p.grants === undefined ? { role: u.role, grants: grantsOf({ ...u, isAdmin: false }) } : resolveGrants(p);
    checkGrantable(g, r.grants, p.admin);
    if (p.admin === false && u.isAdmin && countActiveAdmins(g.p.db) <= 1) throw new CommandError('CONFLICT', 'the last administrator cannot be demoted');
    const before = { role: u.role, admin: u.isAdmin, grants: grantsOf({ ...u, isAdmin: false }) };
    return g.p.db.transaction(() => {
      setGrants(g.p.db, u.id, r.role, r.grants, p.admin);
      g.p.audit.append({ ...g.p.actor, action: 'rights.set', entity: 'users', recordId: u.id, changes: { role: { old: before.role, new: r.role }, admin: { old: before.admin, new: p.admin ?? before.admin }, grants: { old: before.grants, new: r.grants } } });
      const after = getUserById(g.p.db, u.id)!;
      if (g.has('users', 'read')?.kind !== 'club') return keepAnswer(g.p.db, { payload: { userId: u.id } });
      return keepAnswer(g.p.db, boundedRightsAnswer({ userId: u.id, admin: after.isAdmin, role: after.role, grants: grantsOf(after) }));
    }).immediate();
  });
}
