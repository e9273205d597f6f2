/**
 * Answers that carry a user's grants are bounded by bytes (PROTOCOL.md 7, "Pages are cut by
 * bytes"): rights.set and users.create refuse grants over MAX_GRANTS_BYTES, which bounds
 * rights.get, rights.set and auth.whoami below one message (shown for the largest grants
 * accepted, with the longest user fields); grants stored before the bound give TOO_LARGE, a
 * clear error, instead of a message the channel cannot send. Before, a user with very many
 * section rights could be given grants whose answer was larger than a message.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setGrants } from '../storage/club/users.js';
import { MAX_GRANTS_BYTES } from '../daemon/club/user-commands.js';
import { MAX_ANSWER_PAYLOAD, cborSize } from '../protocol/answer-size.js';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv, type InProcessSession } from './helpers/club-server.js';

let env: ClubTestEnv;
let club: string;
let admin: InProcessSession;
let userId: number;
const USER = 'u'.repeat(64);
const PASSWORD = 'Many-Rights-Password-1';

before(async () => {
  env = await clubEnv();
  club = await env.newClub();
  admin = env.session();
  await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  userId = (await admin.call('users.create', { username: USER, password: PASSWORD, displayName: 'ü'.repeat(200), role: 'member' })).payload.user.id;
});
after(async () => env.close());

/** `n` grants on persons, each scoped to 200 registers with 9-byte ids. */
function grants(n: number, registers = 200): Array<{ area: string; actions: string[]; scope: { kind: 'registers'; registers: number[] } }> {
  return Array.from({ length: n }, (_, i) => ({ area: 'persons', actions: ['read', 'create', 'update', 'delete', 'export'], scope: { kind: 'registers', registers: Array.from({ length: registers }, (_, j) => 2 ** 40 + i * 1000 + j) } }));
}

test('grants over the byte bound are refused (the rights answer would pass one message)', async () => {
  const many = grants(60);
  assert.ok(cborSize(many) > MAX_ANSWER_PAYLOAD, 'the case is one the old code answered with a message too large');
  assert.equal(await admin.code('rights.set', { userId, grants: many }), 'BAD_REQUEST');
  assert.equal(await admin.code('users.create', { username: 'too-many', password: PASSWORD, grants: many }), 'BAD_REQUEST');
});

test('with the largest grants accepted, rights.get, rights.set and auth.whoami fit one answer', async () => {
  // As many grants as fit the bound, then registers added to the last one until it is full.
  let n = 1;
  while (cborSize(grants(n + 1)) <= MAX_GRANTS_BYTES) n++;
  let extra = 0;
  while (cborSize([...grants(n), ...grants(1, extra + 1)]) <= MAX_GRANTS_BYTES) extra++;
  const largest = extra > 0 ? [...grants(n), ...grants(1, extra)] : grants(n);
  assert.ok(cborSize(largest) <= MAX_GRANTS_BYTES && cborSize(largest) > MAX_GRANTS_BYTES - 64);
  const set = await admin.call('rights.set', { userId, grants: largest });
  assert.ok(cborSize(set.payload) <= MAX_ANSWER_PAYLOAD);
  const got = await admin.call('rights.get', { userId });
  assert.equal(got.payload.grants.length, largest.length);
  assert.ok(cborSize(got.payload) <= MAX_ANSWER_PAYLOAD);
  const self = env.session();
  await self.call('auth.login', { club, user: USER, password: PASSWORD });
  const who = await self.call('auth.whoami');
  assert.ok(cborSize(who.payload) <= MAX_ANSWER_PAYLOAD, `whoami took ${cborSize(who.payload)} bytes`);
  // Replacing the largest grants by other largest grants: its change-log entry (old and new) is
  // read back by log.query, not refused as a single entry too large for an answer.
  await admin.call('rights.set', { userId, grants: [...largest].reverse() });
  const seq = (env.storage.openClub(club).db.prepare('SELECT max(seq) AS s FROM audit_log').get() as { s: number }).s;
  const page = await admin.call('log.query', { afterSeq: seq - 1 });
  assert.equal(page.payload.entries[0].seq, seq);
  assert.equal(page.payload.entries[0].action, 'rights.set');
});

test('grants stored before the bound give TOO_LARGE, not an answer the channel cannot send', async () => {
  const db = env.storage.openClub(club).db;
  setGrants(db, userId, null, grants(60));
  assert.equal(await admin.code('rights.get', { userId }), 'TOO_LARGE');
  const self = env.session();
  await self.call('auth.login', { club, user: USER, password: PASSWORD });
  assert.equal(await self.code('auth.whoami'), 'TOO_LARGE');
});
