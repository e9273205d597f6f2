import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clubEnv, ADMIN_PASSWORD, type ClubTestEnv, type InProcessSession } from './helpers/club-server.js';
import { ACTIONS, AREAS, ROLES, effectiveScope, roleTemplate, type Action, type Area, type Role } from '../daemon/club/rights.js';
import { CommandError } from '../daemon/edge/command-errors.js';
import { RemoteError } from '../client/errors.js';
import { DATA_COMMAND_ENTITIES } from '../daemon/club/club-commands.js';
import { FIELD_AREA } from '../daemon/club/data-areas.js';

/**
 * Point 1: every role template x area x action. Each probe is the command that exercises the
 * right, aimed at a record inside the user's scope (their register, their own person), and
 * states the rights it needs; the expected outcome is computed from the role template. Some
 * rights have no command in this issue and are listed in NO_COMMAND.
 */
type Need = [Area, Action, 'club'?];
interface Probe {
  cmd: string;
  payload: unknown;
  needs: Need[];
  upload?: Uint8Array;
  /** The answer when refused: FORBIDDEN, or NOT_FOUND where a refusal must not reveal that the record exists. */
  refused?: 'NOT_FOUND';
  /** ... except without this right at all, which is refused plainly (FORBIDDEN). */
  forbiddenWithout?: Need;
}

export const NO_COMMAND: ReadonlyArray<`${Area}:${Action}`> = [
  'backups:read', 'backups:create', 'backups:update', 'backups:delete', 'backups:export', // the backup issue
  'federationReporting:create', 'federationReporting:update', 'federationReporting:delete', // a report is derived, not edited
  'exports:create', 'exports:update', 'exports:delete', // an export is an event in the change log
  'changeLog:create', 'changeLog:update', 'changeLog:delete', // the change log is append-only
  // blocking is persons:update, lifting a block is for administrators, exports never hold blocked persons
  'blockedPersons:create', 'blockedPersons:update', 'blockedPersons:delete', 'blockedPersons:export',
];

interface Fixture {
  r1: number;
  person: number;
  event: number;
  other: number;
  blocked: number;
  docs: Record<string, number>;
  byEntity: Record<string, number>;
}

let seq = 0;
const uniq = (p: string) => `${p}${++seq}`;
const personValues = () => ({ firstName: 'Neu', lastName: uniq('Person'), photoConsent: false, blocked: false });

async function fixture(admin: InProcessSession): Promise<Fixture> {
  const id = async (cmd: string, v: unknown) => (await admin.call(cmd, v)).payload.record.id as number;
  const r1 = await id('registers.create', { name: 'Register 1' });
  const person = await id('persons.create', { firstName: 'Eigen', lastName: 'Person', city: 'Graz', birthDate: '2000-01-01', photoConsent: true, blocked: false });
  await id('registerAssignments.create', { personId: person, registerId: r1, from: '2020-01-01', leader: false });
  const blocked = await id('persons.create', { firstName: 'Gesperrt', lastName: 'Person', photoConsent: false, blocked: false });
  await id('registerAssignments.create', { personId: blocked, registerId: r1, from: '2020-01-01', leader: false });
  await admin.call('persons.update', { id: blocked, blocked: true });
  const event = await id('events.create', { kind: 'rehearsal', title: 'Probe', start: '2030-01-01T19:00', registerId: r1 });
  const other = (await admin.call('users.create', { username: 'other', password: 'other-password-1', role: 'member' })).payload.user.id;
  const byEntity: Record<string, number> = {
    fees: await id('fees.create', { personId: person, description: 'Beitrag', amountCents: 3000 }),
    memberships: await id('memberships.create', { personId: person, kind: 'active', from: '2015-01-01', insured: true }),
    offices: await id('offices.create', { personId: person, office: 'Kassier', from: '2020-01-01' }),
    inventoryItems: await id('inventoryItems.create', { kind: 'instrument', name: 'Tuba' }),
    sheetMusic: await id('sheetMusic.create', { title: 'Marsch' }),
  };
  const docs: Record<string, number> = {};
  for (const kind of ['honour', 'federation-registration', 'reporter', 'other']) {
    docs[kind] = (await admin.call('documents.upload', { kind, name: `${kind}.pdf` }, (async function* () { yield Buffer.from('%PDF-1.4 ' + kind); })())).payload.document.id;
  }
  return { r1, person, event, other, blocked, docs, byEntity };
}

