import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { clubEnv, ADMIN_PASSWORD } from './helpers/club-server.js';
import { legacySha512 } from '../crypto/legacy-password.js';
import { getUserByName } from '../storage/users.js';
import { queryAuditLog } from '../storage/audit-log.js';
import { CommandError } from '../daemon/command-errors.js';

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

test('unknown user, unknown club and wrong password: same error, similar time (point 5)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const s = env.session();
    await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    await s.call('users.create', { username: 'bob', password: 'bob-password-123' });
    const time = async (payload: unknown) => {
      const t0 = process.hrtime.bigint();
      const e = await err(env.session().call('auth.login', payload));
      return { ms: Number(process.hrtime.bigint() - t0) / 1e6, code: e.code, message: e.message };
    };
    const samples: Record<string, number[]> = { wrong: [], unknown: [], noclub: [] };
    const seen = new Set<string>();
    for (let i = 0; i < 8; i++) {
      for (const [k, payload] of [
        ['wrong', { club, user: 'bob', password: 'not-bobs-password' }],
        ['unknown', { club, user: 'nobody' + i, password: 'not-bobs-password' }],
        ['noclub', { club: 'c0000000000000000', user: 'bob', password: 'not-bobs-password' }],
      ] as const) {
        const r = await time(payload);
        samples[k]!.push(r.ms);
        seen.add(`${r.code}|${r.message}`);
      }
    }
    assert.equal(seen.size, 1, `one error for all: ${[...seen].join(' / ')}`);
    const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
    const w = med(samples.wrong!);
    for (const k of ['unknown', 'noclub']) {
      const m = med(samples[k]!);
      assert.ok(m > w * 0.5 && m < w * 2, `${k} median ${m.toFixed(2)} ms vs wrong password ${w.toFixed(2)} ms`);
    }
  } finally {
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
