import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clubEnv, ADMIN_PASSWORD } from './helpers/club-server.js';
import { RemoteError } from '../client/errors.js';

test('a register leader never sees another register\'s persons or attendance and cannot move persons (point 2)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const a = env.session();
    await a.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const mk = async (cmd: string, v: unknown) => (await a.call(cmd, v)).payload.record.id as number;
    const r1 = await mk('registers.create', { name: 'Blech' });
    const r2 = await mk('registers.create', { name: 'Holz' });
    const pa = await mk('persons.create', { firstName: 'Anton', lastName: 'Blaser', city: 'Linz', photoConsent: false, blocked: false });
    const pb = await mk('persons.create', { firstName: 'Berta', lastName: 'Holzer', city: 'Wels', photoConsent: false, blocked: false });
    const pc = await mk('persons.create', { firstName: 'Clara', lastName: 'Alt', photoConsent: false, blocked: false });
    const asA = await mk('registerAssignments.create', { personId: pa, registerId: r1, from: '2020-01-01', leader: false });
    await mk('registerAssignments.create', { personId: pb, registerId: r2, from: '2020-01-01', leader: false });
    // Clara left register 1 last year: no longer in it.
    await mk('registerAssignments.create', { personId: pc, registerId: r1, from: '2010-01-01', to: '2020-12-31', leader: false });
    const e1 = await mk('events.create', { kind: 'rehearsal', title: 'Blechprobe', start: '2030-01-01T19:00', registerId: r1 });
    const e2 = await mk('events.create', { kind: 'rehearsal', title: 'Holzprobe', start: '2030-01-02T19:00', registerId: r2 });
    const e0 = await mk('events.create', { kind: 'concert', title: 'Konzert', start: '2030-02-01T19:00' });
    const atA = await mk('attendance.create', { eventId: e1, personId: pa, status: 'present' });
    const atB = await mk('attendance.create', { eventId: e2, personId: pb, status: 'absent', reason: 'krank' });
    const leaderId = (await a.call('users.create', { username: 'lea', password: 'leader-password-1', role: 'registerLeader', registers: [r1] })).payload.user.id;

    const l = env.session('127.0.0.33');
    await l.call('auth.login', { club, user: 'lea', password: 'leader-password-1' });
    const ids = async (cmd: string, p: unknown = {}) => ((await l.call(cmd, p)).payload.items as Array<{ id: number }>).map((x) => x.id).sort();
    // lists and filters
    assert.deepEqual(await ids('persons.list'), [pa]);
    assert.deepEqual(await ids('persons.list', { filters: [{ field: 'lastName', op: 'eq', value: 'Holzer' }] }), []);
    assert.deepEqual(await ids('persons.list', { filters: [{ field: 'id', op: 'in', value: [pa, pb, pc] }] }), [pa]);
    assert.deepEqual(await ids('persons.list', { filters: [{ field: 'city', op: 'startsWith', value: 'W' }] }), []);
    assert.deepEqual(await ids('persons.list', { sort: [{ field: 'lastName', dir: 'desc' }], limit: 500 }), [pa]);
    assert.deepEqual(await ids('attendance.list'), [atA]);
    assert.deepEqual(await ids('attendance.list', { filters: [{ field: 'personId', op: 'eq', value: pb }] }), []);
    assert.deepEqual(await ids('events.list'), [e1]);
    // contact data of the own register is visible (the template grants contact:read on it)
    assert.equal((await l.call('persons.get', { id: pa })).payload.record.city, 'Linz');
    // guessed ids: not found, and reported
    const before = env.violations.length;
    for (const [cmd, id] of [['persons.get', pb], ['persons.get', pc], ['attendance.get', atB], ['events.get', e2], ['events.get', e0]] as const) {
      assert.equal(await l.code(cmd, { id }), 'NOT_FOUND', `${cmd} ${id}`);
    }
    assert.equal(env.violations.length - before, 5);
    assert.ok(env.violations.slice(before).every((v) => v.kind === 'rights' && v.user === 'lea' && v.club === club && v.ip === '127.0.0.33'));
    assert.equal(await l.code('persons.get', { id: 99_999 }), 'NOT_FOUND');
    assert.equal(env.violations.length - before, 5, 'a missing id is not a violation');
    assert.equal(await l.code('persons.update', { id: pb, notes: 'x' }), 'NOT_FOUND');
    assert.equal(await l.code('attendance.update', { id: atB, status: 'present' }), 'NOT_FOUND');
    assert.equal(await l.code('attendance.delete', { id: atB }), 'NOT_FOUND');
    // edits inside the register work
    assert.equal(await l.code('persons.update', { id: pa, notes: 'Stimmführer' }), 'ok');
    assert.equal(await l.code('attendance.update', { id: atA, status: 'late' }), 'ok');
    // moving: the template has no rights on register assignments at all
    assert.equal(await l.code('registerAssignments.update', { id: asA, registerId: r2 }), 'FORBIDDEN');
    assert.equal(await l.code('registerAssignments.create', { personId: pb, registerId: r1, from: '2024-01-01', leader: false }), 'FORBIDDEN');
    // nor events of other registers or club-wide ones
    assert.equal(await l.code('events.update', { id: e1, registerId: r2 }), 'FORBIDDEN');
    assert.equal(await l.code('events.create', { kind: 'rehearsal', title: 'x', start: '2030-03-01T19:00' }), 'FORBIDDEN');
    assert.equal(await l.code('attendance.create', { eventId: e1, personId: pb, status: 'present' }), 'NOT_FOUND', 'a person of another register is not there');
    assert.equal(await l.code('attendance.create', { eventId: e2, personId: pa, status: 'present' }), 'NOT_FOUND', 'an event of another register is not there');

    // Even with register rights on register 1 only, a move out of it or into it is refused.
    const scoped = { kind: 'registers', registers: [r1] };
    await a.call('rights.set', {
      userId: leaderId,
      grants: [
        { area: 'persons', actions: ['read', 'update'], scope: scoped },
        { area: 'registers', actions: ['read', 'create', 'update', 'delete'], scope: scoped },
        { area: 'events', actions: ['read', 'create', 'update', 'delete'], scope: scoped },
      ],
    });
    let v0 = env.violations.length;
    assert.equal(await l.code('registerAssignments.update', { id: asA, registerId: r2 }), 'NOT_FOUND', 'out of register 1 into the invisible register 2');
    assert.equal(env.violations[v0]?.right, 'registers:read');
    // and with read on register 2 (but no update there) the move is refused as a rights violation
    await a.call('rights.set', {
      userId: leaderId,
      grants: [
        { area: 'persons', actions: ['read', 'update'], scope: scoped },
        { area: 'registers', actions: ['read'], scope: { kind: 'club' } },
        { area: 'registers', actions: ['read', 'create', 'update', 'delete'], scope: scoped },
        { area: 'events', actions: ['read', 'create', 'update', 'delete'], scope: scoped },
      ],
    });
    v0 = env.violations.length;
    assert.equal(await l.code('registerAssignments.update', { id: asA, registerId: r2 }), 'FORBIDDEN', 'out of register 1 into 2');
    assert.equal(env.violations[v0]?.right, 'registers:update');
    assert.equal(await l.code('registerAssignments.create', { personId: pb, registerId: r1, from: '2024-01-01', leader: false }), 'NOT_FOUND', 'a person of register 2 is invisible');
    assert.deepEqual(await ids('registerAssignments.list', { filters: [{ field: 'registerId', op: 'eq', value: r1 }] }), [asA, asA + 2].sort(), 'assignments of register 1');
    assert.equal((await a.call('registerAssignments.get', { id: asA })).payload.record.registerId, r1, 'nothing moved');
    assert.ok(env.violations.some((v) => v.right === 'registers:update' && v.user === 'lea'));
  } finally {
    await env.close();
  }
});

