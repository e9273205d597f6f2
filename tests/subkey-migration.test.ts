// Issue 20 point 5: one key, one job. The club data key is no page key and no direct document-key
// wrapping key; the master key wraps nothing directly. Stores and server.db written by the code
// before sub-keys (a fixture built with the old derivation below) open, keep their data and
// documents, and are migrated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { keyIdOf, loadMasterKey } from '../crypto/master-key.js';
import { clubPageKey, contextLabel, unwrapKey, wrappedVersion, WRAP_VERSION, type WrapContext } from '../crypto/wrap.js';
import { clubDbPath } from '../storage/club/club-store.js';
import { putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { createClub } from '../storage/server/provisioning.js';
import { rotateClub } from '../storage/server/key-rotation.js';
import { ServerDb, serverDbPath } from '../storage/server/server-db.js';
import { keyPragma, openEncrypted } from '../storage/engine/sqlcipher.js';
import { openStorage, unwrapClubKey } from '../storage/server/storage.js';
import { tmpDir } from './store-helpers.js';

/** The wrapping of the code before sub-keys: AES-256-GCM directly under the parent key, version 1. */
function legacyWrap(kek: Buffer, key: Buffer, ctx: WrapContext): Buffer {
  const out = Buffer.alloc(69);
  out[0] = 1;
  keyIdOf(kek).copy(out, 1);
  randomBytes(12).copy(out, 9);
  const c = createCipheriv('aes-256-gcm', kek, out.subarray(9, 21));
  c.setAAD(Buffer.concat([out.subarray(0, 21), Buffer.from(contextLabel(ctx), 'utf8')]));
  Buffer.concat([c.update(key), c.final()]).copy(out, 21);
  c.getAuthTag().copy(out, 53);
  return out;
}

const DOC = Buffer.concat([Buffer.from('Ehrenurkunde '), randomBytes(100_000)]);

/** A data folder in today's (pre-sub-key) layout: pages under the data key, v1 wraps everywhere. */
async function legacyFixture(dir: string): Promise<{ club: string; docId: number; clubKey: Buffer }> {
  const st = await openStorage({ dataDir: dir, create: true });
  const { id: club } = await createClub(st, { name: 'MV Alt', adminUser: 'admin', adminPassword: 'admin-password-123' });
  st.openClub(club).db.prepare(`INSERT INTO inventory_items (kind, name) VALUES ('instrument', 'Flügelhorn')`).run();
  const doc = await putDocument(st, club, Readable.from([DOC]), { kind: 'honour', name: 'urkunde.pdf' });
  const row = st.server.mustGetClub(club);
  const clubKey = unwrapClubKey(st.master, club, row.wrappedKey!, row.keyVersion);
  st.close();
  // Downgrade with the old derivation: the store's pages under the data key itself ...
  const db = openEncrypted(clubDbPath(dir, club), clubPageKey(clubKey), { journalMode: 'DELETE' });
  db.pragma(keyPragma(clubKey).replace(/^key=/, 'rekey='));
  // ... the document keys wrapped directly under the data key ...
  for (const d of db.prepare('SELECT id, file, wrappedKey FROM documents').all() as Array<{ id: number; file: string; wrappedKey: Buffer }>) {
    const ctx = { purpose: 'document-key' as const, clubId: club, docFile: d.file };
    db.prepare('UPDATE documents SET wrappedKey = ? WHERE id = ?').run(legacyWrap(clubKey, unwrapKey(clubKey, d.wrappedKey, ctx), ctx), d.id);
  }
  db.pragma('journal_mode=WAL');
  db.close();
  // ... and the club key wrapped directly under the master key.
  const master = await loadMasterKey(`${dir}/keys/master.key`);
  const server = ServerDb.open(serverDbPath(dir), master.key);
  server.db.prepare('UPDATE clubs SET wrapped_key = ? WHERE id = ?').run(legacyWrap(master.key, clubKey, { purpose: 'club-data-key', clubId: club, keyVersion: 1 }), club);
  server.close();
  master.destroy();
  return { club, docId: doc.id, clubKey };
}

test('a store and server.db from before sub-keys open with the new code, keep data and documents, and are migrated to sub-keys (issue 20 point 5)', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const { club, docId, clubKey } = await legacyFixture(dir);
  // The fixture really is the old layout: the data key opens the pages.
  openEncrypted(clubDbPath(dir, club), clubKey, { journalMode: 'keep' }).close();

  const st = await openStorage({ dataDir: dir });
  try {
    assert.equal(wrappedVersion(st.server.mustGetClub(club).wrappedKey!), WRAP_VERSION, 'server.db re-wrapped the club key under the wrapping sub-key');
    const store = st.openClub(club);
    assert.equal((store.db.prepare('SELECT name FROM inventory_items').get() as { name: string }).name, 'Flügelhorn');
    assert.deepEqual(await readDocumentBuffer(st, club, docId), DOC);
    const w = store.db.prepare('SELECT wrappedKey FROM documents').get() as { wrappedKey: Buffer };
    assert.equal(wrappedVersion(w.wrappedKey), WRAP_VERSION, 'document keys re-wrapped under the document wrapping sub-key');
  } finally {
    st.close();
  }
  // After the migration the data key no longer opens the pages; its page sub-key does.
  assert.throws(() => openEncrypted(clubDbPath(dir, club), clubKey, { journalMode: 'keep' }), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY');
  openEncrypted(clubDbPath(dir, club), clubPageKey(clubKey), { journalMode: 'keep' }).close();
  // A second open writes nothing more and still reads everything; rotation works on the result.
  const st2 = await openStorage({ dataDir: dir });
  try {
    await rotateClub(st2, club);
    assert.deepEqual(await readDocumentBuffer(st2, club, docId), DOC);
  } finally {
    st2.close();
  }
});

test('a legacy store that has not been opened yet is migrated by a key rotation too', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const { club, docId } = await legacyFixture(dir);
  const st = await openStorage({ dataDir: dir });
  try {
    const r = await rotateClub(st, club);
    assert.equal(r.keyVersion, 2);
    assert.deepEqual(await readDocumentBuffer(st, club, docId), DOC);
  } finally {
    st.close();
  }
});
