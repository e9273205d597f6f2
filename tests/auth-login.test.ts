import { test } from 'node:test';
import assert from 'node:assert/strict';
import nodeCrypto, { randomBytes } from 'node:crypto';
import { syncBuiltinESMExports } from 'node:module';
import { clubEnv, ADMIN_PASSWORD } from './helpers/club-server.js';
import { legacySha512 } from '../crypto/legacy-password.js';
import { getUserByName } from '../storage/club/users.js';
import { queryAuditLog } from '../storage/club/audit-log.js';
import { CommandError } from '../daemon/edge/command-errors.js';

async function err(p: Promise<unknown>): Promise<CommandError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof CommandError, String(e));
    return e;
  }
  assert.fail('expected an error');
}

test('login, whoami, logout; logins, failed logins and logouts are in the change log (point 4)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const s = env.session('127.0.0.5');
    assert.equal((await err(s.call('persons.list', {}))).code, 'UNAUTHENTICATED');
    const r = await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    assert.equal(r.payload.user, 'admin');
    assert.equal((await s.call('auth.whoami')).payload.admin, true);
    const bad = await err(env.session().call('auth.login', { club, user: 'admin', password: 'wrong-password-1' }));
    assert.equal(bad.code, 'UNAUTHENTICATED');
    assert.deepEqual((await s.call('auth.logout')).payload, { loggedOut: true });
    assert.equal((await err(s.call('persons.list', {}))).code, 'UNAUTHENTICATED');
    const db = env.storage.openClub(club).db;
    const actions = queryAuditLog(db, {}).entries.map((e) => [e.action, e.user, e.ip]);
    assert.deepEqual(actions, [
      ['login', 'admin', '127.0.0.5'],
      ['login.failed', 'admin', '127.0.0.1'],
      ['logout', 'admin', '127.0.0.5'],
    ]);
    const v = env.violations.filter((x) => x.kind === 'login');
    assert.equal(v.length, 1);
    assert.equal(v[0]!.club, club);
    assert.equal(v[0]!.user, 'admin');
  } finally {
    await env.close();
  }
});

// No timing assertion (machines here are noisy): the equal-work rule is checked structurally.
// Every node:crypto scrypt call made during each attempt is recorded with its cost parameter;
// an unknown user or club must pay exactly the scrypt work a wrong password pays.
test('unknown user, unknown club and wrong password: same error, same scrypt work (point 5)', async () => {
  const env = await clubEnv();
  const original = nodeCrypto.scrypt;
  let calls: number[] | undefined;
  (nodeCrypto as { scrypt: unknown }).scrypt = (...args: unknown[]) => {
    const opts = args.find((a) => typeof a === 'object' && a !== null && 'N' in (a as object)) as { N: number } | undefined;
    calls?.push(opts?.N ?? 0);
    return (original as (...a: unknown[]) => unknown)(...args);
  };
  syncBuiltinESMExports();
  try {
    const club = await env.newClub();
    const s = env.session();
    await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    await s.call('users.create', { username: 'bob', password: 'bob-password-123' });
    const attempt = async (payload: unknown) => {
      calls = [];
      const e = await err(env.session().call('auth.login', payload));
      const work = calls;
      calls = undefined;
      return { work, code: e.code, message: e.message };
    };
    const seen = new Set<string>();
    const wrong = await attempt({ club, user: 'bob', password: 'not-bobs-password' });
    assert.ok(wrong.work.length >= 1, 'a wrong password costs at least one scrypt');
    seen.add(`${wrong.code}|${wrong.message}`);
    for (const [k, payload] of [
      ['unknown user', { club, user: 'nobody', password: 'not-bobs-password' }],
      ['unknown club', { club: 'c0000000000000000', user: 'bob', password: 'not-bobs-password' }],
    ] as const) {
      const r = await attempt(payload);
      seen.add(`${r.code}|${r.message}`);
      assert.deepEqual(r.work, wrong.work, `${k}: scrypt work ${JSON.stringify(r.work)} vs wrong password ${JSON.stringify(wrong.work)}`);
    }
    assert.equal(seen.size, 1, `one error for all: ${[...seen].join(' / ')}`);
  } finally {
    (nodeCrypto as { scrypt: unknown }).scrypt = original;
    syncBuiltinESMExports();
    await env.close();
  }
});

