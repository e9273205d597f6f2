// Issue 15 review finding B: after `keys rotate-identity switch`, clients that drop the TCP
// connection right after the ServerHello on a pin mismatch (the pre-rollover rule, third-party
// clients) are not counted as `handshake` violations, so a key switch does not ban whole NATs;
// the tolerance lasts through a grace period after `retire` and ends after it. Outside a rollover
// the old rule counts (tests/identity-rollover.test.ts "documented contrast").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '../client/connection.js';
import { generateIdentity } from '../crypto/identity.js';
import { signRotation } from '../crypto/identity-rotation.js';
import type { IdentityKeySet } from '../crypto/identity-keyring.js';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { HELLO_DROP_GRACE_AFTER_RETIRE_MS, helloDropTolerated } from '../daemon/main/identity-keys.js';
import { startServer } from '../daemon/main/main.js';
import { runOperation } from '../daemon/ops/offline.js';
import { ClientSession } from '../protocol/client-session.js';
import { SERVER_HELLO_LEN } from '../protocol/constants.js';
import { RawSocket, waitUntil } from './helpers/daemon.js';

test('B: during the switched phase, a client that drops right after the ServerHello many times is not banned; the drops are counted in the metrics', { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-grace-'));
  const dataDir = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger(), keyWatchPollMs: 200 });
  t.after(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const port = server.daemon.address().port;
  await runOperation(dataDir, 'keys.rotate-identity', { step: 'start' });
  await runOperation(dataDir, 'keys.rotate-identity', { step: 'switch' });
  const ip = '127.0.0.41';
  const handshakeViolations = () => server.daemon.stats.violations.get('handshake') ?? 0;
  const before = handshakeViolations();
  // Three are enough for a ban under the default rule (3 / 10m); ten to be sure.
  for (let i = 1; i <= 10; i++) {
    const raw = await RawSocket.open(port, ip);
    const session = new ClientSession({ acceptServerKey: () => false });
    session.start();
    await raw.write(Buffer.concat(session.takeOutput()));
    await waitUntil(() => raw.receivedBytes >= SERVER_HELLO_LEN, 10_000, 'the ServerHello');
    raw.destroy();
    await waitUntil(() => server.daemon.stats.helloDropsTolerated === i, 10_000, `drop ${i} to be seen`);
  }
  assert.equal(handshakeViolations(), before, 'no handshake violation counted');
  assert.equal(server.banSystem.table.check(ip, Date.now()), undefined, 'the address is not banned');
  // The same address still connects.
  const c = await connect({ host: '127.0.0.1', port, localAddress: ip, knownServersFile: join(dir, 'known_servers') });
  await c.close();
});

test('B: the tolerance covers the switched phase and the grace period after retire, and nothing else', () => {
  const a = generateIdentity();
  const b = generateIdentity();
  const now = Date.parse('2026-11-30T09:00:00Z');
  const statement = signRotation(a, b, now - 40 * 86_400_000);
  const base = { current: b, rotations: [], rotated: true } as unknown as IdentityKeySet;
  assert.equal(helloDropTolerated({ ...base, phase: 'single', rotated: false }, now), false, 'never rotated');
  assert.equal(helloDropTolerated({ ...base, phase: 'announce', current: a, next: b }, now), false, 'announce: the old key still signs');
  assert.equal(helloDropTolerated({ ...base, phase: 'switched', previous: a, rotations: [statement] }, now), true, 'switched');
  const retired = (ms: number) => ({ ...base, phase: 'single' as const, rotations: [{ ...statement, retiredAt: new Date(now - ms).toISOString() }] });
  assert.equal(helloDropTolerated(retired(86_400_000), now), true, 'a day after retire');
  assert.equal(helloDropTolerated(retired(HELLO_DROP_GRACE_AFTER_RETIRE_MS + 1), now), false, 'after the grace period');
  assert.equal(HELLO_DROP_GRACE_AFTER_RETIRE_MS, 30 * 86_400_000);
});