/** Records a destructive probe consumes, made by the administrator right before it. */
async function prepDelete(admin: InProcessSession, f: Fixture, entity: string): Promise<number> {
  const id = async (cmd: string, v: unknown) => (await admin.call(cmd, v)).payload.record.id as number;
  switch (entity) {
    // (no register assignment: a person still referenced is not deleted, CONFLICT)
    case 'persons': return id('persons.create', personValues());
    case 'fees': return id('fees.create', { personId: f.person, description: 'x', amountCents: 1 });
    case 'memberships': return id('memberships.create', { personId: f.person, kind: 'passive', from: '2001-01-01', insured: false });
    case 'offices': return id('offices.create', { personId: f.person, office: 'Beirat', from: '2020-01-01' });
    case 'registers': return id('registers.create', { name: uniq('Reg') });
    case 'events': return id('events.create', { kind: 'meeting', title: 'x', start: '2030-05-01T19:00', registerId: f.r1 });
    case 'inventoryItems': return id('inventoryItems.create', { kind: 'uniform', name: 'Jacke' });
    case 'sheetMusic': return id('sheetMusic.create', { title: uniq('Stück') });
    case 'users': return (await admin.call('users.create', { username: uniq('tmp'), password: 'tmp-password-123' })).payload.user.id;
    default: {
      const kind = entity.slice('doc:'.length);
      return (await admin.call('documents.upload', { kind, name: 'weg.pdf' }, (async function* () { yield Buffer.from('x'); })())).payload.document.id;
    }
  }
}

const ENTITY_OF: Partial<Record<Area, { entity: string; create: () => Record<string, unknown>; update: Record<string, unknown>; target: (f: Fixture) => number }>> = {
  bank: { entity: 'fees', create: () => ({ description: 'Spende', amountCents: 500 }), update: { description: 'Beitrag 2' }, target: (f) => f.byEntity.fees! },
  memberships: { entity: 'memberships', create: () => ({ kind: 'training', from: '2024-01-01', insured: false }), update: { insured: false }, target: (f) => f.byEntity.memberships! },
  offices: { entity: 'offices', create: () => ({ office: 'Schriftführer', from: '2024-01-01' }), update: { office: 'Kassier-Stv.' }, target: (f) => f.byEntity.offices! },
  inventory: { entity: 'inventoryItems', create: () => ({ kind: 'equipment', name: 'Pult' }), update: { condition: 'gut' }, target: (f) => f.byEntity.inventoryItems! },
  sheetMusic: { entity: 'sheetMusic', create: () => ({ title: uniq('Polka') }), update: { composer: 'Mozart' }, target: (f) => f.byEntity.sheetMusic! },
};
const PERSON_REF = new Set(['fees', 'memberships', 'offices']);

