import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect, type Connection } from '../client/connection.js';
import { configSchema, dataPaths } from '../daemon/main/config.js';
import { callControl } from '../daemon/ops/control-socket.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { OperationRegistry } from '../daemon/ops/operations.js';
import { formatStatus, registerStatusOps, type StatusContext, type StatusReport } from '../daemon/monitoring/status-ops.js';
import { waitUntil } from './helpers/daemon.js';

/**
 * Issue 7, point 4: `commusicctl status --json` reports the figures the test set up, read from
 * the running daemon over its control socket.
 */
const execFileP = promisify(execFile);
const CTL = join(import.meta.dirname, '..', 'bin', 'commusicctl.js');

const until = waitUntil;

test('commusicctl status --json and text: connections, sessions, requests, bans, outbox from the running daemon', { timeout: 30_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-status-'));
  const config = configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { listen: '127.0.0.1:0' } });
  const server = await startServer(config, { logger: nullLogger() });
  const conns: Connection[] = [];
  try {
    const port = server.daemon.address().port;
    for (const a of ['127.0.0.21', '127.0.0.22']) conns.push(await connect({ host: '127.0.0.1', port, fingerprint: server.identity.fingerprint, localAddress: a }));
    await conns[0]!.ping();
    await conns[1]!.ping();
    await conns[1]!.ping();
    await until(() => server.daemon.pendingHandshakes === 0 && server.daemon.stats.established === 2, 3000, 'both handshakes');
    await callControl(dataPaths(dataDir).controlSocket, 'bans.add', { address: '192.0.2.7', duration: '1h', reason: 'status test' });

    const { stdout } = await execFileP(process.execPath, [CTL, '--data', dataDir, 'status', '--json']);
    const r = JSON.parse(stdout) as StatusReport;
    assert.equal(r.connections, 2);
    assert.equal(r.sessions, 2);
    assert.equal(r.pendingHandshakes, 0);
    assert.deepEqual(r.handshakes, { hello: 2, established: 2 });
    assert.equal(r.requests, 3);
    assert.equal(r.activeBans, 1);
    assert.equal(r.outboxLength, 0);
    assert.equal(r.fingerprint, server.identity.fingerprint);
    assert.equal(r.listen, `127.0.0.1:${port}`);
    assert.ok(r.uptimeSeconds >= 0 && r.uptimeSeconds < 60);
    assert.equal(r.health?.certFingerprint, server.health?.server.certificate.fingerprint256);
    assert.equal(r.openStores, 0, 'no club store has been opened yet');
    assert.equal(r.keyFileWatch, 'ok');

    const text = (await execFileP(process.execPath, [CTL, '--data', dataDir, 'status'])).stdout;
    assert.match(text, /^connections: +2 \(2 sessions of which 2 not logged in, 0 handshaking\)$/m);
    assert.match(text, /^active bans: +1$/m);
    assert.match(text, /^health endpoint: +https:\/\/127\.0\.0\.1:\d+ /m);
  } finally {
    for (const c of conns) await c.close();
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('commusicctl status without a running daemon says so and exits 3', { timeout: 15_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-status-none-'));
  const res = await execFileP(process.execPath, [CTL, '--data', dataDir, 'status', '--json']).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  assert.equal(res.code, 3);
  assert.match(res.stderr, /commusicd is not running/);
  await rm(dataDir, { recursive: true, force: true });
});

test('status operation: optional providers (open stores, last backups, key watch) are reported', async () => {
  const stats = { accepted: 5, refusedBanned: 1, refusedLimit: 0, evicted: 0, hellos: 4, helloDropsTolerated: 0, established: 3, requests: new Map([['ping:ok', 7], ['x:DENIED', 1]]), violations: new Map([['http', 2]] as const) };
  const ctx: StatusContext = {
    daemon: { stats, connectionCount: 3, pendingHandshakes: 1, startedAt: 1_000_000 },
    openStores: () => 12,
    activeBans: () => 0,
    outboxLength: () => 4,
    keyWatchState: () => 'alarm',
    lastBackups: () => [['site-b', 2_000_000], ['site-a', 1_500_000]],
    now: () => 1_000_000 + 90_061_000,
  };
  const registry = new OperationRegistry<{ s: StatusContext }>();
  registerStatusOps(registry, (c) => c.s);
  const r = (await registry.run({ s: ctx }, 'status', {})) as StatusReport;
  assert.equal(r.uptimeSeconds, 90_061);
  assert.equal(r.sessions, 2);
  assert.equal(r.requests, 8);
  assert.deepEqual(r.violations, { http: 2 });
  assert.equal(r.openStores, 12);
  assert.equal(r.outboxLength, 4);
  assert.equal(r.keyFileWatch, 'alarm');
  assert.deepEqual(Object.keys(r.lastBackups), ['site-a', 'site-b']);
  assert.equal(r.lastBackups['site-b'], new Date(2_000_000).toISOString());
  const text = formatStatus(r);
  assert.match(text, /up 1d 1h 1m/);
  assert.match(text, /^ {2}site-a: /m);
  await assert.rejects(registry.run({ s: ctx }, 'status', { extra: 1 }), /BAD_ARGUMENTS|invalid arguments/);
});
