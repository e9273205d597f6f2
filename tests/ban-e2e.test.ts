import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect } from '../client/connection.js';
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer, type RunningServer } from '../daemon/main/main.js';
import { startSmtpSink } from './helpers/smtp-sink.js';
import { createClub } from '../storage/server/provisioning.js';

const run = promisify(execFile);
const CTL = new URL('../bin/commusicctl.js', import.meta.url).pathname;

async function ctl(dataDir: string, ...args: string[]): Promise<unknown> {
  const { stdout } = await run(process.execPath, [CTL, '--data', dataDir, ...args, '--json'], { timeout: 20_000 });
  return JSON.parse(stdout);
}

/** Sends raw bytes from a source address and resolves when the server closes the socket. */
function sendRaw(port: number, localAddress: string, bytes: string): Promise<void> {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port, localAddress }, () => s.write(bytes));
    s.on('error', () => resolve());
    s.on('close', () => resolve());
    s.resume();
  });
}

async function start(dataDir: string, smtpPort: number): Promise<RunningServer> {
  const file = join(dataDir, '..', `${dataDir.split('/').pop()}.json`);
  writeFileSync(file, JSON.stringify({ health: { enabled: false }, mail: { to: ['service@commusic.test'], smtp: { host: '127.0.0.1', port: smtpPort, secure: false, requireTLS: false }, groupInterval: '1s' } }));
  return startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger() });
}

test('non-client traffic bans its source, mails the service team, and the next connection costs no signature', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-ban-e2e-'));
  const smtp = await startSmtpSink();
  const server = await start(dir, smtp.port);
  try {
    const { port } = server.daemon.address();
    await sendRaw(port, '127.0.0.7', 'GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await smtp.waitFor((m) => m.some((x) => x.body.includes('127.0.0.7')), 15_000);
    assert.ok(smtp.mails.every((m) => m.to.includes('service@commusic.test')));

    const hellosBefore = server.daemon.stats.hellos;
    const refusedBefore = server.daemon.stats.refusedBanned;
    await assert.rejects(connect({ host: '127.0.0.1', port, fingerprint: server.identity.fingerprint, localAddress: '127.0.0.7', connectTimeoutMs: 5000 }));
    assert.equal(server.daemon.stats.hellos, hellosBefore, 'no handshake work (no signature) for a banned source');
    assert.equal(server.daemon.stats.refusedBanned, refusedBefore + 1);

    const other = await connect({ host: '127.0.0.1', port, fingerprint: server.identity.fingerprint, localAddress: '127.0.0.8' });
    assert.ok((await other.ping()) >= 0);
    await other.close();
  } finally {
    await server.stop();
    await smtp.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(`${dir}.json`, { force: true });
  }
});

test('commusicctl bans add/list/remove act at once on the running daemon, and work offline', { timeout: 90_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-ban-ctl-'));
  const smtp = await startSmtpSink();
  let server = await start(dir, smtp.port);
  try {
    const { port } = server.daemon.address();
    const fp = server.identity.fingerprint;
    const added = (await ctl(dir, 'bans', 'add', '127.0.0.32/29', '--for', '1h', '--reason', 'drill')) as { address: string; source: string };
    assert.equal(added.address, '127.0.0.32/29');
    assert.equal(added.source, 'manual');
    for (const ip of ['127.0.0.33', '127.0.0.38']) {
      await assert.rejects(connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: ip, connectTimeoutMs: 5000 }), `${ip} is inside the banned range`);
    }
    const outside = await connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: '127.0.0.40' });
    await outside.close();
    const list = (await ctl(dir, 'bans', 'list')) as { address: string }[];
    assert.ok(list.some((b) => b.address === '127.0.0.32/29'));
    await ctl(dir, 'bans', 'remove', '127.0.0.32/29');
    const back = await connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: '127.0.0.33' });
    await back.close();

    // Offline: the same commands on the data folder; the next start enforces them.
    await server.stop();
    await ctl(dir, 'bans', 'add', '127.0.0.50', '--for', '1h', '--reason', 'offline');
    const offlineList = (await ctl(dir, 'bans', 'list')) as { address: string }[];
    assert.ok(offlineList.some((b) => b.address === '127.0.0.50'));
    server = await start(dir, smtp.port);
    await assert.rejects(
      connect({ host: '127.0.0.1', port: server.daemon.address().port, fingerprint: fp, localAddress: '127.0.0.50', connectTimeoutMs: 5000 }),
    );
  } finally {
    await server.stop();
    await smtp.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(`${dir}.json`, { force: true });
  }
});

test('a ban ends the sessions its source already has open: a rights violation, and a manual ban', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-ban-kick-'));
  const smtp = await startSmtpSink();
  const server = await start(dir, smtp.port);
  try {
    const { port } = server.daemon.address();
    const fp = server.identity.fingerprint;
    const { id: club } = await createClub(server.storage, { name: 'MV Kick', adminUser: 'admin', adminPassword: 'Admin-Password-123' });
    const admin = await connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: '127.0.0.80' });
    await admin.request('auth.login', { club, user: 'admin', password: 'Admin-Password-123' });
    await admin.request('users.create', { username: 'mia', password: 'Member-Password-123', role: 'member' });

    // A member reaching for the user list: refused, banned, and the open session is closed.
    const member = await connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: '127.0.0.81' });
    await member.request('auth.login', { club, user: 'mia', password: 'Member-Password-123' });
    await assert.rejects(member.request('users.list', {}));
    await assert.rejects(member.ping(), (e: Error & { code?: string }) => e.code === 'CONNECTION_CLOSED');
    await assert.rejects(connect({ host: '127.0.0.1', port, fingerprint: fp, localAddress: '127.0.0.81', connectTimeoutMs: 5000 }));

    // A manual ban through commusicctl closes the administrator's open session at once.
    assert.ok((await admin.ping()) >= 0);
    await ctl(dir, 'bans', 'add', '127.0.0.80', '--for', '1h', '--reason', 'test');
    await assert.rejects(admin.ping(), (e: Error & { code?: string }) => e.code === 'CONNECTION_CLOSED' && /banned/.test(e.message));
  } finally {
    await server.stop();
    await smtp.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(`${dir}.json`, { force: true });
  }
});
