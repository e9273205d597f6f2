// Issue 20 point 2: deleting a club reaches its backups. After `commusicctl club delete ID --yes`
// no archive at any destination (nor a copy taken elsewhere) restores the club, no file under the
// data folder (server.db decrypted, WAL included) holds its wrapped key, and `backup list` says
// what was removed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { loadMasterKey } from '../crypto/master-key.js';
import { BackupService } from '../daemon/backup/backup-service.js';
import { archiveKeyFor } from '../storage/backup/archive-keys.js';
import { archiveTrust, restoreClubArchive, serverArchiveKey, verifyArchive } from '../storage/backup/backup-archive.js';
import { serverDbKey, serverDbPath } from '../storage/server/server-db.js';
import { openEncrypted } from '../storage/engine/sqlcipher.js';
import { openStorage } from '../storage/server/storage.js';
import { addDocument, addPerson, makeClubs } from './backup-helpers.js';
import { findPlaintext, needleVariants, tmpDir } from './store-helpers.js';

const BIN = new URL('../bin/', import.meta.url).pathname;

/** Archive files under a local destination (recursively), as paths. */
function archivesIn(dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).filter((n) => n.endsWith('.cmbk')).map((n) => join(dir, n));
}

function ctl(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(BIN, 'commusicctl.js'), ...args], { timeout: 60_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end('');
  });
}

/** server.db as plaintext: a copy re-keyed to no key (SQLite3MultipleCiphers), every page, free pages included. */
function decryptedServerDb(dir: string, master: Buffer, scratch: string): Buffer {
  const copy = join(scratch, 'server-plain.db');
  copyFileSync(serverDbPath(dir), copy);
  if (existsSync(serverDbPath(dir) + '-wal')) copyFileSync(serverDbPath(dir) + '-wal', copy + '-wal');
  const key = serverDbKey(master);
  const db = openEncrypted(copy, key, { journalMode: 'DELETE' });
  db.pragma("rekey=''");
  db.close();
  return readFileSync(copy);
}

test('club delete --yes: no archive anywhere restores the club, no file holds its wrapped key, backup list says what was removed (issue 20 point 2)', { timeout: 120_000 }, async (t) => {
  const { dir: root, cleanup } = tmpDir();
  t.after(cleanup);
  const dataDir = join(root, 'data');
  const scratch = join(root, 'scratch');
  mkdirSync(scratch);
  const dests = { a: join(root, 'site-a'), b: join(root, 'site-b') };
  const cfgFile = join(root, 'config.json');
  const backups = { destinations: [{ name: 'site-a', kind: 'local', path: dests.a }, { name: 'site-b', kind: 'local', path: dests.b }] };
  writeFileSync(cfgFile, JSON.stringify({ backups, health: { enabled: false } }));

  const st = await openStorage({ dataDir, create: true });
  const [gone, kept] = await makeClubs(st, 2);
  for (const c of [gone!, kept!]) {
    addPerson(st, c, 1);
    await addDocument(st, c, Buffer.from(`Urkunde ${c}`));
  }
  const svc = new BackupService({ storage: st, config: backups as never });
  const run = await svc.runNightly({ mail: false });
  await svc.close();
  assert.equal(run.ok, 2);
  // An archive copied off-site before the deletion (a destination that is not reachable later).
  const offsite = join(scratch, 'offsite.cmbk');
  const goneArchive = archivesIn(dests.b).find((n) => n.includes(gone!))!;
  copyFileSync(goneArchive, offsite);
  const row = st.server.mustGetClub(gone!);
  const wrapped = Buffer.from(row.wrappedKey!);
  st.server.db.pragma('wal_checkpoint(PASSIVE)');
  st.close();

  const env = { COMMUSIC_CONFIG: cfgFile };
  const del = await ctl(['--data', dataDir, 'club', 'delete', gone!, '--yes', '--json'], env);
  assert.equal(del.code, 0, del.stdout + del.stderr);
  const delR = JSON.parse(del.stdout);
  assert.equal(delR.archives.removed, 2);
  assert.deepEqual(delR.archives.destinations.sort(), ['site-a', 'site-b']);

  // No archive of the club remains at the destinations; the other club's archives stay.
  for (const d of Object.values(dests)) {
    const names = archivesIn(d);
    assert.ok(!names.some((n) => n.includes(gone!)), `${d}: ${names.join(', ')}`);
    assert.ok(names.some((n) => n.includes(kept!)));
  }
  // backup list names what was removed.
  const list = await ctl(['--data', dataDir, 'backup', 'list'], env);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, new RegExp(`deleted club ${gone}.*archive key destroyed, 2 archives removed at site-a, site-b`));

  const st2 = await openStorage({ dataDir });
  try {
    // The off-site copy restores nothing and does not even verify: its key is destroyed.
    const key = { serverKey: serverArchiveKey(st2), serverKeyring: (id: string, club: string) => archiveKeyFor(st2, id, club), trust: archiveTrust(st2) };
    await assert.rejects(verifyArchive(Readable.from([readFileSync(offsite)]), key), (e: Error & { code?: string }) => e.code === 'WRONG_BACKUP_KEY');
    await assert.rejects(restoreClubArchive(st2, gone!, Readable.from([readFileSync(offsite)]), key, { yes: true }), (e: Error & { code?: string }) => e.code === 'WRONG_BACKUP_KEY');
    assert.equal(st2.server.getClub(gone!), undefined);
    // The kept club's archives still verify.
    const keptName = archivesIn(dests.a).find((n) => n.includes(kept!))!;
    assert.equal((await verifyArchive(Readable.from([readFileSync(keptName)]), key)).clubId, kept);
  } finally {
    st2.close();
  }

  // No file under the data folder holds the wrapped key: not in the clear, not in server.db once
  // decrypted (free pages included), and the WAL is empty.
  const wal = serverDbPath(dataDir) + '-wal';
  assert.ok(!existsSync(wal) || statSync(wal).size === 0, 'server.db-wal truncated');
  assert.deepEqual(findPlaintext(dataDir, needleVariants('wrapped club key', wrapped)), []);
  const master = await loadMasterKey(join(dataDir, 'keys', 'master.key'));
  try {
    const plain = decryptedServerDb(dataDir, master.key, scratch);
    assert.ok(plain.subarray(0, 15).toString() === 'SQLite format 3', 'the copy was decrypted');
    assert.equal(plain.includes(wrapped), false, 'decrypted server.db holds no trace of the wrapped key');
  } finally {
    master.destroy();
  }
});
