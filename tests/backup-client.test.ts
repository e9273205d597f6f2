/**
 * Client commands: the club administrator sets the backup passphrase (the server keeps only its
 * public key); a user with backups:export downloads an archive sealed with it, which opens with
 * the passphrase and nothing else; a user without the right is refused and reported; replacing
 * the passphrase needs the current one. Over TCP too (streamed download with flow control).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { registerBackupCommands } from '../daemon/backup/backup-commands.js';
import { archiveTrust, clubBackupSettings, serverArchiveKey, verifyArchive } from '../storage/backup/backup-archive.js';
import { addPerson } from './backup-helpers.js';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv } from './helpers/club-server.js';

let env: ClubTestEnv;
before(async () => {
  env = await clubEnv();
  registerBackupCommands(env.dispatcher, env.services, { passphraseLog2N: 12 });
});
after(async () => env.close());

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

describe('backup client commands', { timeout: 60_000 }, () => {
  it('passphrase by the administrator, download with the backups right, opens with the passphrase only', async () => {
    const club = await env.newClub();
    for (let i = 0; i < 12; i++) addPerson(env.storage, club, i);
    const admin = env.session();
    await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    assert.equal(await admin.code('backup.download'), 'CONFLICT', 'no passphrase yet');
    const pass = 'our club backup passphrase';
    await admin.call('backup.setPassphrase', { passphrase: pass, emails: ['board@club.example.test'] });
    const stored = clubBackupSettings(env.storage, club);
    assert.ok(stored.passphrase?.publicKey);
    assert.ok(!JSON.stringify(env.storage.server.mustGetClub(club).settings).includes(pass), 'the passphrase is not stored');
    assert.equal(await admin.code('backup.setPassphrase', { passphrase: 'another long passphrase' }), 'FORBIDDEN', 'replacing needs the current one');
    const r = await admin.call('backup.download');
    assert.equal(r.payload.clubId, club);
    const bytes = await collect(r.download!);
    const rep = await verifyArchive(Readable.from([bytes]), { passphrase: pass, trust: archiveTrust(env.storage) });
    assert.equal(rep.tables['persons'], 12);
    await assert.rejects(verifyArchive(Readable.from([bytes]), { passphrase: 'not the passphrase!!' }), { code: 'WRONG_PASSPHRASE' });
    await assert.rejects(verifyArchive(Readable.from([bytes]), { serverKey: serverArchiveKey(env.storage) }), { code: 'WRONG_PASSPHRASE' });
    // A member without the backups right: refused and reported as a rights violation.
    await admin.call('users.create', { username: 'member1', password: 'Member-Password-1', role: 'member' });
    const member = env.session('127.0.0.9');
    await member.call('auth.login', { club, user: 'member1', password: 'Member-Password-1' });
    const before = env.violations.length;
    assert.equal(await member.code('backup.download'), 'FORBIDDEN');
    assert.equal(await member.code('backup.setPassphrase', { passphrase: 'member passphrase here' }), 'FORBIDDEN');
    assert.ok(env.violations.slice(before).some((v) => v.kind === 'rights' && v.ip === '127.0.0.9'));
    // Replacing with the current passphrase works; the old one no longer opens new archives.
    await admin.call('backup.setPassphrase', { passphrase: 'a brand new passphrase', currentPassphrase: pass });
    const b2 = await collect((await admin.call('backup.download')).download!);
    await assert.rejects(verifyArchive(Readable.from([b2]), { passphrase: pass, trust: archiveTrust(env.storage) }), { code: 'WRONG_PASSPHRASE' });
    assert.equal((await verifyArchive(Readable.from([b2]), { passphrase: 'a brand new passphrase', trust: archiveTrust(env.storage) })).clubId, club);
    assert.deepEqual((await admin.call('backup.status')).payload.emails, ['board@club.example.test']);
  });
});
