/**
 * Issue 6, points 4-6: one of three destinations down (the other two receive the archives, an
 * alert reaches a real SMTP server, the retry and the next run fill the gap); retention keeps
 * exactly the configured generations (injected clock, 120 nights); premium and federation clubs
 * get the nightly mail only after their data changed, basic clubs never, and the mailed archive
 * opens with the club's passphrase and nothing else. Also the over-size notice.
 */
import { serverOpenKey } from '../storage/backup/archive-keys.js';
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { AuditLog } from '../storage/club/audit-log.js';
import { archiveTrust, newClubBackupKey, serverArchiveKey, setClubBackupSettings, verifyArchive } from '../storage/backup/backup-archive.js';
import { BackupService } from '../daemon/backup/backup-service.js';
import { AlertMailer } from '../daemon/mail/mailer.js';
import { addDocument, addPerson, makeClubs, newStorage } from './backup-helpers.js';
import { startSmtpSink, type ReceivedMail } from './helpers/smtp-sink.js';
import { tmpDir } from './store-helpers.js';

const tmp = tmpDir('commusic-backup-svc-');
after(() => tmp.cleanup());

/** The base64 attachment of a multipart mail. */
function attachmentOf(m: ReceivedMail): Buffer | undefined {
  const boundary = /boundary="?([^";\r\n]+)"?/i.exec(m.raw)?.[1];
  if (!boundary) return undefined;
  for (const part of m.raw.split(`--${boundary}`)) {
    const split = part.search(/\r?\n\r?\n/);
    const headers = part.slice(0, split);
    if (!/content-disposition:\s*attachment/i.test(headers)) continue;
    return Buffer.from(part.slice(split).replace(/\s+/g, ''), 'base64');
  }
  return undefined;
}

async function mailerFor(dataDir: string, port: number): Promise<AlertMailer> {
  return AlertMailer.open({ dataDir, config: { to: ['ops@example.test'], smtp: { host: '127.0.0.1', port, requireTLS: false, timeout: '3s' }, groupInterval: '1s', retry: { initial: '100ms', max: '1s' } } });
}

