import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { connect } from '../client/connection.js';
import { saveIdentity } from '../crypto/identity.js';
import { configSchema, dataPaths } from '../daemon/main/config.js';
import { HealthServer } from '../daemon/monitoring/health-server.js';
import { startHealthEndpoint, type HealthEndpoint } from '../daemon/monitoring/health-setup.js';
import { nullLogger } from '../daemon/common/log.js';
import { createDaemonMetrics } from '../daemon/monitoring/metrics.js';
import { loadTlsMaterial, selfSignedPaths } from '../daemon/monitoring/tls-cert.js';
import { startDaemon, waitUntil, type TestDaemon } from './helpers/daemon.js';
import { httpsGet, parsePrometheus, peerFingerprint } from './helpers/health.js';
import { testIdentity } from './helpers/pair.js';

/**
 * Issue 7, points 2 and 3 (first half): /metrics is valid Prometheus text and its counters move
 * with handshakes, requests and violations; it is refused to a disallowed address without the
 * token; the endpoint speaks TLS 1.2+ only and no plain HTTP.
 */
const TOKEN = 'metrics-token-0123456789abcdef';
let td: TestDaemon;
let ep: HealthEndpoint;
let port: number;
let ca: string;

before(async () => {
  td = await startDaemon();
  saveIdentity(dataPaths(td.dataDir).identityKey, testIdentity());
  const config = configSchema.parse({
    dataDir: td.dataDir,
    listen: '127.0.0.1:0',
    health: { listen: '127.0.0.1:0', allowCidrs: ['127.0.0.1/32'], bearerToken: TOKEN },
  });
  ep = await startHealthEndpoint({
    config,
    sources: { daemon: td.daemon, activeBans: () => 4, outboxLength: () => 2, openStores: () => 3, keyWatchState: () => 'ok', lastBackups: () => [['site-b', 1_700_000_000_000]] },
    logger: nullLogger(),
  });
  port = ep.server.address().port;
  ca = ep.server.certificate.cert;
});

after(async () => {
  await ep?.server.close();
  await td?.stop(0);
});

test('self-signed certificate: created in <data>/tls, key 0600, RSA-2048, valid for localhost and 127.0.0.1; reused on the next start', () => {
  const { keyFile, certFile } = selfSignedPaths(td.dataDir);
  assert.equal(statSync(keyFile).mode & 0o777, 0o600);
  assert.equal(ep.server.certificate.certFile, certFile);
  assert.ok(ep.server.certificate.selfSigned);
  const again = loadTlsMaterial({ dataDir: td.dataDir });
  assert.equal(again.created, false);
  assert.equal(again.fingerprint256, ep.server.certificate.fingerprint256);
});

test('/healthz and /readyz answer over verified TLS; unknown paths 404, other methods 405', async () => {
  const h = await httpsGet(port, '/healthz', { ca });
  assert.equal(h.status, 200);
  assert.equal(h.body, 'ok\n');
  const r = await httpsGet(port, '/readyz', { ca });
  assert.equal(r.status, 200);
  const body = JSON.parse(r.body) as { status: string; checks: Record<string, string> };
  assert.equal(body.status, 'ready');
  assert.deepEqual(body.checks, { keys: 'ok', disk: 'ok' });
  assert.equal((await httpsGet(port, '/', { ca })).status, 404);
  assert.equal((await httpsGet(port, '/metrics/../etc', { ca })).status, 404);
  assert.equal((await httpsGet(port, '/healthz', { ca, method: 'POST' })).status, 405);
});

test('/readyz is 503 when a check fails, naming it without details', async () => {
  const config = configSchema.parse({ dataDir: td.dataDir, health: { listen: '127.0.0.1:0' } });
  const hs = await HealthServer.start({
    listen: '127.0.0.1:0',
    tls: loadTlsMaterial({ dataDir: config.dataDir }),
    access: { allowCidrs: ['127.0.0.1'] },
    checks: { stores: () => false, disk: () => true, slow: () => new Promise<boolean>(() => {}), broken: () => { throw new Error('secret detail'); } },
    checkTimeoutMs: 200,
    logger: nullLogger(),
  });
  try {
    const r = await httpsGet(hs.address().port, '/readyz');
    assert.equal(r.status, 503);
    assert.deepEqual(JSON.parse(r.body), { status: 'not ready', checks: { stores: 'fail', disk: 'ok', slow: 'fail', broken: 'fail' } });
    assert.ok(!r.body.includes('secret'));
  } finally {
    await hs.close();
  }
});

