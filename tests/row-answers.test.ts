/**
 * Stored answers of commands that change a club's row in server.db (storage/server/row-answers.ts;
 * PROTOCOL.md "Request keys"): they travel with the row in its registry record
 * (cluster/registry.ts), so the member that takes the club over answers a retry from them; they
 * are bound to the command and user, bounded per club, and leave with the club's row.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { openClubRow, sealClubRow } from '../cluster/registry.js';
import { REQUEST_KEY_TTL_MS } from '../storage/club/request-keys.js';
import { importRowAnswers, listRowAnswers, lookupRowAnswer, MAX_ROW_ANSWERS, putRowAnswer } from '../storage/server/row-answers.js';
import { ServerDb } from '../storage/server/server-db.js';

let dir: string;
let a: ServerDb;
let b: ServerDb;
const master = randomBytes(32);
const recordKey = randomBytes(32);
const row = { id: 'club-ra', name: 'MV Antwort', plan: 'premium' as const, status: 'active' as const, created: '2026-11-30T00:00:00.000Z', settings: { backup: { emails: ['a@b.example.test'] } }, wrappedKey: randomBytes(40), keyVersion: 1, pendingWrappedKey: null, pendingKeyVersion: null, storeState: 'created' as const, pendingAdmin: null };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'commusic-row-answers-'));
  a = ServerDb.open(join(dir, 'a.db'), master, { create: true });
  b = ServerDb.open(join(dir, 'b.db'), master, { create: true });
  a.insertClub(row);
  b.insertClub(row);
});
after(async () => {
  a.close();
  b.close();
  await rm(dir, { recursive: true, force: true });
});

const rk = (i: number) => `row-answer-key-${String(i).padStart(6, '0')}`;

/** A user's rights fingerprint (daemon/club/session.ts rightsFingerprint makes the real ones). */
const R = 'rights-fingerprint-1';
const Q = 'request-fingerprint-1';
const bind = (userId: number, rights = R, request = Q) => ({ userId, rights, request });

test("a row command's answer travels in the club's registry record and answers a retry on another member", () => {
  const now = Date.now();
  a.db.transaction(() => assert.ok(putRowAnswer(a.db, row.id, rk(1), 'backup.setPassphrase', bind(7), { set: true, setAt: 'x', oneTimePassword: 'never kept' }, now)))();
  assert.equal(lookupRowAnswer(b.db, row.id, rk(1), 'backup.setPassphrase', bind(7)).kind, 'none');
  const sealed = sealClubRow(recordKey, a.getClub(row.id)!, listRowAnswers(a.db, row.id));
  const opened = openClubRow(recordKey, row.id, sealed);
  assert.deepEqual(opened.row.settings, row.settings);
  assert.ok(!('answers' in opened.row), 'the answers are not part of the row');
  importRowAnswers(b.db, row.id, opened.answers, now);
  assert.deepEqual(lookupRowAnswer(b.db, row.id, rk(1), 'backup.setPassphrase', bind(7)), { kind: 'answer', payload: { set: true, setAt: 'x' } });
  assert.equal(lookupRowAnswer(b.db, row.id, rk(1), 'backup.setPassphrase', bind(8)).kind, 'conflict', 'another user');
  assert.equal(lookupRowAnswer(b.db, row.id, rk(1), 'users.create', bind(7)).kind, 'conflict', 'another command');
  assert.equal(lookupRowAnswer(b.db, row.id, rk(1), 'backup.setPassphrase', bind(7, 'other-rights')).kind, 'stale', 'other rights now: the command runs again');
  assert.equal(lookupRowAnswer(b.db, row.id, rk(1), 'backup.setPassphrase', bind(7, R, 'another-payload')).kind, 'stale', 'the key reused with another payload: the command runs (and is checked) again');
  assert.equal(lookupRowAnswer(b.db, 'other-club', rk(1), 'backup.setPassphrase', bind(7)).kind, 'none', 'another club');
  // A record without answers (as an older member seals it) opens with none.
  assert.deepEqual(openClubRow(recordKey, row.id, sealClubRow(recordKey, row)).answers, []);
});

test('bounded: the newest MAX_ROW_ANSWERS per club, none older than a day; gone with the club row', () => {
  const now = Date.now();
  a.db.transaction(() => {
    putRowAnswer(a.db, row.id, rk(99), 'backup.setPassphrase', bind(7), { set: true }, now - REQUEST_KEY_TTL_MS - 1);
    for (let i = 100; i < 100 + MAX_ROW_ANSWERS + 5; i++) putRowAnswer(a.db, row.id, rk(i), 'backup.setPassphrase', bind(7), { set: true }, now + i);
  })();
  const kept = listRowAnswers(a.db, row.id);
  assert.equal(kept.length, MAX_ROW_ANSWERS);
  assert.equal(kept[0]!.rk, rk(100 + MAX_ROW_ANSWERS + 4), 'newest first');
  assert.equal(lookupRowAnswer(a.db, row.id, rk(99), 'backup.setPassphrase', bind(7)).kind, 'none', 'past the TTL');
  assert.equal(putRowAnswer(a.db, row.id, rk(1), 'backup.setPassphrase', bind(7), { big: 'x'.repeat(5000) }, now), false, 'too large to travel in the record');
  a.deleteClubRow(row.id);
  assert.deepEqual(listRowAnswers(a.db, row.id), []);
});
