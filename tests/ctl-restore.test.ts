// Issue 10, must-show 3 through the operator CLI (offline on the data folder): a restore of a
// club with live data stops without --yes, --dry-run reports and changes nothing, --yes
// restores, the restore entry names the OS account (and the sudo caller), the entries written
// after the archive are kept and `log verify` passes; `backup verify` checks the signed heads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { walk } from './store-helpers.js';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { createClubArchive, serverArchiveKey, writeFileAtomic } from '../storage/backup/backup-archive.js';
import { addPerson } from './backup-helpers.js';
import { AuditLog } from '../storage/club/audit-log.js';
import { loadIdentity, signTranscript } from '../crypto/identity.js';

function digestWithoutShm(dir: string): string {
  const h = createHash('sha256');
  for (const f of walk(dir)) if (!f.endsWith('-shm')) h.update(f).update(readFileSync(f));
  return h.digest('hex');
}

const bin = (name: string) => new URL(`../bin/${name}.js`, import.meta.url).pathname;

function ctl(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [bin('commusicctl'), ...args], { timeout: 60_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin!.end();
  });
}

test('commusicctl backup restore: --yes needed, --dry-run changes nothing, the operator is named, history and log verify survive', { timeout: 120_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'commusic-ctlrestore-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const data = join(root, 'data');
  let r = await ctl(['--data', data, 'keys', 'init']);
  assert.equal(r.code, 0, r.stderr);
  const st = await openStorage({ dataDir: data });
  const id = loadIdentity(join(data, 'keys', 'identity.pem'));
  const { id: club } = await createClub(st, { name: 'MV Restore', adminUser: 'chef', adminPassword: 'chef-password-123' });
  for (let i = 0; i < 4; i++) addPerson(st, club, i);
  new AuditLog(st.openClub(club).db, club, { signer: { sign: (b) => signTranscript(id, b), fingerprint: id.fingerprint } }).signHead();
  const archive = join(root, 'club.cmbk');
  await writeFileAtomic(createClubArchive(st, club, { kind: 'server', key: serverArchiveKey(st) }).stream, archive);
  for (let i = 0; i < 3; i++) addPerson(st, club, 100 + i);
  const count = () => (st.openClub(club).db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n;
  assert.equal(count(), 7);
  st.close();

  r = await ctl(['--data', data, 'backup', 'verify', archive]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`made by server key ${id.fingerprint} \\(this-server\\)`));
  assert.match(r.stdout, /1 signed heads verified/);

  r = await ctl(['--data', data, 'backup', 'verify', 'local:latest']);
  assert.equal(r.code, 2, 'DESTINATION:latest without --club is a usage error');
  assert.match(r.stderr, /needs --club/);
  r = await ctl(['--data', data, 'backup', 'restore', '--club', club, '--from', archive]);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /live data.*--dry-run.*--yes/s);

  r = await ctl(['--data', data, 'backup', 'restore', '--club', club, '--from', archive, '--dry-run', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const plan = JSON.parse(r.stdout) as { inArchive: { tables: Record<string, number> }; live: { tables: Record<string, number> }; logEntriesAfterArchive: number };
  assert.deepEqual([plan.inArchive.tables['persons'], plan.live.tables['persons'], plan.logEntriesAfterArchive], [4, 7, 3]);
  r = await ctl(['--data', data, 'backup', 'restore', '--club', club, '--from', archive, '--dry-run']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /persons: 7 now -> 4/);
  assert.equal(r.stdout.match(/^\s*documents:/gm)?.length, 1, `documents listed once:\n${r.stdout}`);

  // Into a separate folder: the live club is not touched.
  const target = join(root, 'scratch');
  const liveBefore = digestWithoutShm(data);
  r = await ctl(['--data', data, 'backup', 'restore', '--club', club, '--from', archive, '--target', target]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /into the data folder .*scratch \(the live club is untouched\)/);
  assert.equal(digestWithoutShm(data), liveBefore, 'the live data folder is unchanged');
  const tst = await openStorage({ dataDir: target });
  try {
    assert.equal((tst.openClub(club).db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n, 4);
  } finally {
    tst.close();
  }

  r = await ctl(['--data', data, 'backup', 'restore', '--club', club, '--from', archive, '--yes'], { SUDO_USER: 'alice' });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /the replaced state is archived in .*pre-restore/);
  assert.match(r.stdout, /3 change-log entries written after the archive were kept/);

  const st2 = await openStorage({ dataDir: data });
  try {
    assert.equal((st2.openClub(club).db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n, 4);
    const last = st2.openClub(club).db.prepare('SELECT "user", action FROM audit_log ORDER BY seq DESC LIMIT 1').get() as { user: string; action: string };
    const me = userInfo().username;
    assert.deepEqual({ ...last }, { user: `operator:${me}${me === 'alice' ? '' : ' (sudo by alice)'}`, action: 'backup.restore' });
  } finally {
    st2.close();
  }
  r = await ctl(['--data', data, 'log', 'verify', '--club', club, '--json']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal((JSON.parse(r.stdout) as { ok: boolean; entries: number }).ok, true);
  assert.equal((JSON.parse(r.stdout) as { entries: number }).entries, 4 + 3 + 1, '4 + 3 persons (the 3 after the archive kept), the restore entry');
});
