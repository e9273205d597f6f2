/**
 * Issue 19: the authorization holes a malicious logged-in member found, one test per instance.
 * Every test starts its own club (tests/helpers/club-server.ts) and cleans up.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { clubEnv, ADMIN_PASSWORD, type ClubTestEnv, type InProcessSession } from './helpers/club-server.js';
import { registerBackupCommands } from '../daemon/backup/backup-commands.js';
import { roleTemplate, type Grant } from '../daemon/club/rights.js';

const IBAN_A = 'DE89370400440532013000';
const IBAN_T = 'GB82WEST12345698765432';

interface Club {
  env: ClubTestEnv;
  club: string;
  admin: InProcessSession;
  mk(cmd: string, v: unknown): Promise<number>;
  user(username: string, o: { grants?: Grant[]; role?: string; registers?: number[]; personId?: number }): Promise<{ id: number; s: InProcessSession }>;
  rightsViolations(from: number): Array<{ right?: string; user?: string; command?: string }>;
}

let ipSeq = 10;

async function club(): Promise<Club> {
  const env = await clubEnv();
  const c = await env.newClub();
  const admin = env.session();
  await admin.call('auth.login', { club: c, user: 'admin', password: ADMIN_PASSWORD });
  const mk = async (cmd: string, v: unknown) => (await admin.call(cmd, v)).payload.record.id as number;
  return {
    env,
    club: c,
    admin,
    mk,
    async user(username, o) {
      const password = `${username}-password-1`;
      const id = (await admin.call('users.create', { username, password, ...o })).payload.user.id as number;
      const s = env.session(`127.0.1.${ipSeq++}`);
      await s.call('auth.login', { club: c, user: username, password });
      return { id, s };
    },
    rightsViolations: (from) => env.violations.slice(from).filter((v) => v.kind === 'rights'),
  };
}

const own: Grant['scope'] = { kind: 'own' };
const clubScope: Grant['scope'] = { kind: 'club' };
const ownData: Grant[] = [
  { area: 'persons', actions: ['read'], scope: own },
  { area: 'contact', actions: ['read'], scope: own },
  { area: 'sensitive', actions: ['read'], scope: own },
  { area: 'bank', actions: ['read'], scope: own },
];
const userManager: Grant[] = [{ area: 'users', actions: ['read', 'create', 'update', 'delete'], scope: clubScope }, ...ownData];

async function people(c: Club) {
  const person = (first: string, extra: Record<string, unknown> = {}) => c.mk('persons.create', { firstName: first, lastName: 'Muster', photoConsent: false, blocked: false, ...extra });
  const me = await person('Manni', { birthDate: '1990-01-01', city: 'Linz' });
  const treasurer = await person('Tina', { birthDate: '1971-06-15', street: 'Hauptstraße 7', city: 'Graz' });
  await c.mk('sepaMandates.create', { personId: me, iban: IBAN_A, accountHolder: 'Manni Muster', mandateReference: 'M-1' });
  await c.mk('sepaMandates.create', { personId: treasurer, iban: IBAN_T, accountHolder: 'Tina Muster', mandateReference: 'M-2' });
  return { me, treasurer };
}

test('point 1: a user manager cannot re-link their own user to another person; own register assignments are refused too', async () => {
  const c = await club();
  try {
    const { me, treasurer } = await people(c);
    const { id, s } = await c.user('manni', { grants: [...userManager, { area: 'registers', actions: ['read', 'create', 'update', 'delete'], scope: clubScope }, { area: 'events', actions: ['read'], scope: own }], personId: me });
    assert.equal((await s.call('sepaMandates.list')).payload.items.length, 1);
    const v0 = c.env.violations.length;
    assert.equal(await s.code('users.update', { id, personId: treasurer }), 'FORBIDDEN');
    assert.equal(await s.code('users.update', { id, personId: null }), 'FORBIDDEN');
    const v = c.rightsViolations(v0);
    assert.equal(v.length, 2);
    assert.equal(v[0]!.right, 'users:update');
    assert.equal(v[0]!.user, 'manni');
    // still linked to their own person: the treasurer's IBAN stays out of reach
    const items = (await s.call('sepaMandates.list')).payload.items as Array<{ iban: string }>;
    assert.deepEqual(items.map((x) => x.iban), [IBAN_A]);
    assert.equal(await s.code('persons.get', { id: treasurer }), 'NOT_FOUND');
    // the display name of oneself may still be changed
    assert.equal(await s.code('users.update', { id, displayName: 'Manni M.' }), 'ok');
    // Register assignments of one's own person define the registers an own-record grant reaches.
    const r2 = await c.mk('registers.create', { name: 'Holz' });
    const ev = await c.mk('events.create', { kind: 'rehearsal', title: 'Holzprobe', start: '2030-01-01T19:00', registerId: r2 });
    const v1 = c.env.violations.length;
    assert.equal(await s.code('registerAssignments.create', { personId: me, registerId: r2, from: '2020-01-01', leader: true }), 'FORBIDDEN');
    assert.equal(c.rightsViolations(v1)[0]?.right, 'registers:create');
    assert.equal(await s.code('events.get', { id: ev }), 'NOT_FOUND');
    const asMe = await c.mk('registerAssignments.create', { personId: me, registerId: r2, from: '2020-01-01', leader: false });
    assert.equal(await s.code('registerAssignments.update', { id: asMe, leader: true }), 'FORBIDDEN');
    assert.equal(await s.code('registerAssignments.delete', { id: asMe }), 'FORBIDDEN');
    // Assignments decide whom a register grant reaches: a leader with contact data for register 1
    // cannot assign someone else to register 1 to read their address.
    const r1 = await c.mk('registers.create', { name: 'Blech' });
    const stranger = await c.mk('persons.create', { firstName: 'Sara', lastName: 'Fremd', street: 'Geheimgasse 3', photoConsent: false, blocked: false });
    await c.mk('registerAssignments.create', { personId: stranger, registerId: r2, from: '2020-01-01', leader: false });
    const lea = await c.user('lea', { grants: [
      { area: 'persons', actions: ['read'], scope: clubScope },
      { area: 'contact', actions: ['read'], scope: { kind: 'registers', registers: [r1] } },
      { area: 'registers', actions: ['read', 'create', 'update'], scope: clubScope },
    ] });
    const v2 = c.env.violations.length;
    assert.equal(await lea.s.code('registerAssignments.create', { personId: stranger, registerId: r1, from: '2024-01-01', leader: false }), 'FORBIDDEN');
    const asStranger = (await c.admin.call('registerAssignments.list', { filters: [{ field: 'personId', op: 'eq', value: stranger }] })).payload.items[0].id as number;
    assert.equal(await lea.s.code('registerAssignments.update', { id: asStranger, registerId: r1 }), 'FORBIDDEN');
    assert.deepEqual(c.rightsViolations(v2).map((v) => v.right), ['contact:read', 'contact:read']);
    assert.equal((await lea.s.call('persons.get', { id: stranger })).payload.record.street, undefined);
    // into a register where the caller's grants reach no further: allowed
    assert.equal(await lea.s.code('registerAssignments.create', { personId: stranger, registerId: r2, from: '2024-01-01', to: '2024-12-31', leader: false }), 'ok');
    // and an administrator re-links users, themselves included
    assert.equal(await c.admin.code('users.update', { id, personId: treasurer }), 'ok');
  } finally {
    await c.env.close();
  }
});

test('point 2: an action on another account needs the power to grant everything that account holds', async () => {
  const c = await club();
  try {
    const { me, treasurer } = await people(c);
    const { s } = await c.user('manni', { grants: userManager, personId: me });
    const t = await c.user('tina', { role: 'treasurer', personId: treasurer });
    const v0 = c.env.violations.length;
    const attempts: Array<[string, Record<string, unknown>]> = [
      ['users.resetPassword', { id: t.id, password: 'chosen-by-manni-1' }],
      ['users.resetPassword', { id: t.id }],
      ['users.disable', { id: t.id }],
      ['users.enable', { id: t.id }],
      ['users.delete', { id: t.id }],
      ['users.update', { id: t.id, personId: me }],
      ['users.update', { id: t.id, displayName: 'x' }],
      ['rights.set', { userId: t.id, grants: [] }],
    ];
    for (const [cmd, payload] of attempts) assert.equal(await s.code(cmd, payload), 'FORBIDDEN', cmd);
    const v = c.rightsViolations(v0);
    assert.equal(v.length, attempts.length);
    assert.ok(v.every((x) => x.user === 'manni' && x.right !== undefined && /^(persons|contact|memberships|bank|exports):/.test(x.right)), JSON.stringify(v.map((x) => x.right)));
    // the treasurer's password is unchanged
    const probe = c.env.session('127.0.2.1');
    assert.equal(await probe.code('auth.login', { club: c.club, user: 'tina', password: 'chosen-by-manni-1' }), 'UNAUTHENTICATED');
    assert.equal(await probe.code('auth.login', { club: c.club, user: 'tina', password: 'tina-password-1' }), 'ok');
    // A member-template account holds own bank data: still more than the manager could grant.
    const m = await c.user('mia', { role: 'member' });
    assert.equal(await s.code('users.resetPassword', { id: m.id }), 'FORBIDDEN');
    // An account holding no more than the manager holds club-wide: allowed.
    const plain = await c.user('paul', { grants: [{ area: 'users', actions: ['read'], scope: clubScope }] });
    assert.equal(await s.code('users.resetPassword', { id: plain.id }), 'ok');
    assert.equal(await s.code('users.disable', { id: plain.id }), 'ok');
    assert.equal(await s.code('users.delete', { id: plain.id }), 'ok');
  } finally {
    await c.env.close();
  }
});

test('point 3: filters and sorts only on fields readable on every row in question; persons.export alike', async () => {
  const c = await club();
  try {
    const r1 = await c.mk('registers.create', { name: 'Blech' });
    const r2 = await c.mk('registers.create', { name: 'Holz' });
    const pa = await c.mk('persons.create', { firstName: 'Anton', lastName: 'A', birthDate: '1980-03-03', street: 'Amselweg 1', photoConsent: false, blocked: false });
    const pb = await c.mk('persons.create', { firstName: 'Berta', lastName: 'B', birthDate: '1975-05-05', street: 'Birkenweg 2', photoConsent: false, blocked: false });
    await c.mk('registerAssignments.create', { personId: pa, registerId: r1, from: '2020-01-01', leader: false });
    await c.mk('registerAssignments.create', { personId: pb, registerId: r2, from: '2020-01-01', leader: false });
    // A conductor with birth dates readable for the own record only.
    const cond = await c.user('conny', { grants: [...roleTemplate('conductor'), { area: 'sensitive', actions: ['read'], scope: own }, { area: 'persons', actions: ['export'], scope: clubScope }], personId: pa });
    const v0 = c.env.violations.length;
    assert.equal(await cond.s.code('persons.list', { filters: [{ field: 'birthDate', op: 'lt', value: '1978-01-01' }] }), 'FORBIDDEN');
    assert.equal(await cond.s.code('persons.list', { sort: [{ field: 'birthDate' }] }), 'FORBIDDEN');
    assert.equal(await cond.s.code('persons.list', { filters: [{ field: 'birthDate', op: 'isNull', value: false }] }), 'FORBIDDEN');
    assert.equal(c.rightsViolations(v0).length, 3);
    assert.ok(c.rightsViolations(v0).every((v) => v.right === 'sensitive:read'));
    // the birth date itself is shown for the own record only
    const items = (await cond.s.call('persons.list')).payload.items as Array<{ id: number; birthDate?: string }>;
    assert.deepEqual(items.map((p) => [p.id, p.birthDate]), [[pa, '1980-03-03'], [pb, undefined]]);
    // A register leader with contact data for the own register but persons club-wide.
    const lea = await c.user('lea', { grants: [{ area: 'persons', actions: ['read', 'export'], scope: clubScope }, { area: 'contact', actions: ['read', 'export'], scope: { kind: 'registers', registers: [r1] } }] });
    const v1 = c.env.violations.length;
    assert.equal(await lea.s.code('persons.list', { filters: [{ field: 'street', op: 'startsWith', value: 'B' }] }), 'FORBIDDEN');
    assert.equal(await lea.s.code('persons.export', { filters: [{ field: 'street', op: 'startsWith', value: 'B' }] }), 'FORBIDDEN');
    assert.equal(await lea.s.code('persons.export', { sort: [{ field: 'street', dir: 'desc' }] }), 'FORBIDDEN');
    assert.deepEqual(c.rightsViolations(v1).map((v) => v.right), ['contact:read', 'contact:export', 'contact:export']);
    // Where the field's scope covers the list's, the filter works.
    const lea2 = await c.user('lea2', { role: 'registerLeader', registers: [r1] });
    const got = (await lea2.s.call('persons.list', { filters: [{ field: 'street', op: 'startsWith', value: 'A' }] })).payload.items as Array<{ id: number }>;
    assert.deepEqual(got.map((p) => p.id), [pa]);
    assert.equal(await c.admin.code('persons.list', { filters: [{ field: 'birthDate', op: 'lt', value: '1978-01-01' }] }), 'ok');
  } finally {
    await c.env.close();
  }
});

test('point 4: blocked persons are hidden from lists, exports, memberships and reports, read only with the right (logged), edited by nobody, unblocked by an administrator', async () => {
  const c = await club();
  try {
    const r1 = await c.mk('registers.create', { name: 'Blech' });
    const pa = await c.mk('persons.create', { firstName: 'Anton', lastName: 'A', photoConsent: false, blocked: false });
    const pb = await c.mk('persons.create', { firstName: 'Berta', lastName: 'B', photoConsent: false, blocked: false });
    for (const p of [pa, pb]) {
      await c.mk('registerAssignments.create', { personId: p, registerId: r1, from: '2020-01-01', leader: false });
      await c.mk('memberships.create', { personId: p, kind: 'active', from: '2000-01-01', insured: true });
    }
    const lea = await c.user('lea', { role: 'registerLeader', registers: [r1] });
    const board = await c.user('bob', { role: 'board' });
    // a register leader may block (persons:update in the register) ...
    assert.equal(await lea.s.code('persons.update', { id: pb, blocked: true }), 'ok');
    // ... and from then on the person does not exist for them
    const ids = async (s: InProcessSession, cmd: string, p: unknown = {}) => ((await s.call(cmd, p)).payload.items as Array<{ id: number; personId?: number }>).map((x) => x.personId ?? x.id);
    assert.deepEqual(await ids(lea.s, 'persons.list'), [pa]);
    const v0 = c.env.violations.length;
    assert.equal(await lea.s.code('persons.get', { id: pb }), 'NOT_FOUND');
    assert.equal(await lea.s.code('persons.update', { id: pb, notes: 'x' }), 'NOT_FOUND');
    assert.equal(await lea.s.code('persons.update', { id: pb, blocked: false }), 'NOT_FOUND');
    assert.equal(c.rightsViolations(v0).length, 3);
    // lists and exports of the board: persons, memberships, register membership, club export, federation report
    assert.deepEqual(await ids(board.s, 'persons.list'), [pa]);
    assert.deepEqual(await ids(board.s, 'persons.export'), [pa]);
    assert.deepEqual(await ids(board.s, 'memberships.list'), [pa]);
    assert.deepEqual(await ids(board.s, 'memberships.export'), [pa]);
    const admin = c.admin;
    assert.deepEqual(((await admin.call('federation.report')).payload.members as Array<{ personId: number }>).map((m) => m.personId), [pa]);
    assert.deepEqual(((await admin.call('federation.export')).payload.members as Array<{ personId: number }>).map((m) => m.personId), [pa]);
    const all = (await admin.call('exports.club')).payload.data as Record<string, Array<{ id: number; personId?: number }>>;
    assert.deepEqual(all.persons!.map((p) => p.id), [pa]);
    assert.deepEqual(all.registerAssignments!.map((p) => p.personId), [pa]);
    assert.deepEqual(all.memberships!.map((p) => p.personId), [pa]);
    // readable with the dedicated right, each access logged
    const dpo = await c.user('dora', { grants: [{ area: 'persons', actions: ['read', 'update'], scope: clubScope }, { area: 'blockedPersons', actions: ['read'], scope: clubScope }] });
    const seen = (await dpo.s.call('persons.get', { id: pb })).payload.record;
    assert.equal(seen.blocked, true);
    assert.deepEqual((await ids(dpo.s, 'persons.list')).sort(), [pa, pb].sort());
    const log = (await admin.call('log.query', { action: 'read.blocked' })).payload.entries as Array<{ user: string; changes: { ids: number[] } }>;
    assert.equal(log.length, 2);
    assert.ok(log.every((e) => e.user === 'dora' && e.changes.ids.includes(pb)));
    // no edits, not even by the right holder (who sees the block: CONFLICT); lifting the block:
    // administrators only (FORBIDDEN and a violation for anyone else)
    const v1 = c.env.violations.length;
    assert.equal(await dpo.s.code('persons.update', { id: pb, notes: 'x' }), 'CONFLICT');
    assert.equal(await dpo.s.code('persons.update', { id: pb, blocked: false }), 'FORBIDDEN');
    assert.deepEqual(c.rightsViolations(v1).map((v) => v.right), ['blockedPersons:update']);
    const v2 = c.env.violations.length;
    assert.equal(await admin.code('persons.update', { id: pb, firstName: 'Bertha' }), 'CONFLICT');
    assert.equal(await admin.code('persons.delete', { id: pb }), 'CONFLICT');
    assert.equal(await admin.code('fees.create', { personId: pb, description: 'Beitrag', amountCents: 100 }), 'CONFLICT');
    const ms = (await admin.call('memberships.list')).payload.items as Array<{ id: number; personId: number }>;
    assert.equal(await admin.code('memberships.update', { id: ms.find((m) => m.personId === pb)!.id, insured: false }), 'CONFLICT');
    assert.equal(c.env.violations.length, v2, 'refusals the caller could foresee are no violations');
    assert.equal(await admin.code('persons.update', { id: pb, blocked: false }), 'ok');
    assert.deepEqual((await ids(lea.s, 'persons.list')).sort(), [pa, pb].sort());
  } finally {
    await c.env.close();
  }
});

interface LogEntry { entity: string | null; recordId: number | null; action: string; changes: Record<string, { old: unknown; new: unknown }> | null; hidden?: boolean }

test('point 5: the change log shows each entry only as far as the reader may see the record; reasons of absence are never logged in clear', async () => {
  const c = await club();
  try {
    const r1 = await c.mk('registers.create', { name: 'Blech' });
    const r2 = await c.mk('registers.create', { name: 'Holz' });
    const mine = await c.mk('persons.create', { firstName: 'Anton', lastName: 'A', birthDate: '1980-03-03', city: 'Linz', emails: ['a@example.test'], photoConsent: false, blocked: false, notes: 'mine' });
    const other = await c.mk('persons.create', { firstName: 'Berta', lastName: 'B', birthDate: '1975-05-05', city: 'Wels', emails: ['b@example.test'], photoConsent: false, blocked: false, notes: 'secret note' });
    await c.mk('registerAssignments.create', { personId: mine, registerId: r1, from: '2020-01-01', leader: false });
    await c.mk('registerAssignments.create', { personId: other, registerId: r2, from: '2020-01-01', leader: false });
    const ev = await c.mk('events.create', { kind: 'rehearsal', title: 'Holzprobe', start: '2030-01-01T19:00', registerId: r2 });
    const att = await c.mk('attendance.create', { eventId: ev, personId: other, status: 'excused', reason: 'sick: influenza' });
    const fee = await c.mk('fees.create', { personId: other, description: 'Beitrag', amountCents: 4200 });
    const doc = (await c.admin.call('documents.upload', { kind: 'honour', name: 'Ehrung Berta.pdf', personId: other }, (async function* () { yield Buffer.from('%PDF'); })())).payload.document.id as number;
    await c.admin.call('users.create', { username: 'kim', password: 'kim-password-123', role: 'treasurer' });
    await c.admin.call('persons.update', { id: other, city: 'Steyr', birthDate: '1975-05-06' });
    // an export entry records its filters: a filter value is data too
    await c.admin.call('persons.export', { filters: [{ field: 'city', op: 'eq', value: 'Wels' }, { field: 'lastName', op: 'eq', value: 'B' }] });
    const reg = { kind: 'registers' as const, registers: [r1] };
    const reader = await c.user('rita', { grants: [
      { area: 'changeLog', actions: ['read', 'export'], scope: clubScope },
      { area: 'persons', actions: ['read'], scope: reg },
      { area: 'contact', actions: ['read'], scope: reg },
      { area: 'events', actions: ['read'], scope: reg },
    ] });
    const entries = (await reader.s.call('log.query', { limit: 1000 })).payload.entries as LogEntry[];
    const about = (entity: string, id: number) => entries.filter((e) => e.entity === entity && e.recordId === id);
    for (const [entity, id] of [['persons', other], ['attendance', att], ['fees', fee], ['documents', doc], ['users', 2]] as const) {
      const es = about(entity, id);
      assert.ok(es.length > 0, `${entity} ${id} has entries`);
      for (const e of es) assert.deepEqual([e.changes, e.hidden], [null, true], `${entity} ${id} ${e.action}`);
    }
    // the own register's person: values, but not the birth date (no sensitive right)
    const m = about('persons', mine)[0]!;
    assert.equal(m.changes!.city!.new, 'Linz');
    assert.deepEqual(m.changes!.birthDate, { old: '[hidden]', new: '[hidden]' });
    assert.equal(m.changes!.notes!.new, 'mine');
    const exp = entries.find((e) => e.action === 'export' && e.entity === 'persons')!;
    assert.deepEqual((exp.changes as unknown as { filters: unknown[] }).filters, [{ field: 'city', op: 'eq', value: '[hidden]' }, { field: 'lastName', op: 'eq', value: 'B' }]);
    // the export gives the same
    const exported = (await reader.s.call('log.export')).payload.entries as LogEntry[];
    assert.ok(exported.filter((e) => e.entity === 'persons' && e.recordId === other).every((e) => e.changes === null));
    // nothing of the other person's values anywhere in the answer
    const text = JSON.stringify(entries) + JSON.stringify(exported);
    for (const secret of ['Wels', 'Steyr', '1975-05', 'b@example.test', 'secret note', 'influenza', '4200', 'Ehrung Berta']) assert.ok(!text.includes(secret), secret);
    // Reasons of absence are special-category data: even the administrator's log shows no value.
    const adminEntries = (await c.admin.call('log.query', { entity: 'attendance' })).payload.entries as LogEntry[];
    assert.equal(adminEntries[0]!.changes!.reason!.new, '[redacted]');
    assert.ok(!JSON.stringify(adminEntries).includes('influenza'));
  } finally {
    await c.env.close();
  }
});

test('point 6: answers to writes show only what the caller may read; the member template sees only its own attendance and reasons', async () => {
  const c = await club();
  try {
    const r1 = await c.mk('registers.create', { name: 'Blech' });
    const pa = await c.mk('persons.create', { firstName: 'Anton', lastName: 'A', birthDate: '1980-03-03', city: 'Linz', photoConsent: false, blocked: false });
    const pb = await c.mk('persons.create', { firstName: 'Berta', lastName: 'B', photoConsent: false, blocked: false });
    await c.mk('registerAssignments.create', { personId: pa, registerId: r1, from: '2020-01-01', leader: false });
    const ev = await c.mk('events.create', { kind: 'rehearsal', title: 'Probe', start: '2030-01-01T19:00' });
    const atA = await c.mk('attendance.create', { eventId: ev, personId: pa, status: 'excused', reason: 'sick: migraine' });
    const atB = await c.mk('attendance.create', { eventId: ev, personId: pb, status: 'excused', reason: 'sick: flu' });
    // update without read: the answer is the id and every given field
    const w = await c.user('walt', { grants: [{ area: 'persons', actions: ['update'], scope: clubScope }, { area: 'sensitive', actions: ['update'], scope: clubScope }] });
    const r = (await w.s.call('persons.update', { id: pa, birthDate: '1980-03-03', lastName: 'A' })).payload;
    assert.deepEqual(r.record, { id: pa });
    assert.deepEqual(r.changed.sort(), ['birthDate', 'lastName'], 'equal values are not revealed as unchanged');
    const r2 = (await w.s.call('persons.update', { id: pa, birthDate: '1911-11-11' })).payload;
    assert.deepEqual(r2.changed, ['birthDate']);
    const ev2 = await c.user('evi', { grants: [{ area: 'events', actions: ['create', 'update'], scope: clubScope }] });
    const created = (await ev2.s.call('events.create', { kind: 'meeting', title: 'Sitzung', start: '2030-02-01T19:00', location: 'Saal' })).payload.record;
    assert.deepEqual(Object.keys(created), ['id']);
    // with read: the full record as before
    const full = (await c.admin.call('persons.update', { id: pa, notes: 'n' })).payload;
    assert.equal(full.record.city, 'Linz');
    assert.deepEqual(full.changed, ['notes']);
    // the member template: own attendance with its reason, nobody else's
    const mem = await c.user('anton', { role: 'member', personId: pa });
    const items = (await mem.s.call('attendance.list')).payload.items as Array<{ id: number; reason?: string }>;
    assert.deepEqual(items.map((x) => [x.id, x.reason]), [[atA, 'sick: migraine']]);
    assert.equal(await mem.s.code('attendance.get', { id: atB }), 'NOT_FOUND');
    // a register leader sees the attendance of the register, without reasons (no sensitive right)
    const lea = await c.user('lea', { role: 'registerLeader', registers: [r1] });
    const li = (await lea.s.call('attendance.list')).payload.items as Array<{ id: number; reason?: string }>;
    assert.deepEqual(li.map((x) => [x.id, x.reason]), [[atA, undefined]]);
    assert.equal(await lea.s.code('attendance.list', { filters: [{ field: 'reason', op: 'contains', value: 'sick' }] }), 'FORBIDDEN');
  } finally {
    await c.env.close();
  }
});

async function firstChunkThen(download: AsyncIterable<Uint8Array>, between: () => Promise<void>): Promise<{ before: number; error: unknown }> {
  const it = download[Symbol.asyncIterator]();
  const first = await it.next();
  assert.ok(!first.done);
  await between();
  try {
    for (;;) {
      const r = await it.next();
      if (r.done) return { before: first.value.length, error: undefined };
    }
  } catch (e) {
    return { before: first.value.length, error: e };
  }
}

test('point 7: disabling a user or withdrawing the right ends their document and backup downloads in flight', async () => {
  const c = await club();
  try {
    registerBackupCommands(c.env.dispatcher, c.env.services, { passphraseLog2N: 10 });
    const big = randomBytes(3 << 20);
    const doc = (await c.admin.call('documents.upload', { kind: 'other', name: 'gross.bin' }, (async function* () { for (let i = 0; i < big.length; i += 1 << 20) yield big.subarray(i, i + (1 << 20)); })())).payload.document.id as number;
    await c.admin.call('backup.setPassphrase', { passphrase: 'our backup passphrase 1' });
    const grants: Grant[] = [{ area: 'documents.other', actions: ['read'], scope: clubScope }, { area: 'backups', actions: ['export'], scope: clubScope }];
    const u = await c.user('dana', { grants });
    // disabled mid-stream
    const d1 = await firstChunkThen((await u.s.call('documents.download', { id: doc })).download!, async () => {
      await c.admin.call('users.disable', { id: u.id });
    });
    assert.equal((d1.error as { code?: string })?.code, 'UNAUTHENTICATED');
    assert.ok(d1.before < big.length);
    await c.admin.call('users.enable', { id: u.id });
    const u2 = c.env.session('127.0.3.1');
    await u2.call('auth.login', { club: c.club, user: 'dana', password: 'dana-password-1' });
    // rights withdrawn mid-stream
    const d2 = await firstChunkThen((await u2.call('documents.download', { id: doc })).download!, async () => {
      await c.admin.call('rights.set', { userId: u.id, grants: [{ area: 'backups', actions: ['export'], scope: clubScope }] });
    });
    assert.equal((d2.error as { code?: string })?.code, 'FORBIDDEN');
    // backup download: disabled mid-stream
    const b = await firstChunkThen((await u2.call('backup.download')).download!, async () => {
      await c.admin.call('users.disable', { id: u.id });
    });
    assert.equal((b.error as { code?: string })?.code, 'UNAUTHENTICATED');
    // an upload in flight stops too, and leaves no document behind
    await c.admin.call('users.enable', { id: u.id });
    await c.admin.call('rights.set', { userId: u.id, grants: [{ area: 'documents.other', actions: ['read', 'create'], scope: clubScope }] });
    const up = c.env.session('127.0.3.2');
    await up.call('auth.login', { club: c.club, user: 'dana', password: 'dana-password-1' });
    const before = ((await c.admin.call('documents.list')).payload.items as unknown[]).length;
    const chunks = (async function* () {
      yield big.subarray(0, 1 << 20);
      await c.admin.call('users.disable', { id: u.id });
      yield big.subarray(1 << 20, 2 << 20);
      yield big.subarray(2 << 20);
    })();
    await assert.rejects(up.call('documents.upload', { kind: 'other', name: 'spät.bin' }, chunks), (e: { code?: string }) => e.code === 'UNAUTHENTICATED');
    assert.equal(((await c.admin.call('documents.list')).payload.items as unknown[]).length, before);
    // the same over a real connection: the stream ends with the typed error, the connection lives on
    await c.admin.call('users.enable', { id: u.id });
    await c.admin.call('rights.set', { userId: u.id, grants });
    const { connect } = await c.env.listen();
    const conn = await connect('127.0.3.3');
    try {
      await conn.request('auth.login', { club: c.club, user: 'dana', password: 'dana-password-1' });
      const tcp = await firstChunkThen((await conn.request('documents.download', { id: doc })).download!, async () => {
        await c.admin.call('users.disable', { id: u.id });
      });
      assert.equal((tcp.error as { code?: string })?.code, 'UNAUTHENTICATED');
      assert.equal(await conn.request('auth.whoami', {}).then(() => 'ok', (e: { code?: string }) => e.code), 'UNAUTHENTICATED');
    } finally {
      await conn.close();
    }
    // an unrevoked download runs to the end
    let n = 0;
    for await (const piece of (await c.admin.call('documents.download', { id: doc })).download!) n += piece.length;
    assert.equal(n, big.length);
  } finally {
    await c.env.close();
  }
});

test('point 8: combined grants are the union of their scopes (register leader + member template reads the own record outside the register)', async () => {
  const c = await club();
  try {
    const r1 = await c.mk('registers.create', { name: 'Blech' });
    const r2 = await c.mk('registers.create', { name: 'Holz' });
    const me = await c.mk('persons.create', { firstName: 'Lea', lastName: 'L', city: 'Linz', photoConsent: false, blocked: false });
    const pa = await c.mk('persons.create', { firstName: 'Anton', lastName: 'A', photoConsent: false, blocked: false });
    const pb = await c.mk('persons.create', { firstName: 'Berta', lastName: 'B', photoConsent: false, blocked: false });
    await c.mk('registerAssignments.create', { personId: me, registerId: r2, from: '2020-01-01', leader: false });
    await c.mk('registerAssignments.create', { personId: pa, registerId: r1, from: '2020-01-01', leader: false });
    await c.mk('registerAssignments.create', { personId: pb, registerId: r2, from: '2020-01-01', leader: false });
    const lea = await c.user('lea', { grants: [...roleTemplate('registerLeader', [r1]), ...roleTemplate('member')], personId: me });
    const v0 = c.env.violations.length;
    const got = (await lea.s.call('persons.get', { id: me })).payload.record;
    assert.equal(got.city, 'Linz');
    const ids = ((await lea.s.call('persons.list')).payload.items as Array<{ id: number }>).map((x) => x.id).sort();
    assert.deepEqual(ids, [me, pa].sort());
    assert.equal(c.rightsViolations(v0).length, 0, 'a legitimate read is no violation');
    assert.equal(await lea.s.code('persons.get', { id: pb }), 'NOT_FOUND', 'the rest of register 2 stays out of reach');
  } finally {
    await c.env.close();
  }
});

test('point 9: an existing document of an unreadable kind and a missing one answer alike', async () => {
  const c = await club();
  try {
    const doc = (await c.admin.call('documents.upload', { kind: 'honour', name: 'e.pdf' }, (async function* () { yield Buffer.from('%PDF'); })())).payload.document.id as number;
    const u = await c.user('sec', { role: 'secretary' });
    const answer = async (cmd: string, payload: unknown) => {
      try {
        await u.s.call(cmd, payload);
        return 'ok';
      } catch (e) {
        return `${(e as { code: string }).code}: ${(e as Error).message.replace(String((payload as { id: number }).id), 'N')}`;
      }
    };
    for (const cmd of ['documents.get', 'documents.download', 'documents.delete']) {
      const existing = await answer(cmd, { id: doc });
      const missing = await answer(cmd, { id: doc + 1000 });
      assert.equal(existing, missing, cmd);
      assert.match(existing, /^NOT_FOUND/);
    }
    assert.equal(await answer('documents.update', { id: doc, name: 'x' }), await answer('documents.update', { id: doc + 1000, name: 'x' }));
  } finally {
    await c.env.close();
  }
});
