import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '../client/connection.js';
import { RemoteError } from '../client/errors.js';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { createClub } from '../storage/server/provisioning.js';
import { waitUntil } from './helpers/daemon.js';

/**
 * Issue 15, point 2: a `club` other than the session's is answered as PROTOCOL.md section 11
 * says: FORBIDDEN first, then (the rights violation bans at once) CLOSE 4, and the address is
 * banned. Before, the ban closed the session before the answer went out.
 */
test('a club mismatch is answered FORBIDDEN, then the session closes and the address is banned; login and command bans at their documented thresholds', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-ban-rules-'));
  const file = `${dir}.json`;
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir: dir, listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  try {
    const { port } = server.daemon.address();
    const fp = server.identity.fingerprint;
    const { id: club } = await createClub(server.storage, { name: 'MV Club', adminUser: 'admin', adminPassword: 'Admin-Password-123' });
    const c = await connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: '127.0.2.1' });
    await c.request('auth.login', { club, user: 'admin', password: 'Admin-Password-123' });
    assert.ok((await c.request('persons.list', { club })).payload, 'the own club id is accepted');
    await assert.rejects(c.request('persons.list', { club: `${club}x` }), (e: unknown) => e instanceof RemoteError && e.code === 'FORBIDDEN');
    await waitUntil(() => c.closed, 10_000, 'session closed after the ban');
    assert.ok(server.banSystem.table.check('127.0.2.1', Date.now()), 'the address is banned');

    // The counted kinds at their documented thresholds (PROTOCOL.md 11): one below is never a ban.
    const policy = server.banSystem.engine.policy;
    const d = await connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: '127.0.2.2' });
    for (let i = 1; i < policy.kinds.login.maxRetry; i++) {
      await assert.rejects(d.request('auth.login', { club, user: 'admin', password: `wrong-password-${i}` }), (e: unknown) => e instanceof RemoteError && e.code === 'UNAUTHENTICATED');
    }
    for (let i = 1; i < policy.kinds.command.maxRetry; i++) {
      await assert.rejects(d.request(`no.such${i}`, {}), (e: unknown) => e instanceof RemoteError && e.code === 'UNKNOWN_COMMAND');
    }
    await d.request('auth.login', { club, user: 'admin', password: 'Admin-Password-123' });
    assert.equal(server.banSystem.table.check('127.0.2.2', Date.now()), undefined, 'not banned one below each threshold');
    await assert.rejects(d.request('no.such.last', {}), (e: unknown) => e instanceof RemoteError && e.code === 'UNKNOWN_COMMAND');
    await waitUntil(() => d.closed, 10_000, 'session closed at the threshold');
    assert.ok(server.banSystem.table.check('127.0.2.2', Date.now()), 'banned at the threshold');
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(file, { force: true });
  }
});
