import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { wireBanAlerts } from '../daemon/bans/ban-alerts.js';
import { BanEngine } from '../daemon/bans/ban-engine.js';
import { AlertMailer } from '../daemon/mail/mailer.js';
import { ViolationBus, type ViolationKind } from '../daemon/bans/violations.js';
import { BanStore } from '../storage/bans/ban-store.js';
import { startSmtpSink } from './helpers/smtp-sink.js';

test('a flood of 1,000 violations from 50 addresses: all 50 banned, a handful of mails naming each', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'commusic-flood-'));
  const smtp = await startSmtpSink();
  const table = BanStore.openInDir(dir);
  const bus = new ViolationBus();
  const engine = new BanEngine({ table, bus, purgeEvery: 0 });
  const mailer = await AlertMailer.open({
    dataDir: dir,
    config: {
      to: ['service@example.test'],
      from: 'ComMusic <alerts@example.test>',
      smtp: { host: '127.0.0.1', port: smtp.port, requireTLS: false, timeout: '5s' },
      groupInterval: '1s',
      serverName: 'test-1',
    },
  });
  const unwire = wireBanAlerts(engine, mailer);
  try {
    const addresses = Array.from({ length: 50 }, (_, i) => `127.0.20.${i + 1}`);
    const kinds: ViolationKind[] = ['http', 'tls', 'garbage', 'login', 'handshake', 'silent', 'rights'];
    const t0 = Date.now();
    for (let n = 0; n < 1000; n++) {
      const ip = addresses[n % 50]!;
      const kind = kinds[(n * 7 + Math.floor(n / 50)) % kinds.length]!;
      bus.report({ ip, kind, time: t0 + n, detail: `flood ${kind} #${n}`, user: kind === 'rights' ? 'mallory' : undefined, club: kind === 'rights' ? 'mv-13' : undefined });
    }
    for (const ip of addresses) assert.ok(table.check(ip, Date.now()), `${ip} banned`);
    assert.equal(table.list(Date.now()).length, 50);
    const counted = table.list(Date.now()).reduce((s, b) => s + b.violationCount, 0);
    assert.equal(counted, 1000, 'every violation counted against its ban');

    const floodMs = Date.now() - t0;
    // The real grouping timers: the first ban is mailed at once, the other 49 in digests at the
    // end of each 1 s interval: one digest when the flood fits in one interval, more when a
    // loaded machine stretches it. Wait for the condition (every source named in a digest),
    // never for a time.
    const named = (ip: string) => smtp.mails.some((m) => new RegExp(`\\b${ip.replace(/\./g, '\\.')}\\b`).test(m.body));
    const digestSources = () =>
      smtp.mails.filter((m) => /digest/.test(m.subject)).reduce((n, m) => n + Number(/(\d+) sources/.exec(m.subject)?.[1] ?? 0), 0);
    await smtp.waitFor(() => addresses.every(named) && digestSources() === 49, 45_000);
    await mailer.flush();
    const intervals = Math.ceil(floodMs / 1000) + 1;
    assert.ok(smtp.mails.length >= 2 && smtp.mails.length <= 1 + intervals + 1, `${smtp.mails.length} mails for a flood of ${floodMs} ms`);
    for (const ip of addresses) assert.ok(named(ip), `${ip} named in a mail`);
    assert.ok(smtp.mails.some((m) => /digest/.test(m.subject)), 'a digest was sent');
    assert.equal(digestSources(), 49, 'the digests name the other 49 sources between them');
    assert.deepEqual(smtp.mails[0]!.to, ['service@example.test']);
    assert.equal(new Set(smtp.mails.map((m) => m.messageId)).size, smtp.mails.length);
    assert.equal(mailer.outboxLength, 0);
    for (const m of smtp.mails) assert.doesNotMatch(m.raw, /pass(word)?=|BEGIN .*PRIVATE KEY/i);
  } finally {
    unwire();
    engine.close();
    await mailer.close();
    table.close();
    await smtp.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
