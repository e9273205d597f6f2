import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { clubEnv, ADMIN_PASSWORD } from './helpers/club-server.js';
import { RemoteError } from '../client/errors.js';
import type { Db } from '../storage/engine/sqlcipher.js';

/** Digest of every row of every table (what "the store is unchanged" means). */
/** Every table, trigger and index; `except` leaves tables out (the change log when a logout is expected). */
function storeDigest(db: Db, except: string[] = []): string {
  const h = createHash('sha256');
  const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger', 'index') ORDER BY name`).all() as Array<{ name: string }>;
  for (const t of tables.filter((x) => !except.includes(x.name))) {
    h.update(t.name);
    const isTable = (db.prepare(`SELECT type FROM sqlite_master WHERE name = ?`).get(t.name) as { type: string }).type === 'table';
    if (isTable) for (const r of db.prepare(`SELECT * FROM "${t.name}"`).all()) h.update(JSON.stringify(r, (_k, v) => (Buffer.isBuffer(v) ? v.toString('hex') : v)));
  }
  return h.digest('hex');
}

function deep(n: number): unknown {
  let v: unknown = 'x';
  for (let i = 0; i < n; i++) v = [v];
  return v;
}

test('malformed payloads get typed errors and leave the store unchanged (point 6)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const s = env.session();
    await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const pid = (await s.call('persons.create', { firstName: 'Ida', lastName: 'Ist', photoConsent: false, blocked: false })).payload.record.id;
    const db = env.storage.openClub(club).db;
    const before = storeDigest(db);
    const person = { firstName: 'A', lastName: 'B', photoConsent: false, blocked: false };
    const cases: Array<[string, unknown]> = [
      // wrong types
      ['persons.create', { ...person, firstName: 5 }],
      ['persons.create', { ...person, photoConsent: 'yes' }],
      ['persons.create', { ...person, birthDate: '1.2.2000' }],
      ['persons.create', { ...person, phones: 'not a list' }],
      ['persons.update', { id: '1', city: 'x' }],
      ['persons.update', { id: -1, city: 'x' }],
      ['persons.update', { id: 1.5, city: 'x' }],
      ['persons.get', { id: Number.MAX_SAFE_INTEGER + 2 }],
      ['persons.list', { limit: 1e9 }],
      ['sepaMandates.create', { personId: pid, iban: 'DE00 0000 0000 0000 0000 00', accountHolder: 'x', mandateReference: 'y' }],
      ['events.create', { kind: 'party', title: 'x', start: '2030-01-01T10:00' }],
      // huge strings
      ['persons.create', { ...person, lastName: 'x'.repeat(100_000) }],
      ['persons.update', { id: pid, notes: 'n'.repeat(2001) }],
      ['persons.list', { filters: [{ field: 'lastName', op: 'contains', value: 'y'.repeat(10_000) }] }],
      ['auth.login', { club, user: 'u'.repeat(10_000), password: 'p' }],
      // deep nesting
      ['persons.create', { ...person, notes: deep(500) }],
      ['persons.list', { filters: [{ field: 'lastName', op: 'eq', value: deep(500) }] }],
      ['persons.list', { filters: deep(200) }],
      // unknown fields
      ['persons.create', { ...person, isAdmin: true }],
      ['persons.create', { ...person, id: 77 }],
      ['persons.update', { id: pid, createdAt: '2000-01-01' }],
      ['documents.update', { id: 1, file: '../../etc/passwd' }],
      ['users.create', { username: 'eve', password: 'eve-password-123', passwordHash: 'scrypt$...' }],
      ['persons.get', { id: pid, fields: ['passwordHash'] }],
      // SQL fragments where identifiers go, and in values
      ['persons.list', { filters: [{ field: 'lastName; DROP TABLE persons; --', op: 'eq', value: 'x' }] }],
      ['persons.list', { filters: [{ field: 'lastName', op: '= 1 OR 1=1 --', value: 'x' }] }],
      ['persons.list', { sort: [{ field: 'id; DELETE FROM persons', dir: 'asc' }] }],
      ['persons.list', { sort: [{ field: 'lastName', dir: 'asc; DROP TABLE persons' }] }],
      ['persons.list', { filters: [{ field: 'id', op: 'eq', value: '1 OR 1=1' }] }],
      ['persons.get', { id: '1 OR 1=1' }],
      ['persons.get', { id: pid, fields: ['*'] }],
      ['log.query', { action: "login' OR '1'='1", from: "2020-01-01'; DROP TABLE audit_log; --" }],
      ['users.create', { username: "x'; DROP TABLE users; --", password: 'sql-password-123' }],
      // not an object at all
      ['persons.create', 'DROP TABLE persons'],
      ['persons.create', [1, 2, 3]],
      ['persons.create', null],
    ];
    for (const [cmd, payload] of cases) {
      const code = await s.code(cmd, payload);
      assert.equal(code, 'BAD_REQUEST', `${cmd} ${JSON.stringify(payload).slice(0, 80)} -> ${code}`);
    }
    // SQL in values is data: a filter value with a quote finds nothing and changes nothing.
    assert.deepEqual((await s.call('persons.list', { filters: [{ field: 'lastName', op: 'eq', value: "x' OR '1'='1" }] })).payload.items, []);
    assert.deepEqual((await s.call('log.query', { action: "login' OR '1'='1" })).payload.entries, []);
    assert.equal(storeDigest(env.storage.openClub(club).db), before, 'the store is unchanged');
    // ... and stored verbatim when it is a legitimate value.
    const odd = "O'Brien\"; DROP TABLE persons; --";
    const r = await s.call('persons.create', { ...person, lastName: odd });
    assert.equal((await s.call('persons.get', { id: r.payload.record.id })).payload.record.lastName, odd);
    assert.equal((db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n, 2);
  } finally {
    await env.close();
  }
});

test('over TCP: malformed payloads are typed errors; the connection stays usable', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const { connect } = await env.listen();
    const c = await connect();
    await c.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const db = env.storage.openClub(club).db;
    const before = storeDigest(db);
    for (const payload of [{ firstName: 1 }, { firstName: 'a', lastName: 'b', photoConsent: false, blocked: false, extra: 1 }, { firstName: 'x'.repeat(20_000), lastName: 'b', photoConsent: false, blocked: false }, { firstName: deep(10), lastName: 'b' }]) {
      await assert.rejects(c.request('persons.create', payload), (e: unknown) => e instanceof RemoteError && e.code === 'BAD_REQUEST');
    }
    assert.equal(storeDigest(env.storage.openClub(club).db), before);
    assert.ok(Array.isArray(((await c.request('persons.list', {})).payload as { items: unknown[] }).items));
    // Nesting past the protocol's CBOR depth limit never reaches a handler: the connection is
    // closed and the violation recorded (docs/PROTOCOL.md).
    const dataBefore = storeDigest(env.storage.openClub(club).db, ['audit_log', 'audit_heads']);
    await assert.rejects(c.request('persons.create', { firstName: deep(40), lastName: 'b' }));
    assert.ok(env.violations.some((v) => v.kind === 'protocol'));
    assert.equal(storeDigest(env.storage.openClub(club).db, ['audit_log', 'audit_heads']), dataBefore, 'no data changed');
    // The closed connection ended the session: its logout is the one new change-log entry.
    const last = env.storage.openClub(club).db.prepare('SELECT action, changes FROM audit_log ORDER BY seq DESC LIMIT 1').get() as { action: string; changes: string };
    assert.equal(last.action, 'logout');
    assert.match(last.changes, /connection closed/);
    await c.close();
  } finally {
    await env.close();
  }
});
