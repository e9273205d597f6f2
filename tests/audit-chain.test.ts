import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clubEnv, ADMIN_PASSWORD, type ClubTestEnv } from './helpers/club-server.js';
import { queryAuditLog, verifyAuditLog, SIGN_EVERY, type AuditVerifier } from '../storage/club/audit-log.js';
import { verifyTranscript } from '../crypto/identity.js';
import { testIdentity } from './helpers/pair.js';

const verifier: AuditVerifier = { verify: (b, s, fp) => fp === testIdentity().fingerprint && verifyTranscript(testIdentity().spki, b, s) };

async function clubWithLog(env: ClubTestEnv): Promise<string> {
  const club = await env.newClub();
  const s = env.session();
  await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  for (let i = 0; i < 5; i++) await s.call('persons.create', { firstName: `P${i}`, lastName: 'Muster', photoConsent: false, blocked: false });
  await s.call('auth.logout');
  return club;
}

test('every mutating command writes exactly one change-log entry with user, time and field changes (point 4)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const s = env.session('127.0.0.9');
    await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const db = () => env.storage.openClub(club).db;
    const count = () => queryAuditLog(db(), { limit: 1000 }).entries.length;
    const last = () => queryAuditLog(db(), { descending: true, limit: 1 }).entries[0]!;
    const steps: Array<[string, unknown, (e: ReturnType<typeof last>) => void]> = [];
    let personId = 0;
    let regId = 0;
    const run = async (cmd: string, payload: unknown, check: (e: ReturnType<typeof last>) => void) => {
      const before = count();
      const t0 = Date.now();
      const r = await s.call(cmd, payload);
      assert.equal(count(), before + 1, `${cmd} wrote exactly one entry`);
      const e = last();
      assert.equal(e.user, 'admin');
      assert.equal(e.ip, '127.0.0.9');
      assert.ok(Date.parse(e.time) >= t0 - 5 && Date.parse(e.time) <= Date.now() + 5, 'UTC time of the change');
      check(e);
      return r.payload;
    };
    void steps;
    personId = (await run('persons.create', { firstName: 'Anna', lastName: 'Huber', city: 'Graz', photoConsent: true, blocked: false }, (e) => {
      assert.equal(e.action, 'create');
      assert.equal(e.entity, 'persons');
      assert.deepEqual((e.changes as Record<string, unknown>).firstName, { old: null, new: 'Anna' });
      assert.deepEqual((e.changes as Record<string, unknown>).city, { old: null, new: 'Graz' });
    })).record.id;
    await run('persons.update', { id: personId, city: 'Wien', lastName: 'Huber' }, (e) => {
      assert.equal(e.action, 'update');
      assert.equal(e.recordId, personId);
      assert.deepEqual(e.changes, { city: { old: 'Graz', new: 'Wien' } }, 'only changed fields, with old and new value');
    });
    regId = (await run('registers.create', { name: 'Flöten' }, (e) => assert.equal(e.entity, 'registers'))).record.id;
    const sepa = (await run('sepaMandates.create', { personId, iban: 'DE89 3704 0044 0532 0130 00', accountHolder: 'Anna Huber', mandateReference: 'M-1' }, (e) => {
      assert.deepEqual((e.changes as Record<string, unknown>).iban, { old: null, new: '[redacted]' }, 'bank data is not logged in clear');
    })).record.id;
    await run('sepaMandates.delete', { id: sepa }, (e) => assert.equal(e.action, 'delete'));
    await run('registerAssignments.create', { personId, registerId: regId, from: '2020-01-01', leader: false }, () => {});
    const uid = (await run('users.create', { username: 'carl', password: 'carl-password-12', role: 'member' }, (e) => assert.equal(e.entity, 'users'))).user.id;
    await run('rights.set', { userId: uid, role: 'board' }, (e) => {
      assert.equal(e.action, 'rights.set');
      assert.equal((e.changes as { role: { old: string; new: string } }).role.new, 'board');
    });
    await run('users.disable', { id: uid }, (e) => assert.deepEqual(e.changes, { disabled: { old: false, new: true } }));
    await run('users.resetPassword', { id: uid }, (e) => assert.equal(e.action, 'update'));
    await run('persons.export', {}, (e) => assert.deepEqual([e.action, (e.changes as { count: number }).count], ['export', 1]));
    const before = count();
    const e = await s.code('persons.update', { id: personId, city: 'Wien' });
    assert.equal(e, 'ok');
    assert.equal(count(), before, 'a no-op update writes nothing');
    assert.equal(await s.code('persons.delete', { id: personId }), 'CONFLICT', 'still referenced');
    assert.equal(count(), before, 'a refused mutation writes nothing');
    assert.equal(verifyAuditLog(db(), club, verifier).ok, true);
  } finally {
    await env.close();
  }
});

