// Issue 20 point 7: scrypt parameters are OWASP's minimum (N=2^17, r=8, p=1), and hashes with the
// weaker N=2^15, r=8, p=3 (about 0.75 of the CPU work and 0.19 of the memory-time cost) are
// rehashed on the next login.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword, needsRehash, verifyPassword, PASSWORD_LOG2N, PASSWORD_P, PASSWORD_R } from '../crypto/password.js';
import { legacySha512, parseLegacySha512, verifyWrappedLegacySha512, wrapLegacySha512 } from '../crypto/legacy-password.js';
import { randomBytes } from 'node:crypto';

test('new password hashes use N=2^17, r=8, p=1; the former N=2^15, p=3 hashes need a rehash', async () => {
  assert.deepEqual([PASSWORD_LOG2N, PASSWORD_R, PASSWORD_P], [17, 8, 1]);
  const h = await hashPassword('ein-langes-Passwort-1');
  assert.match(h, /^scrypt\$1\$17\$8\$1\$/);
  assert.equal(await verifyPassword('ein-langes-Passwort-1', h), true);
  assert.equal(needsRehash(h), false);
  assert.equal(needsRehash('scrypt$1$15$8$3$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='), true);
});

test('a wrapped legacy hash verifies in two layers and holds no fast value', async () => {
  const legacy = legacySha512('alte-Passwort-42', randomBytes(4));
  const w = await wrapLegacySha512(parseLegacySha512(legacy)!, 10);
  assert.ok(!w.includes(legacy.split('$')[2]!));
  assert.equal(await verifyWrappedLegacySha512('alte-Passwort-42', w), true);
  assert.equal(await verifyWrappedLegacySha512('alte-Passwort-43', w), false);
  assert.equal(await verifyWrappedLegacySha512('alte-Passwort-42', w.replace(/\$scrypt\$1\$10\$/, '$scrypt$1$31$')), false, 'out-of-range inner parameters are refused, not run');
});

test('bare sha512 hashes imported by older versions are wrapped in scrypt in the background when the store opens', { timeout: 60_000 }, async (t) => {
  const { openStorage } = await import('../storage/server/storage.js');
  const { createClub } = await import('../storage/server/provisioning.js');
  const { getUserByName, insertUser } = await import('../storage/club/users.js');
  const { tmpDir } = await import('./store-helpers.js');
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  const { id } = await createClub(st, { name: 'MV Alt', adminUser: 'admin', adminPassword: 'admin-password-123' });
  const bare = legacySha512('alte-Passwort-42', randomBytes(4));
  insertUser(st.openClub(id).db, { username: 'old', displayName: null, personId: null, passwordHash: bare, mustChangePassword: false, role: 'member', grants: [] } as never);
  st.close();
  const st2 = await openStorage({ dataDir: dir });
  t.after(() => st2.close());
  st2.legacyHashLog2N = 10;
  const db = () => st2.openClub(id).db;
  const deadline = Date.now() + 30_000;
  while (getUserByName(db(), 'old')!.passwordHash === bare) {
    assert.ok(Date.now() < deadline, 'the bare hash was wrapped');
    await new Promise((r) => setImmediate(r));
  }
  const h = getUserByName(db(), 'old')!.passwordHash;
  assert.match(h, /^sha512-scrypt\$/);
  assert.ok(!h.includes(bare.split('$')[2]!));
  assert.equal(await verifyWrappedLegacySha512('alte-Passwort-42', h), true);
});