async function probe(area: Area, action: Action, f: Fixture, admin: InProcessSession): Promise<Probe | undefined> {
  if (NO_COMMAND.includes(`${area}:${action}`)) return undefined;
  const simple = ENTITY_OF[area];
  if (simple) {
    const e = simple.entity;
    const withPerson = (v: Record<string, unknown>) => (PERSON_REF.has(e) ? { ...v, personId: f.person } : v);
    switch (action) {
      case 'read': return { cmd: `${e}.get`, payload: { id: simple.target(f) }, needs: [[area, 'read']] };
      case 'create': return { cmd: `${e}.create`, payload: withPerson(simple.create()), needs: [[area, 'create']] };
      case 'update': return { cmd: `${e}.update`, payload: { id: simple.target(f), ...simple.update }, needs: [[area, 'update']] };
      case 'delete': return { cmd: `${e}.delete`, payload: { id: await prepDelete(admin, f, e) }, needs: [[area, 'delete']] };
      case 'export': return { cmd: `${e}.export`, payload: {}, needs: [[area, 'export']] };
    }
  }
  if (area === 'persons') {
    switch (action) {
      case 'read': return { cmd: 'persons.get', payload: { id: f.person }, needs: [['persons', 'read']] };
      // A new person belongs to no register yet: only a club-wide right creates one.
      case 'create': return { cmd: 'persons.create', payload: personValues(), needs: [['persons', 'create', 'club']] };
      case 'update': return { cmd: 'persons.update', payload: { id: f.person, notes: uniq('n') }, needs: [['persons', 'update']] };
      case 'delete': return { cmd: 'persons.delete', payload: { id: await prepDelete(admin, f, 'persons') }, needs: [['persons', 'delete']] };
      case 'export': return { cmd: 'persons.export', payload: { fields: ['id', 'lastName'] }, needs: [['persons', 'export']] };
    }
  }
  if (area === 'contact' || area === 'sensitive') {
    const field = area === 'contact' ? 'city' : 'birthDate';
    const value = area === 'contact' ? uniq('Stadt') : '1999-12-31';
    switch (action) {
      case 'read': return { cmd: 'persons.get', payload: { id: f.person, fields: [field] }, needs: [['persons', 'read'], [area, 'read']] };
      case 'create': return { cmd: 'persons.create', payload: { ...personValues(), [field]: value }, needs: [['persons', 'create', 'club'], [area, 'create']] };
      case 'update': return { cmd: 'persons.update', payload: { id: f.person, [field]: value }, needs: [['persons', 'update'], [area, 'update']] };
      case 'delete': return { cmd: 'persons.update', payload: { id: f.person, [field]: null }, needs: [['persons', 'update'], [area, 'delete']] };
      case 'export': return { cmd: 'persons.export', payload: { fields: ['id', field] }, needs: [['persons', 'export'], [area, 'export']] };
    }
  }
  if (area === 'registers') {
    switch (action) {
      case 'read': return { cmd: 'registers.get', payload: { id: f.r1 }, needs: [['registers', 'read']] };
      case 'create': return { cmd: 'registers.create', payload: { name: uniq('R') }, needs: [['registers', 'create', 'club']] };
      case 'update': return { cmd: 'registers.update', payload: { id: f.r1, description: uniq('d') }, needs: [['registers', 'update']] };
      case 'delete': return { cmd: 'registers.delete', payload: { id: await prepDelete(admin, f, 'registers') }, needs: [['registers', 'delete', 'club']] };
      case 'export': return { cmd: 'registers.export', payload: {}, needs: [['registers', 'export']] };
    }
  }
  if (area === 'events') {
    switch (action) {
      case 'read': return { cmd: 'events.get', payload: { id: f.event }, needs: [['events', 'read']] };
      case 'create': return { cmd: 'events.create', payload: { kind: 'rehearsal', title: 'Neu', start: '2030-06-01T19:00', registerId: f.r1 }, needs: [['events', 'create']] };
      case 'update': return { cmd: 'events.update', payload: { id: f.event, location: uniq('Saal') }, needs: [['events', 'update']] };
      case 'delete': return { cmd: 'events.delete', payload: { id: await prepDelete(admin, f, 'events') }, needs: [['events', 'delete']] };
      case 'export': return { cmd: 'events.export', payload: {}, needs: [['events', 'export']] };
    }
  }
  if (area.startsWith('documents.')) {
    const kind = { 'documents.honour': 'honour', 'documents.federationRegistration': 'federation-registration', 'documents.reporter': 'reporter', 'documents.other': 'other' }[area as string]!;
    switch (action) {
      case 'read': return { cmd: 'documents.get', payload: { id: f.docs[kind] }, needs: [[area, 'read', 'club']], refused: 'NOT_FOUND' };
      case 'create': return { cmd: 'documents.upload', payload: { kind, name: 'neu.pdf' }, upload: Buffer.from('neu'), needs: [[area, 'create', 'club']] };
      case 'update': return { cmd: 'documents.update', payload: { id: f.docs[kind], name: uniq('doc') }, needs: [[area, 'update', 'club']], refused: 'NOT_FOUND' };
      case 'delete': return { cmd: 'documents.delete', payload: { id: await prepDelete(admin, f, `doc:${kind}`) }, needs: [[area, 'delete', 'club']], refused: 'NOT_FOUND' };
      case 'export': return { cmd: 'documents.export', payload: { filters: [{ field: 'kind', op: 'eq', value: kind }] }, needs: [[area, 'export', 'club']] };
    }
  }
  // A blocked person (GDPR Art. 18) of the user's register: readable only with the dedicated
  // right; without it the person does not exist.
  if (area === 'blockedPersons') return { cmd: 'persons.get', payload: { id: f.blocked }, needs: [['persons', 'read'], ['blockedPersons', 'read', 'club']], refused: 'NOT_FOUND', forbiddenWithout: ['persons', 'read'] };
  if (area === 'federationReporting') return { cmd: action === 'read' ? 'federation.report' : 'federation.export', payload: {}, needs: [[area, action, 'club']] };
  if (area === 'exports') return { cmd: action === 'read' ? 'exports.list' : 'exports.club', payload: {}, needs: [[area, action, 'club']] };
  if (area === 'changeLog') return { cmd: action === 'read' ? 'log.query' : 'log.export', payload: {}, needs: [[area, action, 'club']] };
  if (area === 'users') {
    switch (action) {
      case 'read': return { cmd: 'users.list', payload: {}, needs: [['users', 'read', 'club']] };
      case 'create': return { cmd: 'users.create', payload: { username: uniq('neu'), password: 'neu-password-123' }, needs: [['users', 'create', 'club']] };
      case 'update': return { cmd: 'users.update', payload: { id: f.other, displayName: uniq('Name') }, needs: [['users', 'update', 'club']] };
      case 'delete': return { cmd: 'users.delete', payload: { id: await prepDelete(admin, f, 'users') }, needs: [['users', 'delete', 'club']] };
      case 'export': return { cmd: 'users.export', payload: {}, needs: [['users', 'export', 'club']] };
    }
  }
  throw new Error(`no probe for ${area}:${action}`);
}

