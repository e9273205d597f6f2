// Provisioning operations as commusicctl uses them, and the model-derived schema.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import Database from 'better-sqlite3-multiple-ciphers';
import { openStorage } from '../storage/server/storage.js';
import { createClub, deleteClub, listClubs, resumeClub, showClub, suspendClub } from '../storage/server/provisioning.js';
import { verifyPassword } from '../crypto/password.js';
import { clubDir } from '../storage/club/club-store.js';
import { f, MODEL, validatorFor, type EntityDef } from '../storage/club/model.js';
import { deriveMigrations, MIGRATIONS, SCHEMA_VERSION } from '../storage/club/schema.js';
import { migrate } from '../storage/engine/sqlcipher.js';
import { tmpDir } from './store-helpers.js';

type Coded = Error & { code?: string };

test('create, list, show, suspend, resume, delete', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  t.after(() => st.close());
  const a = await createClub(st, { name: 'Musikverein Alpha', adminUser: 'anna', plan: 'premium' });
  const b = await createClub(st, { name: 'Chor Beta', adminUser: 'bernd', adminPassword: 'ein gutes Passwort' });
  assert.ok(a.oneTimePassword);
  assert.equal(b.oneTimePassword, undefined);
  assert.deepEqual(JSON.parse(JSON.stringify(a)), a, 'results are JSON-serialisable');
  const admin = st.openClub(a.id).db.prepare('SELECT username, passwordHash, mustChangePassword, isAdmin FROM users').get() as { username: string; passwordHash: string; mustChangePassword: number; isAdmin: number };
  assert.equal(admin.username, 'anna');
  assert.equal(admin.isAdmin, 1);
  assert.equal(admin.mustChangePassword, 1);
  assert.equal(await verifyPassword(a.oneTimePassword!, admin.passwordHash), true);
  assert.deepEqual(listClubs(st).map((c) => [c.name, c.plan, c.status]), [['Musikverein Alpha', 'premium', 'active'], ['Chor Beta', 'basic', 'active']]);
  const shown = showClub(st, b.id);
  assert.deepEqual(shown.admins, ['bernd']);
  assert.equal(shown.storeCreated, true);
  assert.equal(suspendClub(st, b.id).status, 'suspended');
  assert.throws(() => st.openClub(b.id), (e: Coded) => e.code === 'CLUB_SUSPENDED' && /commusicctl club resume/.test(e.message));
  assert.equal(showClub(st, b.id).status, 'suspended');
  st.openClub(b.id, { allowSuspended: true }); // an operator tool opens it anyway ...
  assert.throws(() => st.openClub(b.id), (e: Coded) => e.code === 'CLUB_SUSPENDED', '... which does not let a member in');
  resumeClub(st, b.id);
  st.openClub(b.id);
  await deleteClub(st, b.id);
  assert.ok(!existsSync(clubDir(dir, b.id)));
  assert.deepEqual(listClubs(st).map((c) => c.id), [a.id]);
  assert.throws(() => showClub(st, b.id), (e: Coded) => e.code === 'CLUB_NOT_FOUND');
  await assert.rejects(createClub(st, { name: 'x', adminUser: 'bad user!' }), (e: Coded) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(createClub(st, { name: 'x', adminUser: 'ok', plan: 'gold' as never }), (e: Coded) => e.code === 'INVALID_ARGUMENT');
});

test('schema is derived from the model; the database enforces it', () => {
  const db = new Database(':memory:');
  db.pragma('foreign_keys=ON');
  migrate(db, MIGRATIONS, 'test');
  assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
  for (const e of Object.values(MODEL)) {
    const cols = (db.prepare(`PRAGMA table_info(${e.table})`).all() as Array<{ name: string }>).map((c) => c.name);
    for (const fld of Object.keys(e.fields)) assert.ok(cols.includes(fld), `${e.table}.${fld}`);
  }
  assert.throws(() => db.prepare(`INSERT INTO memberships ("personId", kind, "from", insured) VALUES (1, 'active', '2020-01-01', 0)`).run(), /FOREIGN KEY/);
  db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", blocked) VALUES ('A', 'B', 0, 0)`).run();
  assert.throws(() => db.prepare(`INSERT INTO memberships ("personId", kind, "from", insured) VALUES (1, 'vip', '2020-01-01', 0)`).run(), /CHECK/);
  assert.throws(() => db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", blocked) VALUES (?, 'B', 0, 0)`).run('x'.repeat(101)), /CHECK/);
  db.prepare(`INSERT INTO audit_log (time, action, hash) VALUES ('2026-01-01T00:00:00Z', 'login', ?)`).run('0'.repeat(64));
  assert.throws(() => db.prepare('DELETE FROM audit_log').run(), /append-only/);
  // zod validation from the same declarations
  assert.equal(validatorFor('sepaMandates', 'create').safeParse({ personId: 1, iban: 'DE89370400440532013001', accountHolder: 'A', mandateReference: 'R' }).success, false);
  assert.equal(validatorFor('persons', 'update').safeParse({ lastName: 'X' }).success, true);
  assert.equal(validatorFor('persons', 'update').safeParse({ lastname: 'X' }).success, false);
  db.close();
});

test('a later model version migrates existing stores with ALTER TABLE; newer stores are refused', () => {
  const next = SCHEMA_VERSION + 1;
  const v2: Record<string, EntityDef> = { ...MODEL, persons: { ...MODEL.persons, fields: { ...MODEL.persons.fields, nickname: f.text(50, { optional: true, since: next }) } } };
  const m2 = deriveMigrations(v2);
  assert.equal(m2.length, next);
  assert.ok(m2[next - 1]!.statements.some((s) => /ALTER TABLE "persons" ADD COLUMN "nickname"/.test(s)));
  assert.ok(m2[next - 1]!.statements.some((s) => /CREATE INDEX IF NOT EXISTS "persons_nickname_idx"/.test(s)), 'a new filterable field gets its index by the same declaration');
  const db = new Database(':memory:');
  migrate(db, MIGRATIONS, 'test');
  db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", blocked) VALUES ('A', 'B', 0, 0)`).run();
  assert.deepEqual(migrate(db, m2, 'test'), { from: SCHEMA_VERSION, to: next });
  assert.equal((db.prepare('SELECT nickname FROM persons').get() as { nickname: null }).nickname, null);
  assert.throws(() => migrate(db, MIGRATIONS, 'store of club x'), (e: Coded) => e.code === 'SCHEMA_TOO_NEW' && /upgrade the server/.test(e.message));
  const bad: Record<string, EntityDef> = { ...MODEL, persons: { ...MODEL.persons, fields: { ...MODEL.persons.fields, nick: { ...f.text(5), since: next } } } };
  assert.throws(() => deriveMigrations(bad), /must be optional/);
  db.close();
});
