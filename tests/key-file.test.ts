// Must-show 2 and 3 (first half): wrong master key / passphrase give a clear error and change
// nothing on disk; an unsafe key file (mode, owner, symlink, folder) is refused with a message
// that says how to fix it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, linkSync, renameSync, symlinkSync, unlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { openStorage } from '../storage/server/storage.js';
import { createClub, listClubs } from '../storage/server/provisioning.js';
import { checkKeyFileSafety, createMasterKey, loadMasterKey, writeKeyFile, keyIdOf } from '../crypto/master-key.js';
import { hashPassword, verifyPassword, needsRehash } from '../crypto/password.js';
import { unwrapKey, wrapKey } from '../crypto/wrap.js';
import { tmpDir, treeDigest } from './store-helpers.js';

type Coded = Error & { code?: string };
const hasCode = (code: string, re?: RegExp) => (e: Coded) => e.code === code && (re ? re.test(e.message) : true);

test('key file is created 0600 in a 0700 folder and round-trips, plain and with a passphrase', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const p = join(dir, 'keys', 'master.key');
  const m = await createMasterKey(p);
  assert.equal(statSync(p).mode & 0o777, 0o600);
  assert.equal(statSync(join(dir, 'keys')).mode & 0o777, 0o700);
  const again = await loadMasterKey(p);
  assert.ok(again.key.equals(m.key));
  assert.equal(again.id, keyIdOf(m.key).toString('hex'));
  await assert.rejects(createMasterKey(p), hasCode('KEY_FILE_EXISTS'));
  const p2 = join(dir, 'keys2', 'master.key');
  const m2 = await createMasterKey(p2, { passphrase: 'geheim genug', scryptLog2N: 12 });
  assert.ok((await loadMasterKey(p2, { passphrase: Buffer.from('geheim genug') })).key.equals(m2.key));
  await assert.rejects(loadMasterKey(p2), hasCode('PASSPHRASE_REQUIRED', /passphrase/));
});

test('wrong passphrase and wrong master key: clear error, nothing on disk changes', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true, passphrase: 'richtige Passphrase', scryptLog2N: 12 });
  await createClub(st, { name: 'MV Unverändert', adminUser: 'admin', adminPassword: 'a long admin password' });
  st.close();
  const before = treeDigest(dir);
  await assert.rejects(openStorage({ dataDir: dir, passphrase: 'falsche Passphrase' }), hasCode('WRONG_PASSPHRASE', /does not open key file .*nothing was changed/));
  await assert.rejects(openStorage({ dataDir: dir }), hasCode('PASSPHRASE_REQUIRED'));
  assert.equal(treeDigest(dir), before);

  // Another valid key file in place of the right one: refused, nothing written.
  const keyPath = join(dir, 'keys', 'master.key');
  renameSync(keyPath, keyPath + '.right');
  await writeKeyFile(keyPath, randomBytes(32));
  chmodSync(keyPath + '.right', 0o600);
  const withWrong = treeDigest(dir);
  await assert.rejects(openStorage({ dataDir: dir }), hasCode('WRONG_MASTER_KEY', /does not open the server database .*nothing was changed/));
  await assert.rejects(openStorage({ dataDir: dir, create: true }), hasCode('WRONG_MASTER_KEY'));
  assert.equal(treeDigest(dir), withWrong);
  // create:true never makes a new key for a folder that holds data.
  unlinkSync(keyPath);
  const noKey = treeDigest(dir);
  await assert.rejects(openStorage({ dataDir: dir, create: true }), hasCode('KEY_FILE_MISSING', /restore the key file/));
  assert.equal(treeDigest(dir), noKey);
  // The right key still opens everything.
  renameSync(keyPath + '.right', keyPath);
  const ok = await openStorage({ dataDir: dir, passphrase: 'richtige Passphrase' });
  assert.equal(listClubs(ok).length, 1);
  ok.close();
});

