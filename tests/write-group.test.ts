// Group commit of a club store (issue 13, storage/club/write-group.ts): writes queued in one turn
// share one transaction and one commit; each is isolated by its own savepoint; answers come only
// after the commit; a failed commit refuses the whole group; closing a store commits what waits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openDatabase, type Db } from '../storage/engine/sqlcipher.js';
import { StorageError } from '../storage/engine/errors.js';
import { WriteGroup } from '../storage/club/write-group.js';
import { AuditLog, queryAuditLog, verifyAuditLog, type AuditVerifier } from '../storage/club/audit-log.js';
import { updateRecord } from '../storage/club/club-data.js';
import { openStorage, type Storage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { signTranscript, verifyTranscript } from '../crypto/identity.js';
import { testIdentity } from './helpers/pair.js';
import { tmpDir } from './store-helpers.js';

const verifier: AuditVerifier = { verify: (b, s, fp) => fp === testIdentity().fingerprint && verifyTranscript(testIdentity().spki, b, s) };
const actor = { user: 'admin', ip: '127.0.0.1', session: 's1' };
const scope = { kind: 'all', hideBlocked: true } as const;

async function clubWithPersons(n: number): Promise<{ storage: Storage; club: string; ids: number[]; audit: AuditLog; cleanup(): void }> {
  const { dir, cleanup } = tmpDir();
  const storage = await openStorage({ dataDir: dir, create: true, scryptLog2N: 10 });
  const { id: club } = await createClub(storage, { name: 'MV Gruppe', adminUser: 'admin', adminPassword: 'a long admin password' });
  const db = storage.openClub(club).db;
  const ins = db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", "blocked") VALUES (?, 'Muster', 0, 0) RETURNING id`);
  const ids = Array.from({ length: n }, (_, i) => (ins.get(`P${i}`) as { id: number }).id);
  const identity = testIdentity();
  const audit = new AuditLog(db, club, { signer: { sign: (b) => signTranscript(identity, b), fingerprint: identity.fingerprint }, anchors: storage });
  return {
    storage,
    club,
    ids,
    audit,
    cleanup: () => {
      storage.close();
      cleanup();
    },
  };
}

function notesOf(db: Db, id: number): string | null {
  return (db.prepare('SELECT notes FROM persons WHERE id = ?').get(id) as { notes: string | null }).notes;
}

test('writes queued in one turn share one transaction; each answer comes after the commit, and the change log chains in commit order', async (t) => {
  const env = await clubWithPersons(4);
  t.after(env.cleanup);
  const store = env.storage.openClub(env.club);
  const db = store.db;
  const before = store.writes.stats.groups;
  const answers: Array<Promise<unknown>> = [];
  for (let i = 0; i < 20; i++) {
    const id = env.ids[i % 4]!;
    answers.push(store.writes.run(() => updateRecord(db, 'persons', id, { notes: `v${i}` }, { scope, audit: env.audit, actor })));
  }
  // Nothing is applied, let alone visible, before the group runs.
  assert.equal(notesOf(db, env.ids[0]!), null);
  assert.equal(store.writes.queued, 20);
  const order: number[] = [];
  const committedSeen: boolean[] = [];
  await Promise.all(answers.map((a, i) => a.then(() => {
    order.push(i);
    // When an answer is released the group is committed: no transaction is open any more.
    committedSeen.push(!db.inTransaction);
  })));
  assert.equal(store.writes.stats.groups - before, 1, 'one transaction for the 20 writes');
  assert.equal(store.writes.stats.largest, 20);
  assert.ok(committedSeen.every(Boolean));
  for (let k = 0; k < 4; k++) assert.equal(notesOf(db, env.ids[k]!), `v${16 + k}`, 'the last write of each person wins: arrival order');
  const entries = queryAuditLog(db, { limit: 100 }).entries.filter((e) => e.action === 'update');
  assert.deepEqual(entries.map((e) => (e.changes as { notes: { new: string } }).notes.new), Array.from({ length: 20 }, (_, i) => `v${i}`), 'one entry per write, in commit order');
  const v = verifyAuditLog(db, env.club, verifier, env.storage.listAnchors(env.club));
  assert.equal(v.ok, true, JSON.stringify(v.firstBad));
  // Durable: a fresh connection after closing everything sees all 20.
  const dataDir = env.storage.dataDir;
  env.storage.close();
  const again = await openStorage({ dataDir });
  try {
    const db2 = again.openClub(env.club).db;
    assert.equal(queryAuditLog(db2, { limit: 100 }).entries.filter((e) => e.action === 'update').length, 20);
    assert.equal(verifyAuditLog(db2, env.club, verifier).ok, true);
  } finally {
    again.close();
  }
});

test('a write failing inside a group rolls back alone, its change-log entry included; the others commit', async (t) => {
  const env = await clubWithPersons(3);
  t.after(env.cleanup);
  const store = env.storage.openClub(env.club);
  const db = store.db;
  const [a, b, c] = env.ids as [number, number, number];
  const upd = (id: number, notes: string) => updateRecord(db, 'persons', id, { notes }, { scope, audit: env.audit, actor });
  const ok1 = store.writes.run(() => upd(a, 'first'));
  // Writes the row and its change-log entry (and may sign a head), then fails.
  const bad = store.writes.run(() => {
    upd(b, 'doomed');
    env.audit.append({ ...actor, action: 'note', entity: null, recordId: null, changes: { extra: 1 } });
    throw new Error('refused after writing');
  });
  const notFound = store.writes.run(() => upd(999_999, 'missing'));
  const ok2 = store.writes.run(() => upd(c, 'third'));
  await assert.rejects(bad, /refused after writing/);
  await assert.rejects(notFound, (e: Error & { code?: string }) => e.code === 'NOT_FOUND');
  await ok1;
  await ok2;
  assert.equal(notesOf(db, a), 'first');
  assert.equal(notesOf(db, b), null, 'the failed write left nothing');
  assert.equal(notesOf(db, c), 'third');
  const entries = queryAuditLog(db, { limit: 100 }).entries;
  assert.deepEqual(entries.filter((e) => e.action === 'update').map((e) => e.recordId), [a, c]);
  assert.equal(entries.filter((e) => e.action === 'note').length, 0);
  assert.deepEqual(entries.map((e) => e.seq), entries.map((_, i) => i + 1), 'no gap where the failed entry was');
  assert.equal(verifyAuditLog(db, env.club, verifier).ok, true);
  assert.equal(store.writes.stats.failed, 2);
});

test('a commit that fails refuses every write of its group and leaves nothing', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const db = openDatabase(join(dir, 'plain.db'));
  t.after(() => db.close());
  db.pragma('journal_mode=WAL');
  db.pragma('foreign_keys=ON');
  db.exec('CREATE TABLE parent (id INTEGER PRIMARY KEY); CREATE TABLE child (id INTEGER PRIMARY KEY, p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)');
  const g = new WriteGroup(db);
  const fine = g.run(() => db.prepare('INSERT INTO parent (id) VALUES (1)').run());
  // A deferred foreign key passes the statement and fails at COMMIT.
  const dangling = g.run(() => db.prepare('INSERT INTO child (id, p) VALUES (1, 42)').run());
  await assert.rejects(fine, (e: Error & { code?: string }) => e.code === 'SQLITE_CONSTRAINT_FOREIGNKEY');
  await assert.rejects(dangling, (e: Error & { code?: string }) => e.code === 'SQLITE_CONSTRAINT_FOREIGNKEY');
  assert.equal(db.inTransaction, false);
  assert.equal((db.prepare('SELECT count(*) AS n FROM parent').get() as { n: number }).n, 0);
  // The next group works again.
  await g.run(() => db.prepare('INSERT INTO parent (id) VALUES (2)').run());
  assert.equal((db.prepare('SELECT count(*) AS n FROM parent').get() as { n: number }).n, 1);
});

