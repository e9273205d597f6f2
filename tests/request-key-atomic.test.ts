/**
 * Request keys (PROTOCOL.md "Request keys", issue 14): a keyed command's answer is stored in the
 * same transaction as its change (daemon/edge/keyed-answer.ts). A failure injected where the
 * answer is written (a TEMP trigger that refuses the insert into request_answers) must leave neither:
 * before, the change committed in its own transaction and the answer failed after it, so a retry
 * after a crash there applied the change a second time. A retry with the same key then returns the
 * stored answer and writes nothing more.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { ClusterNode } from '../cluster/node.js';
import { registerBackupCommands } from '../daemon/backup/backup-commands.js';
import { installClusterGate } from '../daemon/cluster/gate.js';
import { clubBackupSettings } from '../storage/backup/backup-archive.js';
import { ensureRequestKeys } from '../storage/club/request-keys.js';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv, type InProcessSession } from './helpers/club-server.js';

let env: ClubTestEnv;
let club: string;
let admin: InProcessSession;
let commits = 0;

before(async () => {
  env = await clubEnv();
  club = await env.newClub();
  registerBackupCommands(env.dispatcher, env.services, { passphraseLog2N: 10 });
  // A cluster node that serves every club and whose output gate always succeeds.
  const node = { route: () => ({ kind: 'serve' }), commit: async () => void commits++, registerClub: async () => undefined } as unknown as ClusterNode;
  installClusterGate(env.dispatcher, () => node, env.services);
  admin = env.session();
  await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
});
after(async () => env.close());

const db = () => env.storage.openClub(club).db;
let n = 0;
const newKey = () => `rk-atomic-${String(++n).padStart(8, '0')}`;

function refuseAnswers(on: boolean): void {
  const d = db();
  ensureRequestKeys(d);
  if (on) d.exec(`CREATE TEMP TRIGGER IF NOT EXISTS refuse_answers BEFORE INSERT ON main.request_answers BEGIN SELECT RAISE(ABORT, 'injected failure'); END`);
  else d.exec('DROP TRIGGER IF EXISTS temp.refuse_answers');
}

const storedKeys = (rk: string) => (db().prepare('SELECT count(*) AS n FROM request_answers WHERE rk = ?').get(rk) as { n: number }).n;

/** One keyed command: fails as a whole under the injected failure, then applies once and replays. */
async function atomicOnce(command: string, payload: Record<string, unknown>, count: () => number, upload?: () => AsyncIterable<Uint8Array>): Promise<void> {
  const rk = newKey();
  const before = count();
  refuseAnswers(true);
  try {
    await assert.rejects(admin.call(command, { ...payload, rk }, upload?.()), `${command}: the injected failure did not reach the command`);
  } finally {
    refuseAnswers(false);
  }
  assert.equal(storedKeys(rk), 0);
  assert.equal(count(), before, `${command}: the change committed without its stored answer`);
  const first = await admin.call(command, { ...payload, rk }, upload?.());
  assert.equal(count(), before + 1, `${command}: applied once`);
  assert.equal(storedKeys(rk), 1, `${command}: the answer is stored`);
  const again = await admin.call(command, { ...payload, rk }, upload?.());
  assert.equal(count(), before + 1, `${command}: the retry wrote again`);
  const { oneTimePassword: _o, ...kept } = first.payload as Record<string, unknown>;
  assert.deepEqual(again.payload, kept, `${command}: the retry got another answer`);
}

const rows = (sql: string, ...args: unknown[]) => () => (db().prepare(sql).get(...args) as { n: number }).n;

test('a grouped write (persons.create) and its stored answer commit together', async () => {
  await atomicOnce('persons.create', { firstName: 'Ada', lastName: 'Atomar' }, rows(`SELECT count(*) AS n FROM persons WHERE lastName = 'Atomar'`));
});

test('a grouped update (persons.update) and its stored answer commit together', async () => {
  const id = (await admin.call('persons.create', { firstName: 'Bea', lastName: 'Zaehler' })).payload.record.id as number;
  let v = 0;
  await atomicOnce('persons.update', { id, notes: `n${++v}` }, rows('SELECT count(*) AS n FROM audit_log WHERE entity = ? AND recordId = ? AND action = ?', 'persons', id, 'update'));
});

test('users.create, users.update, users.disable, rights.set, users.resetPassword: change and answer commit together', async () => {
  const audits = (action: string) => rows('SELECT count(*) AS n FROM audit_log WHERE entity = ? AND action = ?', 'users', action);
  await atomicOnce('users.create', { username: 'atom', role: 'member' }, rows(`SELECT count(*) AS n FROM users WHERE username = 'atom'`));
  const uid = (db().prepare(`SELECT id FROM users WHERE username = 'atom'`).get() as { id: number }).id;
  await atomicOnce('users.update', { id: uid, displayName: 'Atom A.' }, audits('update'));
  await atomicOnce('users.disable', { id: uid }, audits('update'));
  await atomicOnce('rights.set', { userId: uid, role: 'board', registers: [1] }, audits('rights.set'));
  await atomicOnce('users.resetPassword', { id: uid }, audits('update'));
  await atomicOnce('users.delete', { id: uid }, audits('delete'));
});