test('/metrics is valid Prometheus text; handshakes, requests and violations move the counters', async () => {
  const before = parsePrometheus((await httpsGet(port, '/metrics', { ca })).body);
  const established0 = before.get('commusic_handshakes_total{stage="established"}') ?? 0;
  const c = await connect({ host: '127.0.0.1', port: td.port, fingerprint: td.fingerprint });
  try {
    await c.ping();
    await c.ping();
    // Not our client: an HTTP request on the client port is an "http" violation.
    const raw = netConnect({ host: '127.0.0.1', port: td.port, localAddress: '127.0.0.9' });
    raw.on('error', () => {});
    raw.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await td.waitForViolation((v) => v.kind === 'http');
    raw.destroy();
    await waitUntil(() => td.daemon.connectionCount === 1, 3000, 'the raw socket to go');
    const res = await httpsGet(port, '/metrics', { ca });
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    const m = parsePrometheus(res.body);
    assert.equal(m.get('commusic_handshakes_total{stage="established"}'), established0 + 1);
    assert.ok((m.get('commusic_handshakes_total{stage="hello"}') ?? 0) >= established0 + 1);
    assert.equal(m.get('commusic_requests_total{command="ping",result="ok"}'), (before.get('commusic_requests_total{command="ping",result="ok"}') ?? 0) + 2);
    assert.equal(m.get('commusic_violations_total{kind="http"}'), (before.get('commusic_violations_total{kind="http"}') ?? 0) + 1);
    assert.equal(m.get('commusic_connections'), 1);
    assert.equal(m.get('commusic_sessions'), 1);
    assert.ok((m.get('commusic_connections_accepted_total') ?? 0) >= 2);
    assert.equal(m.get('commusic_active_bans'), 4);
    assert.equal(m.get('commusic_open_club_stores'), 3);
    assert.equal(m.get('commusic_mail_outbox_length'), 2);
    assert.equal(m.get('commusic_key_file_watch_state{state="ok"}'), 1);
    assert.equal(m.get('commusic_key_file_watch_state{state="alarm"}'), 0);
    assert.equal(m.get('commusic_backup_last_success_timestamp_seconds{destination="site-b"}'), 1_700_000_000);
    assert.ok(m.has('commusic_process_cpu_user_seconds_total'), 'process metrics are there too');
  } finally {
    await c.close();
  }
});

test('backup times recorded by later code appear per destination', async () => {
  ep.metrics.setLastBackup('site-a', 1_700_000_500_000);
  const m = parsePrometheus((await httpsGet(port, '/metrics', { ca })).body);
  assert.equal(m.get('commusic_backup_last_success_timestamp_seconds{destination="site-a"}'), 1_700_000_500);
});

test('/metrics: allowed CIDR without token; elsewhere only with the right bearer token', async () => {
  assert.equal((await httpsGet(port, '/metrics', { localAddress: '127.0.0.1' })).status, 200);
  const none = await httpsGet(port, '/metrics', { localAddress: '127.0.0.2' });
  assert.equal(none.status, 401);
  assert.equal(none.headers['www-authenticate'], 'Bearer');
  assert.ok(!none.body.includes('commusic_'));
  assert.equal((await httpsGet(port, '/metrics', { localAddress: '127.0.0.2', token: `${TOKEN}x` })).status, 401);
  assert.equal((await httpsGet(port, '/metrics', { localAddress: '127.0.0.2', token: TOKEN.slice(0, -1) })).status, 401);
  assert.equal((await httpsGet(port, '/metrics', { localAddress: '127.0.0.2', authorization: `Basic ${TOKEN}` })).status, 401);
  const ok = await httpsGet(port, '/metrics', { localAddress: '127.0.0.2', token: TOKEN });
  assert.equal(ok.status, 200);
  assert.match(ok.body, /commusic_connections /);
  // Health and readiness stay open: load balancers and the other site need them.
  assert.equal((await httpsGet(port, '/healthz', { localAddress: '127.0.0.2' })).status, 200);
});

test('/metrics without a configured token: a disallowed address gets 403', async () => {
  const hs = await HealthServer.start({
    listen: '127.0.0.1:0',
    tls: ep.server.certificate,
    access: { allowCidrs: ['127.0.0.1/32'] },
    metrics: createDaemonMetrics({ daemon: td.daemon }, { defaultMetrics: false }),
    logger: nullLogger(),
  });
  try {
    const p = hs.address().port;
    assert.equal((await httpsGet(p, '/metrics', { localAddress: '127.0.0.2' })).status, 403);
    assert.equal((await httpsGet(p, '/metrics', { localAddress: '127.0.0.2', token: 'anything-at-all-here' })).status, 403);
    assert.equal((await httpsGet(p, '/metrics', { localAddress: '127.0.0.1' })).status, 200);
  } finally {
    await hs.close();
  }
});

test('TLS 1.0 and 1.1 are refused; TLS 1.2 and 1.3 are accepted', async () => {
  for (const v of ['TLSv1', 'TLSv1.1'] as const) {
    const outcome = await new Promise<string>((resolve) => {
      // SECLEVEL=0 lets this client really offer the old version, so the refusal is the server's.
      const s = tlsConnect({ host: '127.0.0.1', port, minVersion: v, maxVersion: v, ciphers: 'DEFAULT:@SECLEVEL=0', rejectUnauthorized: false }, () => {
        s.destroy();
        resolve('connected');
      });
      s.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code ?? e.message}`));
    });
    // The server answers the old version with a protocol_version alert.
    assert.match(outcome, /^error ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION$/, `${v} must fail, got ${outcome}`);
  }
  for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
    assert.equal(await peerFingerprint(port, { minVersion: v, maxVersion: v }), ep.server.certificate.fingerprint256);
  }
});

test('plain HTTP on the port gets no HTTP answer, just a closed connection', async () => {
  const reply = await new Promise<string>((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port });
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString('latin1')));
    s.on('close', () => resolve(got));
    s.on('error', () => resolve(got));
    s.write('GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    setTimeout(() => reject(new Error('connection not closed')), 5000).unref();
  });
  assert.ok(!reply.startsWith('HTTP/'), 'no HTTP response');
  assert.ok(!reply.includes('commusic_'), 'no metrics in clear text');
});
