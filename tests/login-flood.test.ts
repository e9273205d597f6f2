import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv } from './helpers/club-server.js';
import { passwordHashQueue, MAX_CONCURRENT_HASHES } from '../crypto/password.js';
import { queryAuditLog } from '../storage/club/audit-log.js';
import { ViolationBus } from '../daemon/bans/violations.js';

/**
 * Security review: one connection could block logins for the whole server (the scrypt queue was
 * global first-come-first-served, a connection could pipeline 128 logins, and queued guesses
 * were still checked after their source was banned). Counts and order only, no timing.
 */

async function waitFor(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const codeOf = (p: Promise<unknown>): Promise<string> => p.then(() => 'ok', (e: { code?: string }) => e.code ?? String(e));
const loginViolations = (env: ClubTestEnv, ip: string) => env.violations.filter((v) => v.kind === 'login' && v.ip === ip).length;

test('64 wrong logins pipelined in one record: one is checked, 63 are BUSY and none of those is a violation', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const srv = await env.listen();
    const attacker = await srv.connect('127.0.0.32');
    // Sent in the same turn: the SDK batches them into one record (protocol version 2).
    const codes = await Promise.all(Array.from({ length: 64 }, (_, i) => codeOf(attacker.request('auth.login', { club, user: 'admin', password: `wrong-password-${i}` }))));
    assert.equal(codes.filter((c) => c === 'UNAUTHENTICATED').length, 1, codes.join(','));
    assert.equal(codes.filter((c) => c === 'BUSY').length, 63, codes.join(','));
    assert.equal(loginViolations(env, '127.0.0.32'), 1, 'BUSY is not a violation');
    // The connection is not harmed: once the answer is in, the next login is checked.
    assert.equal(await codeOf(attacker.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD })), 'ok');
    await attacker.close();
  } finally {
    await env.close();
  }
});

test('a login from another address is hashed before a flooding address\'s queued guesses (round-robin, by change-log order)', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const srv = await env.listen();
    // The dummy hash for unknown users is made once; make it before the queue is held.
    await codeOf(env.session('127.0.0.9').call('auth.login', { club, user: 'nobody', password: 'warm-up-password' }));
    passwordHashQueue.setConcurrency(0);
    try {
      const flood = await Promise.all([0, 1, 2, 3].map(() => srv.connect('127.0.0.32')));
      const guesses = flood.map((c, i) => codeOf(c.request('auth.login', { club, user: 'admin', password: `wrong-password-${i}` })));
      await waitFor('the flood to queue', () => passwordHashQueue.queued('127.0.0.32') === 4);
      const user = await srv.connect('127.0.0.33');
      const real = codeOf(user.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD }));
      await waitFor('the real login to queue', () => passwordHashQueue.queued('127.0.0.33') === 1);
      passwordHashQueue.setConcurrency(1);
      assert.equal(await real, 'ok');
      assert.deepEqual(await Promise.all(guesses), ['UNAUTHENTICATED', 'UNAUTHENTICATED', 'UNAUTHENTICATED', 'UNAUTHENTICATED']);
      const order = queryAuditLog(env.storage.openClub(club).db, {}).entries.filter((e) => (e.action === 'login' || e.action === 'login.failed') && e.ip !== '127.0.0.9').map((e) => `${e.action}@${e.ip}`);
      // First come, first served would put the real login after all four guesses.
      assert.deepEqual(order, ['login.failed@127.0.0.32', 'login@127.0.0.33', 'login.failed@127.0.0.32', 'login.failed@127.0.0.32', 'login.failed@127.0.0.32']);
      await Promise.all([...flood, user].map((c) => c.close()));
    } finally {
      passwordHashQueue.setConcurrency(MAX_CONCURRENT_HASHES);
    }
  } finally {
    await env.close();
  }
});

test('a ban drops its source\'s queued logins: the violations counted stay at the ban threshold', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  const THRESHOLD = 2;
  try {
    const club = await env.newClub();
    const srv = await env.listen();
    await codeOf(env.session('127.0.0.9').call('auth.login', { club, user: 'nobody', password: 'warm-up-password' }));
    // Stands in for main.ts: the ban engine bans at THRESHOLD login failures, and the ban
    // closes the source's connections on the next turn (daemon.disconnectBanned).
    let banned = false;
    let queuedAfterBan = -1;
    (env.services.violations as ViolationBus).subscribe((v) => {
      if (!banned && v.kind === 'login' && v.ip === '127.0.0.32' && loginViolations(env, '127.0.0.32') >= THRESHOLD) {
        banned = true;
        setImmediate(() => {
          srv.daemon.disconnectBanned((ip) => ip === '127.0.0.32');
          // Dropped by the ban itself, not later when the sockets are gone.
          queuedAfterBan = passwordHashQueue.queued('127.0.0.32');
        });
      }
    });
    passwordHashQueue.setConcurrency(0);
    try {
      const flood = await Promise.all([0, 1, 2, 3].map(() => srv.connect('127.0.0.32')));
      const guesses = flood.map((c, i) => codeOf(c.request('auth.login', { club, user: 'admin', password: `wrong-password-${i}` })));
      await waitFor('the flood to queue', () => passwordHashQueue.queued('127.0.0.32') === 4);
      passwordHashQueue.setConcurrency(1);
      const codes = await Promise.all(guesses);
      assert.equal(codes.filter((c) => c === 'UNAUTHENTICATED').length, THRESHOLD, codes.join(','));
      assert.equal(queuedAfterBan, 0, 'the ban drops the source\'s queued password checks at once');
      await waitFor('the queue to empty', () => passwordHashQueue.queued() === 0 && passwordHashQueue.active === 0);
      assert.equal(loginViolations(env, '127.0.0.32'), THRESHOLD, 'no guess is checked or counted after the ban');
      const failed = queryAuditLog(env.storage.openClub(club).db, {}).entries.filter((e) => e.action === 'login.failed' && e.ip === '127.0.0.32');
      assert.equal(failed.length, THRESHOLD);
      await Promise.all(flood.map((c) => c.close().catch(() => undefined)));
    } finally {
      passwordHashQueue.setConcurrency(MAX_CONCURRENT_HASHES);
    }
  } finally {
    await env.close();
  }
});

test('every command that hashes a password allows one in flight per connection: a second is BUSY', { timeout: 60_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const s = env.session('127.0.0.35');
    await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const bob = (await s.call('users.create', { username: 'bob', password: 'bob-password-123' })).payload.user.id as number;
    const cases: Array<[string, (i: number) => unknown]> = [
      ['users.create', (i) => ({ username: `user${i}`, password: 'a-long-password-123' })],
      ['users.resetPassword', () => ({ id: bob, password: 'bob-password-456' })],
      ['users.changeOwnPassword', (i) => ({ oldPassword: `not-the-password-${i}`, newPassword: 'another-password-789' })],
      ['auth.login', () => ({ club, user: 'admin', password: 'wrong-password' })],
    ];
    for (const [command, payload] of cases) {
      const codes = await Promise.all([codeOf(s.call(command, payload(1))), codeOf(s.call(command, payload(2)))]);
      assert.equal(codes[1], 'BUSY', `${command}: ${codes.join(',')}`);
      assert.notEqual(codes[0], 'BUSY', command);
    }
    // BUSY is refused before anything else: no violation, no change-log entry for it.
    assert.equal(env.violations.filter((v) => v.kind === 'login').length, 2, 'one wrong current password, one wrong login');
  } finally {
    await env.close();
  }
});
