import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import winston from 'winston';
import { configSchema } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { AlertMailer } from '../daemon/mail/mailer.js';
import { formatStatus, statusReport } from '../daemon/monitoring/status-ops.js';

/**
 * Issue 11 point 6: start-up order (the data folder's lock, then the ports, then initialising a
 * new data folder), why the health endpoint is off, and the SMTP target in mail-retry lines.
 */
function captureLogger(lines: Record<string, unknown>[]): winston.Logger {
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return winston.createLogger({ level: 'debug', format: winston.format.json(), transports: [new winston.transports.Stream({ stream })] });
}

async function busyPort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen({ host: '127.0.0.1', port: 0 }, () => r()));
  const a = server.address();
  if (!a || typeof a === 'string') throw new Error('no address');
  return { server, port: a.port };
}

test('a second daemon on the same data folder stops at the lock, before it listens', { timeout: 60_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-order-'));
  const first = await startServer(configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { enabled: false } }), { logger: nullLogger() });
  try {
    const lines: Record<string, unknown>[] = [];
    const printed: string[] = [];
    await assert.rejects(
      startServer(configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'debug', health: { enabled: false } }), { logger: captureLogger(lines), print: (l) => printed.push(l) }),
      { code: 'DAEMON_RUNNING' },
    );
    assert.equal(lines.filter((l) => l['message'] === 'listening').length, 0, `no "listening" line: ${JSON.stringify(lines)}`);
    assert.deepEqual(printed, []);
    assert.ok(first.daemon.address().port > 0, 'the first daemon is untouched');
  } finally {
    await first.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('a client port in use is found before a new data folder is initialised', { timeout: 60_000 }, async () => {
  const parent = await mkdtemp(join(tmpdir(), 'commusic-order-'));
  const dataDir = join(parent, 'new-data');
  const busy = await busyPort();
  try {
    await assert.rejects(
      startServer(configSchema.parse({ dataDir, listen: `127.0.0.1:${busy.port}`, logLevel: 'error', health: { enabled: false } }), { logger: nullLogger() }),
      { name: 'ListenError', code: 'EADDRINUSE' },
    );
    assert.equal(existsSync(join(dataDir, 'keys')), false, 'no identity key created');
    assert.equal(existsSync(dataDir), false, 'the new data folder was not left behind');
  } finally {
    busy.server.close();
    await rm(parent, { recursive: true, force: true });
  }
});

test('status says why the health endpoint is off: its port is in use (a second daemon on one host)', { timeout: 60_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-order-'));
  const busy = await busyPort();
  const server = await startServer(configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { listen: `127.0.0.1:${busy.port}` } }), { logger: nullLogger() });
  try {
    assert.equal(server.health, undefined);
    const { callControl } = await import('../daemon/ops/control-socket.js');
    const { dataPaths } = await import('../daemon/main/config.js');
    const res = (await callControl(dataPaths(dataDir).controlSocket, 'status', {}))!.result as ReturnType<typeof statusReport>;
    assert.equal(res.health, null);
    assert.match(res.healthOff ?? '', new RegExp(`127\\.0\\.0\\.1:${busy.port} is in use \\(EADDRINUSE\\)`));
    assert.match(formatStatus(res), /health endpoint: {2}off: 127\.0\.0\.1:\d+ is in use \(EADDRINUSE\): another daemon/);
  } finally {
    await server.stop();
    busy.server.close();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('status says the health endpoint is off because the configuration disables it', { timeout: 60_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-order-'));
  const server = await startServer(configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { enabled: false } }), { logger: nullLogger() });
  try {
    const { callControl } = await import('../daemon/ops/control-socket.js');
    const { dataPaths } = await import('../daemon/main/config.js');
    const res = (await callControl(dataPaths(dataDir).controlSocket, 'status', {}))!.result as ReturnType<typeof statusReport>;
    assert.match(res.healthOff ?? '', /disabled in the configuration/);
  } finally {
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('mail-retry log lines name the SMTP host and port', { timeout: 30_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'commusic-order-'));
  const closed = await busyPort();
  const port = closed.port;
  await new Promise<void>((r) => closed.server.close(() => r())); // nothing listens there now
  const lines: Record<string, unknown>[] = [];
  const mailer = await AlertMailer.open({
    dataDir: dir,
    logger: captureLogger(lines),
    config: { to: ['ops@example.test'], smtp: { host: '127.0.0.1', port, requireTLS: false, timeout: '2s' }, groupInterval: '1h', retry: { initial: '1h', max: '1h' } },
  });
  try {
    await mailer.alert({ group: 'outage', kind: 'monitor-outage', severity: 'critical', subject: 'test', lines: ['x'] });
    const deadline = Date.now() + 20_000;
    while (!lines.some((l) => l['event'] === 'mail-retry') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const retry = lines.find((l) => l['event'] === 'mail-retry');
    assert.ok(retry, 'a mail-retry line');
    assert.equal(retry['smtp'], `127.0.0.1:${port}`);
  } finally {
    await mailer.close();
    await rm(dir, { recursive: true, force: true });
  }
});