test('a legacy salted SHA-512 user is stored wrapped in scrypt (nothing fast written), logs in with the old password and is then stored with plain scrypt (point 5; issue 20 point 5)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const s = env.session();
    await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const legacy = legacySha512('alte-Passwort-42', randomBytes(16));
    assert.equal((await s.call('users.import', { users: [{ username: 'old', legacyHash: legacy, role: 'member' }] })).payload.imported, 1);
    assert.equal((await err(s.call('users.import', { users: [{ username: 'old2', legacyHash: 'md5$abc' }] }))).code, 'BAD_REQUEST');
    const db = () => env.storage.openClub(club).db;
    const stored = getUserByName(db(), 'old')!.passwordHash;
    assert.match(stored, /^sha512-scrypt\$[0-9a-f]{32}\$scrypt\$1\$/, 'the import stores a memory-hard hash over the legacy value');
    assert.ok(!stored.includes(legacy.split('$')[2]!), 'the fast SHA-512 value itself is never written');
    assert.equal((await err(env.session().call('auth.login', { club, user: 'old', password: 'wrong' }))).code, 'UNAUTHENTICATED');
    assert.equal(getUserByName(db(), 'old')!.passwordHash, stored, 'a failed login does not rehash');
    const u = env.session();
    await u.call('auth.login', { club, user: 'old', password: 'alte-Passwort-42' });
    const h = getUserByName(db(), 'old')!.passwordHash;
    assert.match(h, /^scrypt\$1\$/);
    assert.ok(!h.includes(legacy.split('$')[2]!));
    // The old hash is gone: the same password keeps working, now through scrypt.
    await env.session().call('auth.login', { club, user: 'old', password: 'alte-Passwort-42' });
    assert.equal(getUserByName(db(), 'old')!.passwordHash, h);
    const login = queryAuditLog(db(), { action: 'login', user: 'old' }).entries.filter((e) => e.action === 'login');
    assert.equal(login.length, 2);
    assert.equal((login[0]!.changes as { rehashed: string }).rehashed, 'legacy sha512 -> scrypt');
    assert.equal(login[1]!.changes, null);
  } finally {
    await env.close();
  }
});

test('disabling a user or changing a right takes effect on the live session at once; idle sessions end', async () => {
  let now = Date.now();
  const env = await clubEnv({ idleTimeoutMs: 60_000, now: () => now });
  try {
    const club = await env.newClub();
    const a = env.session();
    await a.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const bob = (await a.call('users.create', { username: 'bob', password: 'bob-password-123', role: 'secretary' })).payload.user.id;
    const b = env.session();
    await b.call('auth.login', { club, user: 'bob', password: 'bob-password-123' });
    assert.equal(await b.code('persons.list'), 'ok');
    await a.call('rights.set', { userId: bob, role: 'inventoryKeeper' });
    assert.equal(await b.code('offices.list'), 'FORBIDDEN');
    assert.equal(await b.code('inventoryItems.list'), 'ok');
    await a.call('users.disable', { id: bob });
    assert.equal(await b.code('inventoryItems.list'), 'UNAUTHENTICATED');
    assert.equal(await env.session().code('auth.login', { club, user: 'bob', password: 'bob-password-123' }), 'UNAUTHENTICATED');
    await a.call('users.enable', { id: bob });
    await b.call('auth.login', { club, user: 'bob', password: 'bob-password-123' });
    const reset = (await a.call('users.resetPassword', { id: bob })).payload;
    assert.equal(typeof reset.oneTimePassword, 'string');
    assert.equal(await b.code('inventoryItems.list'), 'UNAUTHENTICATED', 'a password reset ends live sessions');
    await b.call('auth.login', { club, user: 'bob', password: reset.oneTimePassword });
    assert.equal(await b.code('inventoryItems.list'), 'FORBIDDEN', 'must change the one-time password first');
    await b.call('users.changeOwnPassword', { oldPassword: reset.oneTimePassword, newPassword: 'bobs-new-password-1' });
    assert.equal(await b.code('inventoryItems.list'), 'ok');
    now += 61_000;
    assert.equal(await b.code('inventoryItems.list'), 'UNAUTHENTICATED');
    const log = queryAuditLog(env.storage.openClub(club).db, { user: 'bob', action: 'logout' }).entries;
    assert.ok(log.some((e) => (e.changes as { reason?: string } | null)?.reason === 'idle timeout'));
  } finally {
    await env.close();
  }
});