test('log verify passes, and after one entry is altered, deleted or reordered in the store it fails naming it (point 4)', async () => {
  const env = await clubEnv();
  try {
    const clubs = [await clubWithLog(env), await clubWithLog(env), await clubWithLog(env), await clubWithLog(env)];
    for (const c of clubs) {
      const r = verifyAuditLog(env.storage.openClub(c).db, c, verifier);
      assert.equal(r.ok, true, JSON.stringify(r));
      assert.equal(r.entries, 7);
      assert.ok(r.signedHeads >= 1 && r.signedUpTo === 7, 'the head is signed at logout');
    }
    const open = (c: string) => {
      const db = env.storage.openClub(c).db;
      // Someone with the data key (not the identity key) can remove the append-only triggers.
      db.exec('DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete');
      return db;
    };
    // altered
    open(clubs[0]!).prepare(`UPDATE audit_log SET changes = replace(changes, 'P2', 'P9') WHERE seq = 4`).run();
    let r = verifyAuditLog(env.storage.openClub(clubs[0]!).db, clubs[0]!, verifier);
    assert.equal(r.ok, false);
    assert.equal(r.firstBad!.seq, 4, r.firstBad!.reason);
    // deleted
    open(clubs[1]!).prepare('DELETE FROM audit_log WHERE seq = 3').run();
    r = verifyAuditLog(env.storage.openClub(clubs[1]!).db, clubs[1]!, verifier);
    assert.equal(r.firstBad!.seq, 3, r.firstBad!.reason);
    assert.match(r.firstBad!.reason, /missing/);
    // reordered: entries 3 and 4 swap places (all content incl. hashes)
    const db2 = open(clubs[2]!);
    db2.transaction(() => {
      db2.prepare('UPDATE audit_log SET seq = -1 WHERE seq = 3').run();
      db2.prepare('UPDATE audit_log SET seq = 3 WHERE seq = 4').run();
      db2.prepare('UPDATE audit_log SET seq = 4 WHERE seq = -1').run();
    })();
    r = verifyAuditLog(env.storage.openClub(clubs[2]!).db, clubs[2]!, verifier);
    assert.equal(r.firstBad!.seq, 3, r.firstBad!.reason);
    // the last entry removed: the signed head names it
    open(clubs[3]!).prepare('DELETE FROM audit_log WHERE seq = 7').run();
    r = verifyAuditLog(env.storage.openClub(clubs[3]!).db, clubs[3]!, verifier);
    assert.equal(r.firstBad!.seq, 7, r.firstBad!.reason);
    // a signature by another key does not count
    const other = verifyAuditLog(env.storage.openClub(clubs[0]!).db, clubs[0]!, { verify: () => false });
    assert.equal(other.ok, false);
  } finally {
    await env.close();
  }
});

test('the change log cannot be changed through the store API while its triggers stand; heads are signed at intervals', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const s = env.session();
    await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    for (let i = 0; i < SIGN_EVERY + 3; i++) await s.call('inventoryItems.create', { kind: 'instrument', name: `Horn ${i}` });
    const db = env.storage.openClub(club).db;
    assert.throws(() => db.prepare('UPDATE audit_log SET action = ? WHERE seq = 1').run('x'), /append-only/);
    assert.throws(() => db.prepare('DELETE FROM audit_log WHERE seq = 1').run(), /append-only/);
    const heads = db.prepare('SELECT seq FROM audit_heads ORDER BY seq').all() as Array<{ seq: number }>;
    assert.ok(heads.some((h) => h.seq === SIGN_EVERY), `a head at ${SIGN_EVERY}: ${JSON.stringify(heads)}`);
    const r = verifyAuditLog(db, club, verifier);
    assert.equal(r.ok, true);
    assert.ok(r.unsignedTail > 0 && r.unsignedTail < SIGN_EVERY, `tail ${r.unsignedTail}`);
  } finally {
    await env.close();
  }
});
