/**
 * In-memory state that must follow a rollback (the kind of issue: memory kept what the store
 * rolled back).
 * - The change log's signed heads (storage/club/audit-log.ts): a head signed by a write whose
 *   write-group savepoint rolled back is gone from the store, and the next write must decide from
 *   what is in the store. Before, the time of the rolled-back signature stayed in memory and the
 *   next entries went unsigned although the newest committed head was old.
 * - Tables made on first use (storage/club/users.ts `user_grants`): made inside a transaction that
 *   rolled back, they are gone; before, the connection remembered them as made and every later
 *   user query failed with "no such table".
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { signTranscript } from '../crypto/identity.js';
import { AuditLog } from '../storage/club/audit-log.js';
import { SIGN_EVERY } from '../storage/club/audit-chain.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import { getUserById, insertUser } from '../storage/club/users.js';
import { openClubStore } from '../storage/club/club-store.js';
import { randomBytes } from 'node:crypto';
import { testIdentity } from './helpers/pair.js';
import { tmpDir } from './store-helpers.js';

test('a head signed in a rolled-back savepoint does not stop the next entry from being signed', async (t) => {
  const { dir, cleanup } = tmpDir();
  const storage = await openStorage({ dataDir: dir, create: true, scryptLog2N: 10 });
  t.after(() => {
    storage.close();
    cleanup();
  });
  const { id: club } = await createClub(storage, { name: 'MV Kette', adminUser: 'admin', adminPassword: 'a long admin password' });
  const store = storage.openClub(club);
  const db = store.db;
  const identity = testIdentity();
  const signer = { sign: (b: Uint8Array) => signTranscript(identity, b), fingerprint: identity.fingerprint };
  const entry = (action: string) => ({ user: 'admin', ip: '127.0.0.1', session: null, action, entity: null, recordId: null, changes: null });
  const head = () => (db.prepare('SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1').get() as { seq: number } | undefined)?.seq ?? 0;
  // One committed, signed entry; the rolled-back entry and the next one must not land on a multiple of SIGN_EVERY.
  new AuditLog(db, club, { signer }).append(entry('setup'));
  while ((head() + 1) % SIGN_EVERY === 0 || (head() + 2) % SIGN_EVERY === 0) new AuditLog(db, club, { signer }).append(entry('setup'));
  // The newest committed head is old: the next entry is due for a signature (SIGN_MAX_AGE_MS).
  db.prepare('UPDATE audit_heads SET time = ?').run('2000-01-01T00:00:00.000Z');
  const audit = new AuditLog(db, club, { signer });
  const failing = store.writes.run(() => {
    audit.append(entry('rolled back')); // signs (the committed head is old), then fails
    throw new Error('injected failure');
  });
  const next = store.writes.run(() => audit.append(entry('kept')));
  await assert.rejects(failing, /injected failure/);
  const kept = await next;
  const heads = db.prepare('SELECT seq FROM audit_heads ORDER BY seq DESC LIMIT 1').get() as { seq: number };
  assert.equal(heads.seq, kept.seq, 'the entry after the rollback was left unsigned although the newest committed head is old');
});

test('a table made on first use inside a rolled-back transaction is made again', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const store = openClubStore({ dataDir: dir, clubId: 'club-lazy', keys: [{ key: randomBytes(32), version: 2 }], create: true });
  t.after(() => store.close());
  const db = store.db;
  db.exec('DROP TABLE IF EXISTS user_grants'); // a store from before the table, or one not yet used
  assert.throws(() =>
    db.transaction(() => {
      insertUser(db, { username: 'erst', displayName: null, personId: null, passwordHash: 'x', mustChangePassword: false, role: null, grants: [] });
      throw new Error('injected failure');
    })(),
  /injected failure/);
  const id = db.transaction(() => insertUser(db, { username: 'zweit', displayName: null, personId: null, passwordHash: 'x', mustChangePassword: false, role: null, grants: [] }))();
  assert.equal(getUserById(db, id)?.username, 'zweit');
});
