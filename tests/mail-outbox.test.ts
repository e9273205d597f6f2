import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { AlertMailer, MailerConfigSchema, type Alert, type MailerConfig } from '../daemon/mail/mailer.js';
import { startSmtpSink } from './helpers/smtp-sink.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-outbox-'));
  dirs.push(d);
  return d;
}
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A loopback port nobody listens on (for "SMTP down"); the sink later binds it. */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function smtpConfig(port: number, extra: Partial<MailerConfig> = {}): MailerConfig {
  return {
    to: ['service@example.test', 'oncall@example.test'],
    from: 'alerts@example.test',
    smtp: { host: '127.0.0.1', port, requireTLS: false, timeout: '3s' },
    groupInterval: '1h', // digests only on flush(), so the test decides when
    retry: { initial: 20, max: 200 },
    ...extra,
  };
}

const alerts: Alert[] = [
  { group: 'ban', kind: 'ban', severity: 'warning', subject: 'banned 127.0.30.1 (http)', lines: ['http: GET /'], sources: ['127.0.30.1'], violations: 1 },
  { group: 'ban', kind: 'ban', severity: 'warning', subject: 'banned 127.0.30.2 (tls)', lines: ['tls: ClientHello'], sources: ['127.0.30.2'], violations: 1 },
  { group: 'ban', kind: 'ban', severity: 'warning', subject: 'banned 127.0.30.3 (login)', lines: ['login: 5 failures'], sources: ['127.0.30.3'], violations: 5 },
  { group: 'key-file', kind: 'key-file', severity: 'critical', subject: 'master key file permissions changed', lines: ['mode 0644, expected 0600'] },
  { group: 'outage', kind: 'monitor-outage', severity: 'critical', subject: 'server b unreachable from probe 2', lines: ['3 probes failed'] },
];

test('SMTP down while alerts happen, restart, SMTP back: every alert delivered exactly once', { timeout: 60_000 }, async () => {
  const dir = tempDir();
  const port = await freePort();

  // Run 1: SMTP is down. The first alert of each group is queued as a mail of its own, the
  // other two bans are gathered for the group's digest; delivery fails (connection refused).
  const m1 = await AlertMailer.open({ dataDir: dir, config: smtpConfig(port) });
  for (const a of alerts) await m1.alert(a);
  assert.equal(m1.outboxLength, 3);
  assert.equal(m1.gatheredLength, 2);
  const queueDir = path.join(dir, 'outbox', 'queue');
  const attemptsOnDisk = () =>
    fs
      .readdirSync(queueDir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => (JSON.parse(fs.readFileSync(path.join(queueDir, f), 'utf8')) as { attempts: number }).attempts);
  for (let i = 0; i < 200 && !attemptsOnDisk().some((n) => n >= 1); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(attemptsOnDisk().some((n) => n >= 1), 'a failed attempt is recorded on disk');
  await m1.close(); // the daemon stops with 3 mails queued and 2 alerts gathered
  assert.equal(attemptsOnDisk().length, 3);
  assert.equal(fs.readdirSync(path.join(dir, 'outbox', 'gather')).length, 2);

  // Run 2: SMTP is back on the same port; the restarted mailer resends from the outbox.
  const smtp = await startSmtpSink({ port });
  try {
    const m2 = await AlertMailer.open({ dataDir: dir, config: smtpConfig(port) });
    await smtp.waitFor((m) => m.length >= 4, 10_000);
    await m2.flush();
    assert.equal(m2.outboxLength, 0);
    await m2.close();

    // Run 3: nothing left, nothing resent.
    const m3 = await AlertMailer.open({ dataDir: dir, config: smtpConfig(port) });
    await m3.flush();
    await m3.close();

    assert.equal(smtp.mails.length, 4, 'three first alerts and one digest of the two gathered bans');
    assert.equal(smtp.mails.filter((m) => /digest, 2 alerts, 2 sources, 6 violations/.test(m.subject)).length, 1);
    for (const a of alerts) {
      const hits = smtp.mails.filter((m) => m.body.includes(a.subject));
      assert.equal(hits.length, 1, `"${a.subject}" delivered once (got ${hits.length})`);
    }
    assert.equal(new Set(smtp.mails.map((m) => m.messageId)).size, smtp.mails.length);
    for (const m of smtp.mails) assert.deepEqual(m.to, ['service@example.test', 'oncall@example.test']);
  } finally {
    await smtp.close();
  }
});

test('temporary refusals (451) are retried with backoff until accepted, once', { timeout: 30_000 }, async () => {
  const dir = tempDir();
  let refusals = 3;
  const smtp = await startSmtpSink({ refuse: () => (refusals-- > 0 ? 451 : undefined) });
  const m = await AlertMailer.open({ dataDir: dir, config: smtpConfig(smtp.port) });
  try {
    await m.alert(alerts[3]!);
    await smtp.waitFor((mails) => mails.length >= 1, 10_000);
    await m.flush();
    assert.equal(smtp.mails.length, 1);
    assert.equal(m.outboxLength, 0);
    assert.ok(refusals < 0, 'the server refused three times first');
  } finally {
    await m.close();
    await smtp.close();
  }
});

test('without SMTP (embedded default) alerts become .eml files in outbox/sent-local and are logged', async () => {
  const dir = tempDir();
  const logged: string[] = [];
  const { default: winston } = await import('winston');
  const { Writable } = await import('node:stream');
  const logger = winston.createLogger({
    format: winston.format.json(),
    transports: [new winston.transports.Stream({ stream: new Writable({ write(c, _e, cb) { logged.push(String(c)); cb(); } }) })],
  });
  const m = await AlertMailer.open({ dataDir: dir, logger, config: { groupInterval: '1h' } });
  for (const a of alerts) await m.alert(a);
  await m.flush();
  await m.close();
  logger.close();
  const sent = path.join(dir, 'outbox', 'sent-local');
  const files = fs.readdirSync(sent);
  assert.equal(files.length, 4);
  const all = files.map((f) => fs.readFileSync(path.join(sent, f), 'utf8')).join('\n');
  for (const ip of ['127.0.30.1', '127.0.30.2', '127.0.30.3']) assert.ok(all.includes(ip), ip);
  assert.match(all, /^Subject: .*key file/m);
  assert.equal(fs.readdirSync(path.join(dir, 'outbox', 'queue')).length, 0);
  assert.equal(logged.filter((l) => l.includes('"event":"mail-local"')).length, 4);
  for (const f of files) assert.equal(fs.statSync(path.join(sent, f)).mode & 0o777, 0o600);
});

test('config is validated: SMTP needs recipients, durations parse', async () => {
  const dir = tempDir();
  await assert.rejects(AlertMailer.open({ dataDir: dir, config: { smtp: { host: 'localhost' } } }));
  await assert.rejects(AlertMailer.open({ dataDir: dir, config: { to: ['not an address'] } }));
  await assert.rejects(AlertMailer.open({ dataDir: dir, config: { groupInterval: 'soon' } }));
  const m = await AlertMailer.open({ dataDir: dir, config: { groupInterval: '2m', retry: { initial: '10s', max: '10m' } } });
  assert.equal(m.settings.groupInterval, 120_000);
  assert.equal(m.settings.smtp, undefined);
  const withSmtp = MailerConfigSchema.parse({ to: ['a@example.test'], smtp: { host: 'mail.example.test' } });
  assert.equal(withSmtp.smtp?.requireTLS, true, 'STARTTLS required by default');
  assert.equal(withSmtp.smtp?.rejectUnauthorized, true);
  assert.equal(withSmtp.smtp?.port, 587);
  await m.close();
});
