/**
 * Answers cut by bytes (PROTOCOL.md 7.4, 7.5): every command that answers a list gives, over a
 * real connection, fewer items plus a continuation when the whole list would pass one record,
 * never TOO_LARGE; paging with the continuation yields every item exactly once.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv, type InProcessSession } from './helpers/club-server.js';
import type { Connection } from '../client/connection.js';
import { listAll, pages } from '../client/paging.js';
import { MAX_ANSWER_PAYLOAD, cborSize, fitItems } from '../protocol/answer-size.js';
import { encodeMessage } from '../protocol/messages.js';

const N_PERSONS = 120;
const N_USERS = 110;
const N_DOCS = 100;
const N_EXPORTS = 90;
// Three-byte UTF-8 characters make records large: a person's notes alone is about 6,000 bytes.
const wide = (n: number, tag: string) => (tag + '€'.repeat(n)).slice(0, n);

let env: ClubTestEnv;
let conn: Connection;
let admin: InProcessSession;

before(async () => {
  env = await clubEnv();
  const club = await env.newClub();
  admin = env.session();
  await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  for (let i = 0; i < N_PERSONS; i++) {
    const p = (await admin.call('persons.create', { firstName: wide(100, `F${i}`), lastName: wide(100, `L${i}`), street: wide(200, 's'), city: wide(100, 'c'), notes: wide(2000, `n${i}`) })).payload.record;
    await admin.call('memberships.create', { personId: p.id, kind: 'active', from: '2001-01-01' });
  }
  for (let i = 0; i < N_USERS; i++) await admin.call('users.create', { username: `user${String(i).padStart(3, '0')}`, password: 'A-long-enough-password', displayName: wide(200, `u${i}`) });
  for (let i = 0; i < N_DOCS; i++) await admin.call('documents.upload', { kind: 'other', name: wide(255, `d${i}`) }, (async function* () { yield Buffer.from(`doc ${i}`); })());
  for (let i = 0; i < N_EXPORTS; i++) await admin.call('registers.export', { filters: [{ field: 'name', op: 'contains', value: wide(200, `x${i}`) }] });
  const l = await env.listen();
  conn = await l.connect();
  await conn.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
});

after(async () => {
  await conn?.close();
  await env?.close();
});

/** Pages a list over the connection; each answer must be cut (fewer than asked) and fit one record. */
async function walk(command: string, payload: Record<string, unknown>, key: string): Promise<{ items: Array<Record<string, unknown>>; pageCount: number }> {
  const items: Array<Record<string, unknown>> = [];
  let pageCount = 0;
  for await (const page of pages(conn, command, payload)) {
    pageCount++;
    assert.ok(cborSize(page) <= MAX_ANSWER_PAYLOAD, `${command} page ${pageCount} within the bound`);
    items.push(...(page[key] as Array<Record<string, unknown>>));
  }
  return { items, pageCount };
}

function once(items: Array<Record<string, unknown>>, id: (x: Record<string, unknown>) => unknown, expected: number, what: string): void {
  const ids = items.map(id);
  assert.equal(new Set(ids).size, ids.length, `${what}: no item twice`);
  assert.equal(ids.length, expected, `${what}: every item`);
}

test('persons.list at limit 500 with large records: cut by bytes, cursor and offset paging yield every person once', async () => {
  const first = (await conn.request('persons.list', { limit: 500 })).payload as { items: unknown[]; nextCursor: string | null; nextOffset: number | null };
  assert.ok(first.items.length > 0 && first.items.length < N_PERSONS, 'fewer items than asked');
  assert.equal(typeof first.nextCursor, 'string');
  assert.equal(first.nextOffset, first.items.length, 'offset continues after the last item given');
  const byCursor = await walk('persons.list', { limit: 500 }, 'items');
  assert.ok(byCursor.pageCount > 1);
  once(byCursor.items, (x) => x.id, N_PERSONS, 'cursor pages');
  // Offset paging: nextOffset of each page.
  const byOffset: Array<Record<string, unknown>> = [];
  for (let offset = 0; ; ) {
    const r = (await conn.request('persons.list', { limit: 500, offset, sort: [{ field: 'lastName', dir: 'desc' }] })).payload as { items: Array<Record<string, unknown>>; nextOffset: number | null };
    byOffset.push(...r.items);
    if (r.nextOffset === null) break;
    offset = r.nextOffset;
  }
  once(byOffset, (x) => x.id, N_PERSONS, 'offset pages');
  // A sorted cursor walk.
  once((await walk('persons.list', { limit: 500, sort: [{ field: 'lastName', dir: 'desc' }] }, 'items')).items, (x) => x.id, N_PERSONS, 'sorted cursor pages');
  // Sorted on a 2,000-character text: the cursor cannot carry the value, and names the row instead.
  once((await walk('persons.list', { limit: 500, sort: [{ field: 'notes', dir: 'desc' }, { field: 'street' }] }, 'items')).items, (x) => x.id, N_PERSONS, 'cursor pages sorted on long text');
});

