/**
 * Issue 14: changeset capture on a real club store (the SQLite here lacks the session extension,
 * so triggers record touched rows) and its application to an encrypted replica: the replica ends
 * equal to the primary table by table, its change-log chain verifies, replays are idempotent, and
 * a changeset naming something the replica does not have is refused.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { encode } from 'cborg';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ackCapture, applyEntry, decodeChangeset, drainCapture, encodeChangeset, installCapture, pendingCapture, readPosition } from '../cluster/capture.js';
import { ClusterError } from '../cluster/errors.js';
import { AuditLog, verifyAuditLog } from '../storage/club/audit-log.js';
import { createRecord, deleteRecord, updateRecord, type MutationOptions } from '../storage/club/club-data.js';
import { openClubStore, type ClubStore } from '../storage/club/club-store.js';
import type { Db } from '../storage/engine/sqlcipher.js';
import { insertUser } from '../storage/club/users.js';
import { ensureRequestKeys } from '../storage/club/request-keys.js';
import { tmpDir } from './store-helpers.js';

function tables(db: Db): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  const names = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cluster_%' ORDER BY name`).all() as Array<{ name: string }>;
  for (const { name } of names) out[name] = db.prepare(`SELECT rowid AS _rowid, * FROM "${name}" ORDER BY rowid`).all();
  return out;
}

test('a replica fed with captured changesets equals its primary and its change log verifies', () => {
  const t = tmpDir('commusic-capture-');
  const key = randomBytes(32);
  const open = (dir: string): ClubStore => {
    mkdirSync(dir, { recursive: true });
    return openClubStore({ dataDir: dir, clubId: 'club-a', keys: [{ key, version: 2 }], create: true });
  };
  const primary = open(join(t.dir, 'p'));
  const replica = open(join(t.dir, 'r'));
  try {
    installCapture(primary.db);
    installCapture(replica.db);
    const audit = new AuditLog(primary.db, 'club-a');
    const o: MutationOptions = { scope: { kind: 'all' }, audit, actor: { user: 'anna', ip: '127.0.0.1', session: 's1' } };
    let after = 0;
    let seq = 0;
    const ship = () => {
      const d = drainCapture(primary.db, after);
      if (!d) return;
      after = d.upto;
      const bytes = encodeChangeset(d.changeset);
      seq++;
      assert.equal(applyEntry(replica.db, { seq, digest: `d${seq}`, items: [bytes] }), true);
      ackCapture(primary.db, d.upto);
      return bytes;
    };
    // each of these is one committed club transaction, shipped as one entry
    const p1 = createRecord(primary.db, 'persons', { firstName: 'Anna', lastName: 'Muster', city: 'Ulm' }, o);
    ship();
    const p2 = createRecord(primary.db, 'persons', { firstName: 'Bernd', lastName: 'Beispiel' }, o);
    updateRecord(primary.db, 'persons', p1.id as number, { city: 'Neu-Ulm' }, o);
    ship();
    insertUser(primary.db, { username: 'bernd', passwordHash: 'x', mustChangePassword: true, grants: [] });
    ship();
    deleteRecord(primary.db, 'persons', p2.id as number, o);
    const last = ship();
    assert.ok(last && last.length > 0);
    assert.equal(pendingCapture(primary.db), 0, 'acknowledged captures stay behind');
    assert.deepEqual(tables(replica.db), tables(primary.db));
    assert.equal(verifyAuditLog(replica.db, 'club-a', undefined).ok, true);
    assert.deepEqual(readPosition(replica.db), { seq, digest: `d${seq}` });
    assert.equal(pendingCapture(replica.db), 0, 'applying wrote capture rows on the replica');
    // a replayed entry is skipped
    assert.equal(applyEntry(replica.db, { seq, digest: `d${seq}`, items: [last!] }), false);
    // a changeset naming a table the replica lacks is refused and changes nothing
    const bad = encodeChangeset({ schema: decodeChangeset(last!).schema, ops: [{ op: 'd', table: 'no_such_table', rowid: 1 }] });
    const before = tables(replica.db);
    assert.throws(() => applyEntry(replica.db, { seq: seq + 1, digest: 'x', items: [bad] }), (e: unknown) => e instanceof ClusterError && e.code === 'LOG_CORRUPT');
    assert.deepEqual(tables(replica.db), before);
    // a changeset from a newer schema waits for the standby's upgrade
    const newer = encodeChangeset({ schema: 10_000, ops: [] });
    assert.throws(() => applyEntry(replica.db, { seq: seq + 1, digest: 'x', items: [newer] }), /upgrade the standbys/);
  } finally {
    primary.close();
    replica.close();
    t.cleanup();
  }
});

test('a write left unacknowledged after a crash is visible as pending capture', () => {
  const t = tmpDir('commusic-capture-');
  const key = randomBytes(32);
  const s = openClubStore({ dataDir: t.dir, clubId: 'club-b', keys: [{ key, version: 2 }], create: true });
  try {
    installCapture(s.db);
    const audit = new AuditLog(s.db, 'club-b');
    createRecord(s.db, 'persons', { firstName: 'C', lastName: 'D' }, { scope: { kind: 'all' }, audit, actor: { user: null, ip: null, session: null } });
    assert.ok(pendingCapture(s.db) > 0);
    const d = drainCapture(s.db)!;
    assert.ok(d.changeset.ops.some((op) => op.table === 'persons' && op.op === 'u'));
    assert.ok(d.changeset.ops.some((op) => op.table === 'audit_log'));
  } finally {
    s.close();
    t.cleanup();
  }
});

test('a table made on first use reaches the replica even when another caller installed its triggers before the drain', () => {
  const t = tmpDir('commusic-capture-ddl-');
  const key = randomBytes(32);
  const open = (dir: string): ClubStore => {
    mkdirSync(dir, { recursive: true });
    return openClubStore({ dataDir: dir, clubId: 'club-d', keys: [{ key, version: 2 }], create: true });
  };
  const primary = open(join(t.dir, 'p'));
  const replica = open(join(t.dir, 'r'));
  try {
    installCapture(primary.db);
    installCapture(replica.db);
    // A first write ships (the connection's first changeset), then a table is made on first use
    // (as audit_heads, request_keys, user_grants are) and written in the same turn.
    createRecord(primary.db, 'persons', { firstName: 'Anna', lastName: 'Muster' }, { scope: { kind: 'all' }, audit: new AuditLog(primary.db, 'club-d'), actor: { user: 'anna', ip: '127.0.0.1', session: 's1' } });
    const d1 = drainCapture(primary.db, 0)!;
    assert.equal(applyEntry(replica.db, { seq: 1, digest: 'd1', items: [encodeChangeset(d1.changeset)] }), true);
    ackCapture(primary.db, d1.upto);
    ensureRequestKeys(primary.db);
    // ... and before the output gate drains it, another path installs the capture triggers (a
    // snapshot served to a standby, a role change): the table's creation must still ship.
    installCapture(primary.db);
    primary.db.prepare('INSERT INTO request_answers (rk, user_id, command, answer, at) VALUES (?, ?, ?, ?, ?)').run('k'.repeat(16), 1, 'x.y', Buffer.from('made on first use'), 1);
    const d2 = drainCapture(primary.db, d1.upto)!;
    assert.equal(applyEntry(replica.db, { seq: 2, digest: 'd2', items: [encodeChangeset(d2.changeset)] }), true, 'the replica refused the entry');
    assert.deepEqual(replica.db.prepare('SELECT command FROM request_answers').all(), [{ command: 'x.y' }]);
  } finally {
    primary.close();
    replica.close();
    t.cleanup();
  }
});

test("a shipped schema object runs on a replica only when it is exactly one of this release's own (no SQL of a member's choosing)", () => {
  const t = tmpDir('commusic-capture-ddl-evil-');
  const key = randomBytes(32);
  mkdirSync(join(t.dir, 'r'), { recursive: true });
  const replica = openClubStore({ dataDir: join(t.dir, 'r'), clubId: 'club-e', keys: [{ key, version: 2 }], create: true });
  try {
    installCapture(replica.db);
    const schema = replica.db.pragma('user_version', { simple: true }) as number;
    const objectsBefore = replica.db.prepare('SELECT type, name, sql FROM sqlite_master ORDER BY name').all();
    const evil: Array<[string, string, string]> = [
      // A second statement after a permitted-looking CREATE (db.exec runs them all).
      ['table', 'evil_one', `CREATE TABLE evil_one (a INTEGER); CREATE TRIGGER evil_wipe AFTER INSERT ON users BEGIN DELETE FROM users; END`],
      ['table', 'evil_two', `CREATE TABLE evil_two (a INTEGER); ATTACH DATABASE '${join(t.dir, 'planted.db')}' AS planted`],
      // A trigger of the member's own on a table the replica has.
      ['trigger', 'evil_three', 'CREATE TRIGGER evil_three AFTER UPDATE ON users BEGIN UPDATE users SET is_admin = 1; END'],
      // A table the model does not have, and a model table's name with other SQL.
      ['table', 'evil_four', 'CREATE TABLE evil_four (a INTEGER)'],
      ['table', 'request_answers', 'CREATE TABLE request_answers (rk TEXT, user_id INTEGER, command TEXT, answer BLOB, at INTEGER)'],
    ];
    evil.forEach((d, i) => {
      const bytes = encode({ v: 1, schema, ddl: [d], ops: [] });
      assert.throws(() => applyEntry(replica.db, { seq: i + 1, digest: 'e' + i, items: [bytes] }), (e: unknown) => e instanceof ClusterError && e.code === 'LOG_CORRUPT', d[1]);
    });
    assert.deepEqual(replica.db.prepare('SELECT type, name, sql FROM sqlite_master ORDER BY name').all(), objectsBefore, 'the replica\'s schema changed');
    assert.equal((replica.db.pragma('database_list') as Array<{ name: string }>).some((r) => r.name === 'planted'), false, 'a database was attached');
    // This release's own first-use table still goes through.
    const ref = openClubStore({ dataDir: join(t.dir, 'r2'), clubId: 'club-e2', keys: [{ key, version: 2 }], create: true });
    try {
      ensureRequestKeys(ref.db);
      const ddl = (ref.db.prepare(`SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'request_answers' AND sql IS NOT NULL ORDER BY type DESC`).all() as Array<{ type: string; name: string; sql: string }>).map((o) => [o.type, o.name, o.sql]);
      assert.equal(applyEntry(replica.db, { seq: 10, digest: 'ok', items: [encode({ v: 1, schema, ddl, ops: [] })] }), true);
      assert.ok(replica.db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'request_answers'`).get());
    } finally {
      ref.close();
    }
  } finally {
    replica.close();
    t.cleanup();
  }
});