test('groups are bounded in size and queue; an asynchronous work is refused; flush and close commit what waits', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const db = openDatabase(join(dir, 'plain.db'));
  t.after(() => db.open && db.close());
  db.pragma('journal_mode=WAL');
  db.exec('CREATE TABLE t (v INTEGER)');
  const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
  const g = new WriteGroup(db, { maxGroup: 4, maxQueued: 10 });
  const all = Array.from({ length: 10 }, (_, i) => g.run(() => ins.run(i)));
  await assert.rejects(g.run(() => ins.run(99)), (e: unknown) => e instanceof StorageError && e.code === 'STORE_BUSY');
  await Promise.all(all);
  assert.equal(g.stats.groups, 3, '10 writes in groups of at most 4');
  assert.equal(g.stats.largest, 4);
  await assert.rejects(g.run(() => Promise.resolve(ins.run(100))), (e: unknown) => e instanceof StorageError && e.code === 'INVALID_ARGUMENT');
  assert.equal((db.prepare('SELECT count(*) AS n FROM t WHERE v = 100').get() as { n: number }).n, 0, 'the asynchronous work was rolled back');
  // flush(): applied and committed now, without waiting for the scheduled turn.
  const late = g.run(() => ins.run(7));
  g.flush();
  assert.equal((db.prepare('SELECT count(*) AS n FROM t WHERE v = 7').get() as { n: number }).n, 2);
  await late;
});

test('closing a club store (eviction, maintenance, shutdown) commits its queued writes first', async (t) => {
  const env = await clubWithPersons(1);
  t.after(env.cleanup);
  const store = env.storage.openClub(env.club);
  const id = env.ids[0]!;
  const w = store.writes.run(() => updateRecord(store.db, 'persons', id, { notes: 'before close' }, { scope, audit: env.audit, actor }));
  store.close();
  await w;
  const dataDir = env.storage.dataDir;
  env.storage.close();
  const again = await openStorage({ dataDir });
  try {
    assert.equal(notesOf(again.openClub(env.club).db, id), 'before close');
  } finally {
    again.close();
  }
});