test('every other list command answers within the bound and pages to every item once', async () => {
  const cases: Array<[string, Record<string, unknown>, string, (x: Record<string, unknown>) => unknown, number]> = [
    ['persons.export', {}, 'items', (x) => x.id, N_PERSONS],
    ['memberships.list', { limit: 500 }, 'items', (x) => x.id, N_PERSONS], // small records: one page
    ['documents.list', { limit: 500 }, 'items', (x) => x.id, N_DOCS],
    ['documents.export', {}, 'items', (x) => x.id, N_DOCS],
    ['users.list', {}, 'items', (x) => x.id, N_USERS + 1],
    ['users.list', { limit: 500 }, 'items', (x) => x.id, N_USERS + 1],
    ['users.export', {}, 'items', (x) => x.id, N_USERS + 1],
    ['federation.report', {}, 'members', (x) => x.personId, N_PERSONS],
    ['federation.export', {}, 'members', (x) => x.personId, N_PERSONS],
  ];
  for (const [command, payload, key, id, expected] of cases) {
    const r = await walk(command, payload, key);
    if (command !== 'memberships.list') assert.ok(r.pageCount > 1, `${command} is cut into pages`);
    once(r.items, id, expected, command);
  }
  // The change log grows while we read it (exports are logged): compare with a fixed range.
  const top = ((await conn.request('log.query', { limit: 1, descending: true })).payload as { entries: Array<{ seq: number }> }).entries[0]!.seq;
  const logged = (await walk('log.query', { limit: 1000 }, 'entries')).items.filter((e) => (e.seq as number) <= top);
  once(logged, (x) => x.seq, top, 'log.query');
  const down = (await walk('log.query', { limit: 1000, descending: true }, 'entries')).items.filter((e) => (e.seq as number) <= top);
  once(down, (x) => x.seq, top, 'log.query descending');
  const exp = (await walk('log.export', { to: new Date(Date.now() + 60_000).toISOString() }, 'entries')).items.filter((e) => (e.seq as number) <= top);
  once(exp, (x) => x.seq, top, 'log.export');
  const exportsMade = (await walk('exports.list', { limit: 1000 }, 'entries')).items;
  assert.ok(exportsMade.length >= N_EXPORTS);
  once(exportsMade, (x) => x.seq, exportsMade.length, 'exports.list');
  // exports.club: several lists in one answer, one cursor across them.
  const data: Record<string, Array<Record<string, unknown>>> = {};
  let pageCount = 0;
  for await (const page of pages(conn, 'exports.club', {})) {
    pageCount++;
    assert.ok(cborSize(page) <= MAX_ANSWER_PAYLOAD);
    for (const [k, v] of Object.entries(page.data as Record<string, Array<Record<string, unknown>>>)) (data[k] ??= []).push(...v);
  }
  assert.ok(pageCount > 1);
  once(data.persons!, (x) => x.id, N_PERSONS, 'exports.club persons');
  once(data.memberships!, (x) => x.id, N_PERSONS, 'exports.club memberships');
  once(data.documents!, (x) => x.id, N_DOCS, 'exports.club documents');
  // The SDK's listAll gathers a list the same way.
  assert.equal((await listAll(conn, 'persons.list', { limit: 500, fields: ['firstName'] })).length, N_PERSONS);
});

test('a continuation from another list or a stream with a cursor is BAD_REQUEST', async () => {
  await assert.rejects(conn.request('users.list', { cursor: '!!' }), { code: 'BAD_REQUEST' });
  await assert.rejects(conn.request('exports.club', { cursor: Buffer.from('["nope",null]').toString('base64url') }), { code: 'BAD_REQUEST' });
  await assert.rejects(conn.request('persons.export', { stream: true, cursor: 'abc' }), { code: 'BAD_REQUEST' });
  await assert.rejects(conn.request('federation.report', { cursor: 'abc' }), { code: 'BAD_REQUEST' });
});

test('cborSize is exact for what the encoder writes, never low', () => {
  const values: unknown[] = [
    0, 23, 24, 255, 256, 65535, 65536, 2 ** 32, -1, -25, -(2 ** 40), 1.5, 'x', '€'.repeat(30), '😀'.repeat(10), '',
    new Uint8Array(300), [], [1, [2, [3]]], { a: 1, b: undefined, c: 'z'.repeat(300) }, null, true, false,
    { items: Array.from({ length: 40 }, (_, i) => ({ id: i, name: wide(50, String(i)), nested: { list: [i, null, 'ü'] } })) },
  ];
  for (const v of values) {
    const real = encodeMessage({ kind: 'response', id: 7, payload: v, stream: false }).length - 3;
    const est = cborSize(v);
    if (typeof v === 'number' && !Number.isInteger(v)) assert.ok(est >= real, `float ${v}`);
    else assert.equal(est, real, JSON.stringify(v)?.slice(0, 40));
  }
  const items = Array.from({ length: 100 }, (_, i) => 'y'.repeat(i));
  const f = fitItems(items, 1000);
  assert.ok(f.bytes <= 1000 && f.bytes + cborSize(items[f.count]) > 1000 - 1);
});

test('the SDK pager passes each continuation once and refuses one handed out twice', async () => {
  const seen: Array<Record<string, unknown>> = [];
  const answers = [{ items: [1], nextCursor: 'a' }, { items: [2], nextAfterSeq: 9 }, { items: [3], nextCursor: null }];
  const fake = { request: async (_c: string, p: Record<string, unknown>) => (seen.push(p), { payload: answers[seen.length - 1] }) };
  assert.deepEqual(await listAll(fake, 'x.list', { limit: 5, offset: 3 }), [1, 2, 3]);
  assert.deepEqual(seen, [{ limit: 5, offset: 3 }, { limit: 5, cursor: 'a' }, { limit: 5, afterSeq: 9 }]);
  const stuck = { request: async () => ({ payload: { items: [1], nextCursor: 'same' } }) };
  await assert.rejects(listAll(stuck, 'x.list'), { code: 'PROTOCOL_ERROR' });
});