type Caller = (cmd: string, payload: unknown, upload?: Uint8Array) => Promise<string>;

async function runRole(env: ClubTestEnv, admin: InProcessSession, f: Fixture, club: string, role: Role, caller: (user: string, password: string) => Promise<Caller>): Promise<number> {
  const username = `u-${role}`;
  const password = `pw-${role}-123456`;
  await admin.call('users.create', { username, password, role, registers: [f.r1], personId: f.person });
  const call = await caller(username, password);
  const grants = roleTemplate(role, [f.r1]);
  let checked = 0;
  for (const area of AREAS) {
    for (const action of ACTIONS) {
      const p = await probe(area, action, f, admin);
      if (!p) continue;
      const missing = p.needs.find(([a, act, club]) => {
        const e = effectiveScope(grants, a, act);
        return !e || (club === 'club' && e.kind !== 'club');
      });
      const v0 = env.violations.length;
      const code = await call(p.cmd, p.payload, p.upload);
      const label = `${role} ${area}:${action} via ${p.cmd}`;
      if (!missing) {
        assert.equal(code, 'ok', `${label} should be allowed`);
        assert.equal(env.violations.length, v0, `${label}: no violation`);
      } else {
        const refused = p.refused && (!p.forbiddenWithout || effectiveScope(grants, p.forbiddenWithout[0], p.forbiddenWithout[1])) ? p.refused : 'FORBIDDEN';
        assert.equal(code, refused, `${label} should be refused (missing ${missing[0]}:${missing[1]})`);
        const v = env.violations.slice(v0).filter((x) => x.kind === 'rights');
        assert.equal(v.length, 1, `${label}: one rights violation`);
        assert.equal(v[0]!.user, username);
        assert.equal(v[0]!.club, club);
        assert.equal(v[0]!.command, p.cmd);
        assert.ok(p.needs.some(([a, act]) => v[0]!.right === `${a}:${act}`), `${label}: violation names ${v[0]!.right}`);
      }
      checked++;
    }
  }
  return checked;
}

test('every role template x area x action: allowed calls succeed, others are refused with FORBIDDEN (NOT_FOUND where the refusal must not reveal the record) and a rights violation (point 1)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const admin = env.session();
    await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const f = await fixture(admin);
    let total = 0;
    for (const role of ROLES) {
      total += await runRole(env, admin, f, club, role, async (user, password) => {
        const s = env.session('127.0.0.77');
        await s.call('auth.login', { club, user, password });
        return async (cmd, payload, upload) => {
          try {
            await s.call(cmd, payload, upload ? (async function* () { yield upload; })() : undefined);
            return 'ok';
          } catch (e) {
            if (e instanceof CommandError) return e.code;
            throw e;
          }
        };
      });
    }
    assert.equal(total, ROLES.length * (AREAS.length * ACTIONS.length - NO_COMMAND.length));
  } finally {
    await env.close();
  }
});