test('documents.upload, documents.update, documents.delete: change and answer commit together', async () => {
  const docs = rows(`SELECT count(*) AS n FROM documents WHERE name LIKE 'atom%'`);
  await atomicOnce('documents.upload', { kind: 'other', name: 'atom.txt' }, docs, () => (async function* () { yield Buffer.from('atom'); })());
  const id = (db().prepare(`SELECT id FROM documents WHERE name = 'atom.txt'`).get() as { id: number }).id;
  const audits = (action: string) => rows('SELECT count(*) AS n FROM audit_log WHERE entity = ? AND action = ?', 'documents', action);
  await atomicOnce('documents.update', { id, name: 'atom2.txt' }, audits('update'));
  await atomicOnce('documents.delete', { id }, audits('delete'));
});

test('a keyed read stores no answer: its retry runs it again (request-key-replay.test.ts)', async () => {
  const rk = newKey();
  const first = await admin.call('persons.list', { rk });
  assert.equal(storedKeys(rk), 0);
  await admin.call('persons.create', { firstName: 'Cleo', lastName: 'Spaeter' });
  const again = await admin.call('persons.list', { rk });
  assert.notDeepEqual(again.payload, first.payload);
});

/**
 * Refuses stored answers in server.db as well (the table of answers to row commands); where
 * there is none (the old code kept every answer in the club's store), only the club's store.
 */
function refuseRowAnswers(on: boolean): void {
  refuseAnswers(on);
  const server = env.storage.server.db;
  if (!server.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'club_request_keys'`).get()) return;
  if (on) server.exec(`CREATE TEMP TRIGGER IF NOT EXISTS refuse_row_answers BEFORE INSERT ON main.club_request_keys BEGIN SELECT RAISE(ABORT, 'injected failure'); END`);
  else server.exec('DROP TRIGGER IF EXISTS temp.refuse_row_answers');
}

test('backup.setPassphrase: the club row change in server.db and its stored answer commit together', async () => {
  const setAt = () => clubBackupSettings(env.storage, club).passphrase?.setAt;
  const rk = newKey();
  const payload = { passphrase: 'the atomic backup passphrase', emails: ['board@atom.example.test'], rk };
  refuseRowAnswers(true);
  try {
    await assert.rejects(admin.call('backup.setPassphrase', payload), 'the injected failure did not reach the command');
  } finally {
    refuseRowAnswers(false);
  }
  // Before: the passphrase was set in its own transaction and only the answer failed, so the
  // retry below ran again and was refused (a set passphrase needs the current one to replace it).
  assert.equal(setAt(), undefined, 'the passphrase was set without its stored answer');
  const first = await admin.call('backup.setPassphrase', payload);
  const at = setAt();
  assert.equal(first.payload.setAt, at);
  const again = await admin.call('backup.setPassphrase', payload);
  assert.deepEqual(again.payload, first.payload, 'the retry got another answer');
  assert.equal(setAt(), at, 'the retry set the passphrase again');
  assert.equal(storedKeys(rk), 0, "kept in server.db, beside the row's change, not in the club's store");
  await assert.rejects(admin.call('persons.create', { firstName: 'Key', lastName: 'Reuse', rk }), (e: { code?: string }) => e.code === 'CONFLICT', 'the key reused for another command');
});

test('session commands (auth.*) act on their connection each time: no stored answer, no ticket kept', async () => {
  const s = env.session();
  await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  const rk = newKey();
  const t1 = (await s.call('auth.ticket', { rk })).payload.ticket as string;
  const t2 = (await s.call('auth.ticket', { rk })).payload.ticket as string;
  assert.notEqual(t2, t1, 'a second ticket request got the stored answer');
  assert.equal(storedKeys(rk), 0, 'a session ticket (a secret the daemon keeps only hashed) was stored with its request key');
  const lk = newKey();
  await s.call('auth.logout', { rk: lk });
  await s.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  await s.call('auth.logout', { rk: lk });
  assert.equal(await s.code('auth.whoami'), 'UNAUTHENTICATED', 'a logout answered from a stored answer left the session open');
});

test('a stored answer is not replayed to a session that has ended: user disabled, password reset, user deleted', async () => {
  // The session checks (daemon/club/session.ts requirePrincipal) run inside the handler; a
  // stored answer used to be returned before them, so a disabled user's open connection still
  // got answers by replaying its keys (auth.ts: "a disabled user ... takes effect at once").
  const cases: [string, (id: number) => Promise<unknown>][] = [
    ['disabled', (id) => admin.call('users.disable', { id })],
    ['password reset', (id) => admin.call('users.resetPassword', { id })],
    ['deleted', (id) => admin.call('users.delete', { id })],
  ];
  for (const [what, end] of cases) {
    const name = `keyed-${what.replace(' ', '-')}`;
    const id = (await admin.call('users.create', { username: name, password: 'keyed-password-123', role: 'secretary' })).payload.user.id as number;
    const s = env.session();
    await s.call('auth.login', { club, user: name, password: 'keyed-password-123' });
    const rk = newKey();
    await s.call('persons.create', { firstName: 'Keyed', lastName: name, rk });
    await end(id);
    assert.equal(await s.code('persons.create', { firstName: 'Keyed', lastName: name, rk }), 'UNAUTHENTICATED', `a stored answer replayed to a session whose user was ${what}`);
    assert.equal(await s.code('auth.whoami'), 'UNAUTHENTICATED', `the session of a user ${what} ended`);
  }
});