test('unsafe key files are refused with a message naming the fix', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const keys = join(dir, 'keys');
  const p = join(keys, 'master.key');
  await createMasterKey(p);
  checkKeyFileSafety(p);

  chmodSync(p, 0o644);
  await assert.rejects(loadMasterKey(p), hasCode('KEY_FILE_UNSAFE', /mode 0644.*chmod 600/));
  chmodSync(p, 0o640);
  assert.throws(() => checkKeyFileSafety(p), hasCode('KEY_FILE_UNSAFE', /group\/others .*chmod 600/));
  chmodSync(p, 0o600);

  if (process.getuid?.() === 0) {
    chownSync(p, 1, 1);
    await assert.rejects(loadMasterKey(p), hasCode('KEY_FILE_UNSAFE', /owned by uid 1, not by the daemon's uid 0; run chown 0/));
    chownSync(p, 0, 0);
  } else {
    assert.throws(() => checkKeyFileSafety(p, process.getuid!() + 1), hasCode('KEY_FILE_UNSAFE', /owned by uid/));
  }

  const real = join(dir, 'elsewhere.key');
  renameSync(p, real);
  symlinkSync(real, p);
  await assert.rejects(loadMasterKey(p), hasCode('KEY_FILE_UNSAFE', /symbolic link/));
  unlinkSync(p);
  renameSync(real, p);

  linkSync(p, join(dir, 'second-name'));
  await assert.rejects(loadMasterKey(p), hasCode('KEY_FILE_UNSAFE', /hard links/));
  unlinkSync(join(dir, 'second-name'));

  chmodSync(keys, 0o755);
  await assert.rejects(loadMasterKey(p), hasCode('KEY_FILE_UNSAFE', /key folder .*chmod 700/));
  chmodSync(keys, 0o700);

  unlinkSync(p);
  await assert.rejects(loadMasterKey(p), hasCode('KEY_FILE_MISSING'));

  // The storage layer refuses to start on an unsafe key file.
  const { dir: d2, cleanup: c2 } = tmpDir();
  t.after(c2);
  (await openStorage({ dataDir: d2, create: true })).close();
  chmodSync(join(d2, 'keys', 'master.key'), 0o644);
  await assert.rejects(openStorage({ dataDir: d2 }), hasCode('KEY_FILE_UNSAFE', /chmod 600/));
});

test('wrapped keys are bound to their context and their KEK', () => {
  const kek = randomBytes(32);
  const k = randomBytes(32);
  const w = wrapKey(kek, k, { purpose: 'club-data-key', clubId: 'ca', keyVersion: 1 });
  assert.ok(unwrapKey(kek, w, { purpose: 'club-data-key', clubId: 'ca', keyVersion: 1 }).equals(k));
  assert.throws(() => unwrapKey(kek, w, { purpose: 'club-data-key', clubId: 'cb', keyVersion: 1 }), hasCode('UNWRAP_FAILED'));
  assert.throws(() => unwrapKey(kek, w, { purpose: 'club-data-key', clubId: 'ca', keyVersion: 2 }), hasCode('UNWRAP_FAILED'));
  assert.throws(() => unwrapKey(randomBytes(32), w, { purpose: 'club-data-key', clubId: 'ca', keyVersion: 1 }), hasCode('WRONG_KEY'));
  const bad = Buffer.from(w);
  bad[30]! ^= 1;
  assert.throws(() => unwrapKey(kek, bad, { purpose: 'club-data-key', clubId: 'ca', keyVersion: 1 }), hasCode('UNWRAP_FAILED'));
});

test('password hashes: salted, verified, wrong password refused', async () => {
  const a = await hashPassword('Posaune und Tuba 123');
  const b = await hashPassword('Posaune und Tuba 123');
  assert.notEqual(a, b);
  assert.equal(await verifyPassword('Posaune und Tuba 123', a), true);
  assert.equal(await verifyPassword('Posaune und Tuba 124', a), false);
  assert.equal(needsRehash(a), false);
  assert.equal(needsRehash(await hashPassword('x', 12)), true);
});
