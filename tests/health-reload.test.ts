import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { connect } from '../client/connection.js';
import { configSchema, loadConfig } from '../daemon/main/config.js';
import { startHealthEndpoint } from '../daemon/monitoring/health-setup.js';
import { createLogger } from '../daemon/common/log.js';
import { Reloader } from '../daemon/main/reload.js';
import { createSelfSigned } from '../daemon/monitoring/tls-cert.js';
import { startDaemon } from './helpers/daemon.js';
import { httpsGet, peerFingerprint } from './helpers/health.js';

/**
 * Issue 7, point 3 (second half): SIGHUP swaps in a new certificate (new connections see it)
 * while an established client session, and even an open HTTPS connection, keep working. Run
 * against the real commusicd in a child process, and the reloader's rules in-process.
 */
const DAEMON = join(import.meta.dirname, '..', 'bin', 'commusicd.js');

function writePair(certFile: string, keyFile: string): string {
  const { cert, key } = createSelfSigned(['127.0.0.1']);
  writeFileSync(keyFile, key, { mode: 0o600 });
  chmodSync(keyFile, 0o600);
  writeFileSync(certFile, cert);
  return new X509Certificate(cert).fingerprint256;
}

interface Started {
  child: ChildProcess;
  port: number;
  healthPort: number;
  /** The web application's port (the test configures web.listen). */
  webPort: number;
  fingerprint: string;
  /** Everything the daemon wrote to stderr (its log) so far. */
  stderr: () => string;
}

function startChild(configFile: string): Promise<Started> {
  const child = spawn(process.execPath, [DAEMON, '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, COMMUSIC_DATA: '', COMMUSIC_LISTEN: '' } });
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`commusicd did not start: ${out} ${err}`));
    }, 20_000);
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const port = /listening on 127\.0\.0\.1:(\d+)/.exec(out)?.[1];
      const healthPort = /health endpoint https:\/\/127\.0\.0\.1:(\d+)/.exec(out)?.[1];
      const webPort = /web application https:\/\/127\.0\.0\.1:(\d+)/.exec(out)?.[1];
      const fingerprint = /server fingerprint: ([0-9a-f:]+)/i.exec(out)?.[1];
      if (port && healthPort && webPort && fingerprint) {
        clearTimeout(timer);
        resolve({ child, port: Number(port), healthPort: Number(healthPort), webPort: Number(webPort), fingerprint, stderr: () => err });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`commusicd exited with ${code}: ${out} ${err}`));
    });
  });
}

