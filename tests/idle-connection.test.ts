import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Connection } from '../client/connection.js';
import { startDaemon, waitUntil, type TestDaemon } from './helpers/daemon.js';

/**
 * Issue 13 (idle connections): an established, idle session holds no timer of its own. Its
 * login and idle deadlines are checked by the daemon's one sweep, and the handshake timer is
 * gone once the handshake is done. (Before: a login timer and a socket timeout per session.)
 */
let td: TestDaemon;

before(async () => {
  td = await startDaemon();
});

after(async () => {
  await td.stop();
});

const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

test('12 established idle sessions add no timers (login and idle deadlines are swept)', { timeout: 60000 }, async () => {
  const before = timers();
  const conns: Connection[] = [];
  try {
    for (let i = 0; i < 12; i++) conns.push(await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint, localAddress: '127.0.14.1' }));
    await waitUntil(() => td.daemon.connectionCount >= 12 && td.daemon.pendingHandshakes === 0, 20000, 'all sessions established');
    const added = timers() - before;
    assert.ok(added < 3, `${added} timers for 12 idle sessions`);
  } finally {
    await Promise.all(conns.map((c) => c.close()));
  }
});