test('the same table over real TCP connections for a representative subset of roles (point 1)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const admin = env.session();
    await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const f = await fixture(admin);
    const { connect } = await env.listen();
    for (const role of ['treasurer', 'registerLeader', 'member'] as const) {
      const conn = await connect();
      try {
        await runRole(env, admin, f, club, role, async (user, password) => {
          await conn.request('auth.login', { club, user, password });
          return async (cmd, payload, upload) => {
            try {
              await conn.request(cmd, payload, upload ? { upload } : {});
              return 'ok';
            } catch (e) {
              if (e instanceof RemoteError) return e.code;
              throw e;
            }
          };
        });
      } finally {
        await conn.close();
      }
    }
  } finally {
    await env.close();
  }
});

/**
 * Issue 19, the side-path dimension: for every entity and every field area, a filter, a sort,
 * an export and a change-log query by a user without the right return nothing the user could
 * not read directly (entity.get / documents.get). A refusal is an acceptable answer; an answer
 * must be a subset of the direct reads, and a filter or sort on a field with its own area is
 * only applied when that field is directly readable on every row the list ranges over.
 */
test('side paths: filters, sorts, exports and the change log reveal nothing a direct read would not (issue 19)', async () => {
  const env = await clubEnv();
  try {
    const club = await env.newClub();
    const admin = env.session();
    await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    const id = async (cmd: string, v: unknown) => (await admin.call(cmd, v)).payload.record.id as number;
    const r1 = await id('registers.create', { name: 'Inside' });
    const r2 = await id('registers.create', { name: 'Outside' });
    const p1 = await id('persons.create', { firstName: 'In', lastName: 'Side', birthDate: '1990-01-01', street: 'Innen 1', city: 'Linz', emails: ['in@example.test'], photoConsent: true, blocked: false });
    const p2 = await id('persons.create', { firstName: 'Out', lastName: 'Side', birthDate: '1970-07-07', street: 'Aussen 2', city: 'Wels', emails: ['out@example.test'], photoConsent: true, blocked: false, notes: 'n' });
    await id('registerAssignments.create', { personId: p1, registerId: r1, from: '2020-01-01', leader: false });
    await id('registerAssignments.create', { personId: p2, registerId: r2, from: '2020-01-01', leader: true });
    await id('memberships.create', { personId: p2, kind: 'active', from: '2000-01-01', insured: true });
    await id('offices.create', { personId: p2, office: 'Obmann', from: '2020-01-01' });
    await id('honours.create', { personId: p2, level: 'Gold', status: 'awarded' });
    const mandate = await id('sepaMandates.create', { personId: p2, iban: 'DE89370400440532013000', accountHolder: 'Out Side', mandateReference: 'R-2' });
    await id('fees.create', { personId: p2, description: 'Beitrag', amountCents: 4242, sepaMandateId: mandate });
    const item = await id('inventoryItems.create', { kind: 'instrument', name: 'Horn', valueCents: 99900 });
    await id('inventoryLoans.create', { itemId: item, personId: p2, from: '2024-01-01', returned: false });
    const piece = await id('sheetMusic.create', { title: 'Marsch', composer: 'Fucik' });
    await id('sheetMusicLoans.create', { sheetMusicId: piece, personId: p2, from: '2024-01-01', returned: false });
    const ev = await id('events.create', { kind: 'rehearsal', title: 'Aussenprobe', start: '2030-01-01T19:00', registerId: r2 });
    await id('attendance.create', { eventId: ev, personId: p2, status: 'excused', reason: 'krank' });
    await id('attendance.create', { eventId: ev, personId: p1, status: 'present' });
    await admin.call('documents.upload', { kind: 'honour', name: 'Ehrung.pdf', personId: p2 }, (async function* () { yield Buffer.from('%PDF'); })());
    await admin.call('persons.update', { id: p2, city: 'Steyr', birthDate: '1970-07-08' });

    const reg = { kind: 'registers' as const, registers: [r1] };
    const log = { area: 'changeLog' as const, actions: ['read' as const], scope: { kind: 'club' as const } };
    const entityAreas: Area[] = ['persons', 'memberships', 'registers', 'offices', 'events', 'inventory', 'sheetMusic', 'bank'];
    const users: Record<string, { grants: unknown[]; personId?: number }> = {
      // the change log and nothing else
      logOnly: { grants: [log] },
      // every entity area for register 1 only, no field areas
      inside: { grants: [log, ...entityAreas.map((area) => ({ area, actions: ['read', 'export'], scope: reg }))] },
      // rows club-wide, field areas for the own record only
      ownFields: { grants: [log, ...entityAreas.map((area) => ({ area, actions: ['read', 'export'], scope: { kind: 'club' } })), ...(['contact', 'sensitive'] as const).map((area) => ({ area, actions: ['read', 'export'], scope: { kind: 'own' } }))], personId: p1 },
    };
    let checked = 0;
    for (const [name, u] of Object.entries(users)) {
      await admin.call('users.create', { username: name, password: `${name}-password-1`, grants: u.grants, ...(u.personId ? { personId: u.personId } : {}) });
      const s = env.session('127.0.0.78');
      await s.call('auth.login', { club, user: name, password: `${name}-password-1` });
      const attempt = async (cmd: string, payload: unknown): Promise<any | undefined> => {
        try {
          return (await s.call(cmd, payload)).payload;
        } catch (e) {
          if (e instanceof CommandError && ['FORBIDDEN', 'NOT_FOUND'].includes(e.code)) return undefined;
          throw e;
        }
      };
      const directCache = new Map<string, Record<string, unknown> | null>();
      const direct = async (entity: string, rid: number) => {
        const key = `${entity}:${rid}`;
        if (!directCache.has(key)) directCache.set(key, (await attempt(`${entity}.get`, { id: rid }))?.record ?? null);
        return directCache.get(key)!;
      };
      const subset = async (entity: string, items: Array<Record<string, unknown>> | undefined, label: string) => {
        for (const it of items ?? []) {
          const d = await direct(entity, it.id as number);
          assert.ok(d, `${name} ${label}: ${entity} ${it.id} is not directly readable`);
          for (const [k, v] of Object.entries(it)) assert.deepEqual(v, d[k], `${name} ${label}: ${entity} ${it.id}.${k}`);
        }
      };
      for (const entity of DATA_COMMAND_ENTITIES) {
        const all = await attempt(`${entity}.list`, { limit: 500 });
        await subset(entity, all?.items, 'list');
        await subset(entity, (await attempt(`${entity}.list`, { filters: [{ field: 'id', op: 'gte', value: 1 }] }))?.items, 'filter');
        await subset(entity, (await attempt(`${entity}.list`, { sort: [{ field: 'id', dir: 'desc' }] }))?.items, 'sort');
        await subset(entity, (await attempt(`${entity}.export`, {}))?.items, 'export');
        // every field with its own area: filter, sort and export-with-filter only where the field is readable on all rows
        for (const field of Object.keys(FIELD_AREA[entity] ?? {})) {
          const rows = ((await attempt(`${entity}.list`, { limit: 500 }))?.items ?? []) as Array<{ id: number }>;
          const readableEverywhere = await (async () => {
            for (const r of rows) if (!((await direct(entity, r.id)) ?? {}).hasOwnProperty(field)) return false;
            return true;
          })();
          for (const [cmd, payload] of [
            [`${entity}.list`, { filters: [{ field, op: 'isNull', value: false }] }],
            [`${entity}.list`, { sort: [{ field }] }],
            [`${entity}.export`, { filters: [{ field, op: 'isNull', value: false }] }],
          ] as const) {
            const got = await attempt(cmd, payload);
            if (got !== undefined) assert.ok(readableEverywhere && rows.length > 0, `${name} ${cmd} ${JSON.stringify(payload)} was applied on rows where ${field} is not readable`);
            await subset(entity, got?.items, `${cmd} on ${field}`);
          }
        }
        // the change log about this entity
        const entries = ((await attempt('log.query', { entity, limit: 1000 }))?.entries ?? []) as Array<{ recordId: number | null; changes: Record<string, { old: unknown; new: unknown }> | null }>;
        for (const e of entries) {
          if (e.recordId === null || e.changes === null) continue;
          const d = await direct(entity, e.recordId);
          assert.ok(d, `${name} log: ${entity} ${e.recordId} shows values but is not directly readable`);
          for (const [k, c] of Object.entries(e.changes)) {
            if (k in d) continue;
            assert.ok(c.old === '[hidden]' || c.old === '[redacted]' || c.old === null, `${name} log: ${entity} ${e.recordId}.${k} old`);
            assert.ok(c.new === '[hidden]' || c.new === '[redacted]' || c.new === null, `${name} log: ${entity} ${e.recordId}.${k} new`);
          }
        }
        checked++;
      }
    }
    assert.equal(checked, Object.keys(users).length * DATA_COMMAND_ENTITIES.length);
  } finally {
    await env.close();
  }
});
