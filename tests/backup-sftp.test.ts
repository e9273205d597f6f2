/**
 * The SFTP destination against a real OpenSSH server (Debian's openssh-server, started here on
 * 127.0.0.1 with a temporary host key and authorized key): atomic put with read-back, list,
 * get + verify + restore, delete, a wrong pinned host key refused, and an SFTP site that goes
 * down (sshd stopped) while a local site keeps receiving, filled in by the retry.
 */
import { serverOpenKey } from '../storage/backup/archive-keys.js';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { archiveTrust, verifyArchive, restoreClubArchive } from '../storage/backup/backup-archive.js';
import { BackupService } from '../daemon/backup/backup-service.js';
import { SftpDestination } from '../daemon/backup/backup-destinations.js';
import { addDocument, addPerson, documentHashes, dumpClub, makeClubs, newStorage } from './backup-helpers.js';
import { sshdMissing, startSshd, type Sshd } from './helpers/sshd.js';
import { tmpDir } from './store-helpers.js';

const missing = sshdMissing();
const tmp = tmpDir('commusic-backup-sftp-');
let sshd: Sshd | undefined;

describe('SFTP backup destination', { skip: missing ? `${missing} (the CI script installs it when run as root)` : false, timeout: 90_000 }, () => {
  before(async () => {
    sshd = await startSshd(join(tmp.dir, 'sshd'));
  });
  after(async () => {
    await sshd?.stop();
    tmp.cleanup();
  });

  const sftpCfg = (over: Record<string, unknown> = {}) => ({
    name: 'offsite',
    kind: 'sftp' as const,
    host: '127.0.0.1',
    port: sshd!.port,
    username: sshd!.user,
    privateKeyFile: sshd!.clientKeyFile,
    path: join(tmp.dir, 'remote'),
    hostKeySha256: `SHA256:${sshd!.hostKeySha256}`,
    timeoutMs: 5_000,
    ...over,
  });

  it('stores, lists, reads back, restores and deletes over SFTP; a wrong host key is refused', async () => {
    const st = await newStorage(join(tmp.dir, 'data'));
    const [club] = await makeClubs(st, 1);
    for (let i = 0; i < 30; i++) addPerson(st, club!, i);
    await addDocument(st, club!, randomBytes(400_000));
    const before = dumpClub(st, club!);
    const hashes = await documentHashes(st, club!);
    const svc = new BackupService({ storage: st, config: { destinations: [sftpCfg()] } });
    const r = await svc.runNightly({ mail: false });
    assert.equal(r.destinations['offsite']!.stored, 1, JSON.stringify(r));
    const list = await svc.destination('offsite').list();
    assert.equal(list.length, 1);
    assert.deepEqual(readdirSync(join(tmp.dir, 'remote', club!)).filter((f) => f.includes('.tmp-')), [], 'no temporary files left');
    const key = { ...serverOpenKey(st), trust: archiveTrust(st) };
    assert.equal((await verifyArchive(await svc.destination('offsite').get(list[0]!.name), key)).clubId, club);
    for (let i = 0; i < 5; i++) addPerson(st, club!, 100 + i);
    await restoreClubArchive(st, club!, await svc.destination('offsite').get(list[0]!.name), key, { yes: true });
    assert.deepEqual(dumpClub(st, club!, { skipAuditAfter: (before['audit_log'] as unknown[]).length }), before);
    assert.deepEqual(await documentHashes(st, club!), hashes);
    await svc.destination('offsite').delete(list[0]!.name);
    assert.equal((await svc.destination('offsite').list()).length, 0);
    await svc.close();
    const wrong = new SftpDestination({ ...sftpCfg({ hostKeySha256: 'SHA256:' + randomBytes(32).toString('base64').replace(/=+$/, '') }), port: sshd!.port, timeoutMs: 5_000 });
    await assert.rejects(wrong.list(), { code: 'DESTINATION_FAILED' });
    await wrong.close();
    st.close();
  });

  it('an SFTP site that is down does not stop the local site; the retry fills the gap', async () => {
    const st = await newStorage(join(tmp.dir, 'data2'));
    const clubs = await makeClubs(st, 3);
    for (const c of clubs) addPerson(st, c, 1);
    const svc = new BackupService({ storage: st, config: { destinations: [{ name: 'local', kind: 'local', path: join(tmp.dir, 'local2') }, sftpCfg({ path: join(tmp.dir, 'remote2') })] } });
    await sshd!.stop();
    // Count the tries at the dead site instead of timing the run.
    const offsite = svc.destination('offsite');
    const put = offsite.put.bind(offsite);
    let tries = 0;
    offsite.put = (...a) => {
      tries++;
      return put(...a);
    };
    const r = await svc.runNightly({ mail: false });
    assert.equal(r.destinations['local']!.stored, 3);
    assert.equal(r.destinations['offsite']!.stored, 0);
    assert.ok(r.destinations['offsite']!.down);
    assert.ok(tries >= 1 && tries < clubs.length, `a dead site is tried once per parallel slot, not once per club (${tries} tries)`);
    offsite.put = put;
    await sshd!.start();
    assert.deepEqual(await svc.retryGaps(), { filled: 3, remaining: 0 });
    assert.equal((await svc.destination('offsite').list()).length, 3);
    await svc.close();
    st.close();
  });
});