describe('backup service', { timeout: 120_000 }, () => {
  it('one of three destinations down: the other two receive, an alert is mailed, the retry and the next run fill the gap', async () => {
    const smtp = await startSmtpSink();
    const dir = join(tmp.dir, 'down');
    const st = await newStorage(join(dir, 'data'));
    const mailer = await mailerFor(st.dataDir, smtp.port);
    try {
      const clubs = await makeClubs(st, 4);
      for (const c of clubs) for (let i = 0; i < 20; i++) addPerson(st, c, i);
      await addDocument(st, clubs[0]!, randomBytes(200_000));
      mkdirSync(join(dir, 'site-c-parent'));
      writeFileSync(join(dir, 'site-c-parent', 'c'), 'not a folder: the mount is gone');
      const config = {
        destinations: [
          { name: 'site-a', kind: 'local' as const, path: join(dir, 'a') },
          { name: 'site-b', kind: 'local' as const, path: join(dir, 'b') },
          { name: 'site-c', kind: 'local' as const, path: join(dir, 'site-c-parent', 'c') },
        ],
        parallelism: 2,
      };
      const stored: string[] = [];
      const svc = new BackupService({ storage: st, config, mailer, onStored: (d) => stored.push(d) });
      const r1 = await svc.runNightly();
      assert.equal(r1.ok, 4);
      assert.equal(r1.destinations['site-a']!.stored, 4);
      assert.equal(r1.destinations['site-b']!.stored, 4);
      assert.equal(r1.destinations['site-c']!.stored, 0);
      assert.ok(r1.destinations['site-c']!.down, 'site-c reported down');
      assert.equal((await svc.destination('site-a').list()).length, 4);
      assert.equal((await svc.destination('site-b').list()).length, 4);
      assert.equal(svc.gaps().length, 4);
      assert.deepEqual(svc.lastBackups().map(([d]) => d).sort(), ['site-a', 'site-b']);
      assert.ok(stored.includes('site-a') && !stored.includes('site-c'));
      await mailer.flush();
      await smtp.waitFor((m) => m.some((x) => /backup destination site-c is down/.test(x.subject)));
      const alert = smtp.mails.find((x) => /site-c is down/.test(x.subject))!;
      assert.deepEqual(alert.to, ['ops@example.test']);
      assert.match(alert.body, /site-a: 4, site-b: 4/);
      // The mount comes back: the retry fills the gap.
      rmSync(join(dir, 'site-c-parent', 'c'));
      const retry = await svc.retryGaps();
      assert.deepEqual(retry, { filled: 4, remaining: 0 });
      const inC = await svc.destination('site-c').list();
      assert.deepEqual(inC.map((a) => a.clubId).sort(), [...clubs].sort());
      const key = { ...serverOpenKey(st), trust: archiveTrust(st) };
      for (const a of inC) assert.equal((await verifyArchive(await svc.destination('site-c').get(a.name), key)).ok, true);
      // And the next nightly run stores everywhere again.
      const r2 = await svc.runNightly();
      for (const d of ['site-a', 'site-b', 'site-c']) assert.equal(r2.destinations[d]!.stored, 4, d);
      assert.equal(svc.gaps().length, 0);
      await svc.close();
    } finally {
      await mailer.close();
      await smtp.close();
      st.close();
    }
  });

  it('retention keeps exactly the configured generations (120 nights, injected clock)', async () => {
    const st = await newStorage(join(tmp.dir, 'retention'));
    const [club] = await makeClubs(st, 1);
    addPerson(st, club!, 1);
    let now = new Date('2024-01-01T02:30:00Z');
    const svc = new BackupService({
      storage: st,
      now: () => now,
      config: { destinations: [{ name: 'local', kind: 'local', path: join(tmp.dir, 'retention-backups') }], retention: { daily: 5, weekly: 3, monthly: 4 } },
    });
    for (let day = 0; day < 120; day++) {
      now = new Date(Date.UTC(2024, 0, 1 + day, 2, 30));
      await svc.runNightly({ mail: false });
    }
    const kept = (await svc.destination('local').list()).map((a) => a.time.toISOString().slice(0, 10)).sort();
    // Last night is Monday 2024-04-29. Daily 5: 04-25..04-29. Weekly 3 (ISO weeks, newest of
    // each): 04-29 (week 18), 04-28 (Sunday, week 17), 04-21 (week 16). Monthly 4: 04-29,
    // 03-31, 02-29, 01-31.
    assert.deepEqual(kept, ['2024-01-31', '2024-02-29', '2024-03-31', '2024-04-21', '2024-04-25', '2024-04-26', '2024-04-27', '2024-04-28', '2024-04-29']);
    await svc.close();
    st.close();
  });

  it('premium and federation clubs get the nightly mail only after a change; basic never; the archive opens with the passphrase only', async () => {
    const smtp = await startSmtpSink();
    const st = await newStorage(join(tmp.dir, 'mail'));
    const mailer = await mailerFor(st.dataDir, smtp.port);
    try {
      const [p1, p2] = await makeClubs(st, 2, 'premium', 'Premium');
      const [fed] = await makeClubs(st, 1, 'federation', 'Federation');
      const [basic] = await makeClubs(st, 1, 'basic', 'Basic');
      const [nokey] = await makeClubs(st, 1, 'premium', 'NoKey');
      const pass: Record<string, string> = {};
      for (const c of [p1!, p2!, fed!, basic!]) {
        pass[c] = `passphrase of ${c} ${randomBytes(4).toString('hex')}`;
        setClubBackupSettings(st, c, { passphrase: await newClubBackupKey(pass[c]!, { log2N: 12 }), emails: [`board@${c}.example.test`, `chair@${c}.example.test`] });
        for (let i = 0; i < 10; i++) addPerson(st, c, i);
      }
      setClubBackupSettings(st, nokey!, { emails: ['x@nokey.example.test'] });
      const svc = new BackupService({ storage: st, mailer, config: { destinations: [{ name: 'local', kind: 'local', path: join(tmp.dir, 'mail-backups') }] } });
      const clubMails = () => smtp.mails.filter((m) => /nightly backup of/.test(m.subject));
      // Night 1: no mail was ever sent, so every premium/federation club with a passphrase gets one.
      const r1 = await svc.runNightly();
      assert.deepEqual(r1.mail.sent.sort(), [p1!, p2!, fed!].sort());
      assert.deepEqual(r1.mail.noPassphrase, [nokey!]);
      await mailer.flush();
      await smtp.waitFor(() => clubMails().length >= 3);
      const m1 = clubMails().find((m) => m.to.includes(`board@${p1}.example.test`))!;
      assert.deepEqual(m1.to.sort(), [`board@${p1}.example.test`, `chair@${p1}.example.test`]);
      assert.equal(smtp.mails.filter((m) => m.to.some((t) => t.includes(basic!))).length, 0, 'basic club: nothing');
      // The attachment opens with the club's passphrase and nothing else.
      const att = attachmentOf(m1)!;
      assert.ok(att && att.length > 100);
      const rep = await verifyArchive(Readable.from([att]), { passphrase: pass[p1!]!, trust: archiveTrust(st) });
      assert.equal(rep.clubId, p1);
      assert.equal(rep.tables['persons'], 10);
      await assert.rejects(verifyArchive(Readable.from([att]), { passphrase: pass[p2!]! }), { code: 'WRONG_PASSPHRASE' });
      await assert.rejects(verifyArchive(Readable.from([att]), { serverKey: serverArchiveKey(st) }), { code: 'WRONG_PASSPHRASE' });
      await assert.rejects(verifyArchive(Readable.from([att]), {}), { code: 'WRONG_PASSPHRASE' });
      // Night 2: only p1 changed. A login (change-log entry and lastLogin) in p2 is no data change.
      addPerson(st, p1!, 100);
      const db2 = st.openClub(p2!).db;
      db2.transaction(() => {
        db2.prepare("UPDATE users SET lastLogin = '2030-01-01T00:00:00Z'").run();
        new AuditLog(db2, p2!).append({ user: 'admin', ip: '127.0.0.1', session: 's', action: 'login', entity: null, recordId: null, changes: null });
      })();
      const before = clubMails().length;
      const r2 = await svc.runNightly();
      assert.deepEqual(r2.mail.sent, [p1!]);
      assert.deepEqual(r2.mail.unchanged.sort(), [p2!, fed!].sort());
      await mailer.flush();
      await smtp.waitFor(() => clubMails().length >= before + 1);
      // Structural, not a wait: flush() has delivered everything queued (the outbox is empty),
      // and the SMTP sink records a mail before it answers 250, so no further mail can arrive.
      assert.equal(mailer.outboxLength, 0, 'nothing left to deliver');
      assert.equal(clubMails().length, before + 1);
      const m2 = clubMails().at(-1)!;
      assert.ok(m2.to.includes(`board@${p1}.example.test`));
      assert.equal((await verifyArchive(Readable.from([attachmentOf(m2)!]), { passphrase: pass[p1!]!, trust: archiveTrust(st) })).tables['persons'], 11);
      // Night 3: nothing changed: no club mail at all.
      const r3 = await svc.runNightly();
      assert.deepEqual(r3.mail.sent, []);
      await svc.close();
      // Over the size limit: a notice to the club, an alert to the operator, no attachment.
      await addDocument(st, fed!, randomBytes(50_000));
      const small = new BackupService({ storage: st, mailer, config: { destinations: [{ name: 'local', kind: 'local', path: join(tmp.dir, 'mail-backups') }], mail: { maxBytes: 4096 } } });
      const r4 = await small.runNightly();
      assert.deepEqual(r4.mail.tooLarge, [fed!]);
      await mailer.flush();
      await smtp.waitFor((ms) => ms.some((m) => /too large for e-mail/.test(m.subject)) && ms.some((m) => /over the size limit/.test(m.subject)));
      const notice = smtp.mails.find((m) => /too large for e-mail/.test(m.subject))!;
      assert.ok(notice.to.includes(`board@${fed}.example.test`));
      assert.equal(attachmentOf(notice), undefined);
      assert.deepEqual(smtp.mails.find((m) => /over the size limit/.test(m.subject))!.to, ['ops@example.test']);
      await small.close();
    } finally {
      await mailer.close();
      await smtp.close();
      st.close();
    }
  });
});