/** An HTTPS request written by hand on an already open TLS socket. */
function getOn(sock: TLSSocket, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString();
      if (/\r\n\r\n[\s\S]*ok\n$/.test(got)) {
        sock.off('data', onData);
        resolve(got);
      }
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n`);
    setTimeout(() => reject(new Error(`no answer on the open socket: ${got}`)), 5000).unref();
  });
}

async function eventually<T>(f: () => Promise<T>, pred: (v: T) => boolean, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (pred(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('SIGHUP: new certificate for new connections (health endpoint and web application); client session and open HTTPS connection keep working', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'commusic-sighup-'));
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  const fpA = writePair(certFile, keyFile);
  const configFile = join(dir, 'commusicd.json');
  writeFileSync(
    configFile,
    JSON.stringify({ dataDir: join(dir, 'data'), listen: '127.0.0.1:0', logLevel: 'error', health: { listen: '127.0.0.1:0', certFile, keyFile }, web: { listen: '127.0.0.1:0', certFile, keyFile } }),
  );
  const s = await startChild(configFile);
  const exited = new Promise<number | null>((r) => s.child.once('exit', (code) => r(code)));
  const client = await connect({ host: '127.0.0.1', port: s.port, fingerprint: s.fingerprint });
  let held: TLSSocket | undefined;
  try {
    await client.ping();
    assert.equal(await peerFingerprint(s.healthPort), fpA);
    assert.equal(await peerFingerprint(s.webPort), fpA);
    held = await new Promise<TLSSocket>((resolve, reject) => {
      const t = tlsConnect({ host: '127.0.0.1', port: s.healthPort, rejectUnauthorized: false }, () => resolve(t));
      t.once('error', reject);
    });
    assert.match(await getOn(held, '/healthz'), /^HTTP\/1\.1 200/);

    const fpB = writePair(certFile, keyFile);
    assert.notEqual(fpA, fpB);
    process.kill(s.child.pid!, 'SIGHUP');
    assert.equal(await eventually(() => peerFingerprint(s.healthPort), (f) => f === fpB, 10_000), fpB, 'new connections see the new certificate');
    assert.equal(await eventually(() => peerFingerprint(s.webPort), (f) => f === fpB, 10_000), fpB, 'the web application too (it kept the old one before)');

    // Nothing was dropped.
    assert.ok((await client.ping()) >= 0, 'the client session established before SIGHUP still works');
    assert.equal(client.closed, false);
    assert.match(await getOn(held, '/healthz'), /^HTTP\/1\.1 200/, 'an HTTPS connection opened before SIGHUP still works');
    assert.equal((await httpsGet(s.healthPort, '/healthz', { ca: readFileSync(certFile, 'utf8') })).status, 200, 'the new certificate verifies');

    // A broken certificate on the next SIGHUP changes nothing; the daemon runs on.
    writeFileSync(certFile, 'not a certificate');
    process.kill(s.child.pid!, 'SIGHUP');
    // Wait until the daemon has handled this SIGHUP (it logs the refused reload), not for a time.
    const refused = Date.now() + 20_000;
    while (!/reload failed/.test(s.stderr()) && Date.now() < refused) await new Promise((r) => setTimeout(r, 20));
    assert.match(s.stderr(), /reload failed/, 'the broken certificate was refused');
    assert.equal(await peerFingerprint(s.healthPort), fpB);
    assert.equal(await peerFingerprint(s.webPort), fpB);
    assert.ok((await client.ping()) >= 0);
  } finally {
    held?.destroy();
    await client.close();
    s.child.kill('SIGTERM');
    assert.equal(await exited, 0, 'clean shutdown on SIGTERM');
    await rm(dir, { recursive: true, force: true });
  }
});

test('Reloader: log level applies, restart-only settings are reported, an invalid file changes nothing', { timeout: 30_000 }, async () => {
  const td = await startDaemon();
  const configFile = join(td.dataDir, 'c.json');
  const base = { dataDir: td.dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { listen: '127.0.0.1:0', allowCidrs: ['127.0.0.1/32'] } };
  writeFileSync(configFile, JSON.stringify(base));
  const config = loadConfig({ file: configFile });
  const logger = createLogger({ level: config.logLevel, silent: true });
  const ep = await startHealthEndpoint({ config, sources: { daemon: td.daemon }, logger });
  const port = ep.server.address().port;
  const reloader = new Reloader({ sources: { file: configFile }, config, logger, health: ep.server });
  const seen: string[] = [];
  reloader.addHook('bans.policy', (c) => void seen.push(c.logLevel));
  try {
    assert.equal((await httpsGet(port, '/metrics', { localAddress: '127.0.0.2' })).status, 403);
    writeFileSync(configFile, JSON.stringify({ ...base, logLevel: 'debug', listen: '127.0.0.1:1', health: { ...base.health, allowCidrs: ['127.0.0.0/24'] } }));
    const r = await reloader.reload();
    assert.equal(r.ok, true);
    assert.ok(r.applied.includes('logLevel') && r.applied.includes('health.access') && r.applied.includes('bans.policy'));
    assert.deepEqual(r.restartNeeded, ['listen']);
    assert.equal(logger.level, 'debug');
    assert.deepEqual(seen, ['debug']);
    assert.equal(reloader.config.listen, '127.0.0.1:0', 'the running listener is what the config now records');
    assert.equal((await httpsGet(port, '/metrics', { localAddress: '127.0.0.2' })).status, 200, 'the new allow-list is in force');

    writeFileSync(configFile, '{"logLevel": "loud"');
    const bad = await reloader.reload();
    assert.equal(bad.ok, false);
    assert.match(bad.error!, /not valid YAML or JSON/);
    writeFileSync(configFile, JSON.stringify({ ...base, logLevel: 'loud' }));
    const bad2 = await reloader.reload();
    assert.equal(bad2.ok, false);
    assert.match(bad2.error!, /logLevel/);
    assert.equal(logger.level, 'debug', 'nothing changed');
    assert.equal((await httpsGet(port, '/metrics', { localAddress: '127.0.0.2' })).status, 200);
    assert.ok(configSchema.safeParse(reloader.config).success);
  } finally {
    await ep.server.close();
    await td.stop(0);
  }
});
