import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, clubEnv } from './helpers/club-server.js';

/** Seed 5.3: logouts are logged, also when the client just drops the connection. */
test('a connection that closes with a logged-in session writes its logout to the change log', { timeout: 30_000 }, async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const srv = await env.listen();
    const dropped = await srv.connect('127.0.0.71');
    await dropped.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    await dropped.close(); // no auth.logout: the session ends with the connection

    const viewer = await srv.connect();
    await viewer.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    let entries: { action: string; ip: string; changes: { reason?: string } | null }[] = [];
    // Poll the change log until the logout entry is there (a deadline, not a count of tries).
    const deadline = Date.now() + 15_000;
    for (;;) {
      entries = ((await viewer.request('log.query', { action: 'logout' })).payload as { entries: typeof entries }).entries;
      if (entries.length > 0 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(entries.length, 1, 'exactly one logout');
    assert.equal(entries[0]!.ip, '127.0.0.71');
    assert.deepEqual(entries[0]!.changes, { reason: 'connection closed' });
    await viewer.request('auth.logout', {});
    await viewer.close();
  } finally {
    await env.close();
  }
});