test('a user of club A reaches nothing of club B, whatever ids or names the requests carry, over TCP (point 3)', async () => {
  const env = await clubEnv();
  try {
    const clubA = await env.newClub('anna', 'anna-password-123');
    const clubB = await env.newClub('bert', 'bert-password-123');
    const { connect } = await env.listen();
    const b = await connect();
    await b.request('auth.login', { club: clubB, user: 'bert', password: 'bert-password-123' });
    for (let i = 0; i < 3; i++) await b.request('persons.create', { firstName: 'Geheim', lastName: `Bmitglied${i}`, photoConsent: false, blocked: false });
    await b.request('users.create', { username: 'bertha', password: 'bertha-password-1', role: 'board' });
    await b.close();

    const a = await connect('127.0.0.44');
    await a.request('auth.login', { club: clubA, user: 'anna', password: 'anna-password-123' });
    await a.request('persons.create', { firstName: 'Anna', lastName: 'Amitglied', photoConsent: false, blocked: false });
    const seen: string[] = [];
    const tryCall = async (cmd: string, payload: unknown) => {
      try {
        seen.push(JSON.stringify((await a.request(cmd, payload)).payload));
        return 'ok';
      } catch (e) {
        assert.ok(e instanceof RemoteError, String(e));
        return e.code;
      }
    };
    for (let id = 1; id <= 5; id++) {
      await tryCall('persons.get', { id });
      await tryCall('users.get', { id });
      await tryCall('documents.download', { id });
    }
    await tryCall('persons.list', { limit: 500 });
    await tryCall('users.list', {});
    await tryCall('log.query', { limit: 1000 });
    await tryCall('persons.list', { filters: [{ field: 'lastName', op: 'startsWith', value: 'Bmitglied' }] });
    const joined = seen.join('\n');
    assert.ok(!joined.includes('Bmitglied') && !joined.includes('Geheim') && !joined.includes('bertha') && !joined.includes('bert"'), 'nothing of club B in any answer');
    const before = env.violations.length;
    for (const [cmd, payload] of [
      ['persons.list', { club: clubB }],
      ['persons.get', { id: 1, club: clubB }],
      ['users.list', { club: clubB }],
      ['log.query', { club: clubB }],
      ['persons.create', { firstName: 'X', lastName: 'Y', photoConsent: false, blocked: false, club: clubB }],
    ] as const) {
      assert.equal(await tryCall(cmd, payload), 'FORBIDDEN', cmd);
    }
    const v = env.violations.slice(before);
    assert.equal(v.length, 5);
    for (const x of v) {
      assert.equal(x.kind, 'rights');
      assert.equal(x.club, clubA);
      assert.equal(x.user, 'anna');
      assert.equal(x.ip, '127.0.0.44');
      assert.equal(x.right, `club:${clubB}`);
    }
    // Logging in to club B with club A's credentials fails like any wrong password.
    assert.equal(await tryCall('auth.login', { club: clubB, user: 'anna', password: 'anna-password-123' }), 'UNAUTHENTICATED');
    await a.close();
    const bPersons = env.storage.openClub(clubB).db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number };
    assert.equal(bPersons.n, 3, 'club B unchanged');
  } finally {
    await env.close();
  }
});
