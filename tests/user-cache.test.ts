/**
 * Issue 13, request path: the users and rights a request runs with come from memory
 * (storage/club/user-cache.ts), and a change committed through another connection to the club's
 * file (here a second store handle, as commusicctl offline or another process would hold) takes
 * effect on the very next request: PRAGMA data_version tells the daemon's connection. A cache
 * that did not check it would keep answering with the old rights, and these tests would fail.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clubEnv, ADMIN_PASSWORD } from './helpers/club-server.js';
import { openClubStore } from '../storage/club/club-store.js';
import { setDisabled, setGrants } from '../storage/club/users.js';
import { currentUser } from '../storage/club/user-cache.js';

const club = { kind: 'club' } as const;

async function setup() {
  const env = await clubEnv();
  const clubId = await env.newClub();
  const admin = env.session();
  await admin.call('auth.login', { club: clubId, user: 'admin', password: ADMIN_PASSWORD });
  const person = (await admin.call('persons.create', { firstName: 'Anna', lastName: 'Berg' })).payload.record.id as number;
  const userId = (await admin.call('users.create', { username: 'reader', password: 'reader-password-1', grants: [{ area: 'persons', actions: ['read'], scope: club }] })).payload.user.id as number;
  const reader = env.session();
  await reader.call('auth.login', { club: clubId, user: 'reader', password: 'reader-password-1' });
  const other = () => openClubStore({ dataDir: env.dataDir, clubId, keys: env.storage.clubKeys(env.storage.server.mustGetClub(clubId)), create: false });
  return { env, clubId, person, userId, reader, other };
}

test('a rights change committed through another connection applies to the next request', async () => {
  const { env, person, userId, reader, other } = await setup();
  try {
    // Twice: the second request is answered from the cache.
    assert.equal(await reader.code('persons.get', { id: person }), 'ok');
    assert.equal(await reader.code('persons.get', { id: person }), 'ok');
    const second = other();
    try {
      setGrants(second.db, userId, null, [{ area: 'events', actions: ['read'], scope: club }]);
    } finally {
      second.close();
    }
    assert.equal(await reader.code('persons.get', { id: person }), 'FORBIDDEN');
    const again = other();
    try {
      setGrants(again.db, userId, null, [{ area: 'persons', actions: ['read'], scope: club }]);
    } finally {
      again.close();
    }
    assert.equal(await reader.code('persons.get', { id: person }), 'ok');
  } finally {
    await env.close();
  }
});

test('a user disabled through another connection is logged out at the next request', async () => {
  const { env, person, userId, reader, other } = await setup();
  try {
    assert.equal(await reader.code('persons.get', { id: person }), 'ok');
    const second = other();
    try {
      setDisabled(second.db, userId, true);
    } finally {
      second.close();
    }
    assert.equal(await reader.code('persons.get', { id: person }), 'UNAUTHENTICATED');
  } finally {
    await env.close();
  }
});

test('the cache answers from memory until a commit, and sees writes of its own connection', async () => {
  const { env, clubId, userId, other } = await setup();
  try {
    const db = env.storage.openClub(clubId).db;
    const a = currentUser(db, userId)!;
    assert.equal(currentUser(db, userId), a, 'no commit in between: the same record');
    setGrants(db, userId, null, []);
    const b = currentUser(db, userId)!;
    assert.notEqual(b, a);
    assert.equal(b.rightsVersion, a.rightsVersion + 1);
    const second = other();
    try {
      setGrants(second.db, userId, null, [{ area: 'events', actions: ['read'], scope: club }]);
    } finally {
      second.close();
    }
    assert.equal(currentUser(db, userId)!.rightsVersion, a.rightsVersion + 2);
    assert.equal(currentUser(db, 999_999), undefined);
  } finally {
    await env.close();
  }
});

test('a user row read inside a transaction that rolls back does not outlive the rollback', async () => {
  const { env, clubId, person, userId, reader } = await setup();
  try {
    const db = env.storage.openClub(clubId).db;
    const before = currentUser(db, userId)!;
    assert.equal(before.disabled, false);
    // A write counts in total_changes() even when it is rolled back; a user read after it inside
    // the transaction and kept in the cache would be the rolled-back row until the next write.
    assert.throws(() =>
      db.transaction(() => {
        setDisabled(db, userId, true);
        assert.equal(currentUser(db, userId)!.disabled, true, 'inside the transaction: as the transaction sees it');
        throw new Error('rolled back');
      })(),
    /rolled back/);
    assert.equal(currentUser(db, userId)!.disabled, false, 'after the rollback: the committed row');
    assert.equal(await reader.code('persons.get', { id: person }), 'ok', 'the session of the user goes on');
  } finally {
    await env.close();
  }
});
