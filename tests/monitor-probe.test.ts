import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { configSchema } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { AlertMailer } from '../daemon/mail/mailer.js';
import { Monitor, parseTargets, type MonitorEvent } from '../daemon/monitoring/monitor.js';
import { Daemon } from '../daemon/edge/server.js';
import { testIdentity } from './helpers/pair.js';
import { startSmtpSink } from './helpers/smtp-sink.js';

/**
 * Issue 7, point 1: the probe against a running daemon records success; stopping the daemon
 * sends exactly one outage mail (through the real alert mailer to a real SMTP server) after the
 * configured number of failures; starting it again with the same identity on the same port
 * sends exactly one recovery mail.
 */
const INTERVAL = 200;
const FAILURES = 3;
const execFileP = promisify(execFile);
const CTL = join(import.meta.dirname, '..', 'bin', 'commusicctl.js');

async function startAt(dataDir: string, listen: string): Promise<Daemon> {
  return Daemon.start({ config: configSchema.parse({ dataDir, listen, logLevel: 'error' }), identity: testIdentity(), logger: nullLogger() });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

test('probe, outage and recovery: exactly one mail each, through a real SMTP server', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'commusic-monitor-'));
  const smtp = await startSmtpSink();
  let daemon: Daemon | undefined = await startAt(dir, '127.0.0.1:0');
  const port = daemon.address().port;
  const mailer = await AlertMailer.open({
    dataDir: join(dir, 'monitor'),
    config: { to: ['service@example.org'], from: 'monitor@example.org', serverName: 'probe-test', smtp: { host: '127.0.0.1', port: smtp.port, requireTLS: false } },
    logger: nullLogger(),
  });
  const events: MonitorEvent[] = [];
  const monitor = new Monitor({
    targets: parseTargets(`127.0.0.1:${port}`, testIdentity().fingerprint),
    intervalMs: INTERVAL,
    failures: FAILURES,
    timeoutMs: 150,
    site: 'site-a',
    sink: mailer,
    onProbe: (e) => events.push(e),
  });
  try {
    monitor.start();
    await until(() => events.filter((e) => e.result.ok).length >= 2, 5000, 'two successful probes');
    assert.equal(monitor.state(`127.0.0.1:${port}`)!.status, 'up');
    assert.ok(daemon.stats.established >= 2, 'each probe made a real handshake');
    assert.ok((daemon.stats.requests.get('ping:ok') ?? 0) >= 2, 'and a real ping');
    assert.equal(smtp.mails.length, 0, 'no mail while all is well');

    // Outage.
    await daemon.stop(0);
    daemon = undefined;
    const stoppedAt = events.length;
    await smtp.waitFor((m) => m.length >= 1, 10_000);
    const failedBeforeMail = events.slice(stoppedAt).filter((e) => !e.result.ok).length;
    assert.ok(failedBeforeMail >= FAILURES, `mail only after ${FAILURES} failures (saw ${failedBeforeMail})`);
    const outage = smtp.mails[0]!;
    assert.match(outage.subject, /CRITICAL: server 127\.0\.0\.1:\d+ UNREACHABLE from site-a \(3 failed probes\)/);
    assert.match(outage.body, /Last error: +CONNECT_FAILED/);
    assert.deepEqual(outage.to, ['service@example.org']);
    // Let many more failed probes happen: still one mail.
    const n0 = events.length;
    await until(() => events.length >= n0 + 6, 5000, 'six more failed probes');
    assert.equal(smtp.mails.length, 1, 'exactly one outage mail');

    // Recovery: same identity, same port.
    daemon = await startAt(dir, `127.0.0.1:${port}`);
    await smtp.waitFor((m) => m.length >= 2, 10_000);
    const recovery = smtp.mails[1]!;
    assert.match(recovery.subject, /INFO: server 127\.0\.0\.1:\d+ reachable again from site-a/);
    const n1 = events.length;
    await until(() => events.length >= n1 + 5, 5000, 'five more probes');
    assert.ok(events.slice(n1).every((e) => e.result.ok));
    await mailer.flush();
    assert.equal(smtp.mails.length, 2, 'exactly one recovery mail, nothing else');
    assert.equal(mailer.outboxLength, 0);
  } finally {
    await monitor.stop();
    await mailer.close();
    await daemon?.stop(0);
    await smtp.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('commusicctl monitor --once: exit 0 when the target answers, 2 when it does not; wrong fingerprint fails', { timeout: 30_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'commusic-monitor-cli-'));
  const daemon = await startAt(dir, '127.0.0.1:0');
  const port = daemon.address().port;
  try {
    const ok = await execFileP(process.execPath, [CTL, 'monitor', '--once', '--json', '--target', `127.0.0.1:${port}`, '--fingerprint', testIdentity().fingerprint, '--interval', '2s']);
    const line = JSON.parse(ok.stdout.trim()) as { ok: boolean; status: string; target: string };
    assert.equal(line.ok, true);
    assert.equal(line.status, 'up');
    const wrong = await execFileP(process.execPath, [CTL, 'monitor', '--once', '--target', `127.0.0.1:${port}`, '--fingerprint', '00'.repeat(32), '--interval', '2s']).then(
      () => ({ code: 0, stdout: '' }),
      (e: { code: number; stdout: string }) => e,
    );
    assert.equal(wrong.code, 1);
    assert.match(wrong.stdout, /FAILED .*SERVER_KEY_MISMATCH/);
  } finally {
    await daemon.stop(0);
  }
  const down = await execFileP(process.execPath, [CTL, 'monitor', '--once', '--target', `127.0.0.1:${port}`, '--fingerprint', testIdentity().fingerprint, '--interval', '2s']).then(
    () => ({ code: 0, stdout: '' }),
    (e: { code: number; stdout: string }) => e,
  );
  assert.equal(down.code, 1);
  assert.match(down.stdout, /FAILED .*CONNECT_FAILED/);
  await rm(dir, { recursive: true, force: true });
});
