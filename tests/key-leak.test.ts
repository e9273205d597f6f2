// Issue 20 point 3: rotation that ends a leak. After `keys rotate-master --rekey-clubs` the old
// master key, the old club data keys and the old archive key open nothing current; old archives
// still open on the server (retired archive keys are kept for reading).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createDecryptStream } from '../crypto/chunked-aead.js';
import { clubPageKey, unwrapKey } from '../crypto/wrap.js';
import { archiveKeyById, archiveKeyIds, rotateArchiveKey, serverOpenKey } from '../storage/backup/archive-keys.js';
import { archiveTrust, createClubArchive, serverArchiveKey, verifyArchive } from '../storage/backup/backup-archive.js';
import { clubDbPath, clubDir, DOCS_DIR } from '../storage/club/club-store.js';
import { readDocumentBuffer } from '../storage/club/documents.js';
import { recoverFromMasterLeak } from '../storage/server/key-rotation.js';
import { ServerDb, serverDbPath } from '../storage/server/server-db.js';
import { openEncrypted } from '../storage/engine/sqlcipher.js';
import { openStorage, unwrapClubKey, type Storage } from '../storage/server/storage.js';
import { addDocument, addPerson, makeClubs } from './backup-helpers.js';
import { tmpDir } from './store-helpers.js';

async function collect(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function archiveBytes(st: Storage, club: string, key: Buffer): Promise<Buffer> {
  return collect(createClubArchive(st, club, { kind: 'server', key }).stream);
}

const code = (c: string) => (e: Error & { code?: string }) => e.code === c;

test('after the leaked-master-key procedure the old master key, old club keys and old archive key open nothing current (issue 20 point 3)', { timeout: 60_000 }, async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  try {
    const [club] = await makeClubs(st, 1);
    addPerson(st, club!, 1);
    const DOC = Buffer.from('Ehrenurkunde fuer Anna Huber, vertraulich');
    const docId = await addDocument(st, club!, DOC);
    // What the thief took: master.key, server.db (with the wrapped club key and the archive key),
    // and therefore the club key, the document key and the archive key.
    const oldMaster = Buffer.from(st.master.key);
    const row = st.server.mustGetClub(club!);
    const oldClubKey = unwrapClubKey(st.master, club!, row.wrappedKey!, row.keyVersion);
    const oldArchiveKey = serverArchiveKey(st);
    const oldDoc = st.openClub(club!).db.prepare('SELECT file, wrappedKey FROM documents WHERE id = ?').get(docId) as { file: string; wrappedKey: Buffer };
    const oldDocKey = unwrapKey(oldClubKey, oldDoc.wrappedKey, { purpose: 'document-key', clubId: club!, docFile: oldDoc.file });
    const oldDocBytes = readFileSync(join(clubDir(dir, club!), DOCS_DIR, oldDoc.file));
    const oldArchive = await archiveBytes(st, club!, oldArchiveKey);
    copyFileSync(serverDbPath(dir), join(dir, 'stolen-server.db'));

    const r = await recoverFromMasterLeak(st);
    assert.equal(r.clubs.length, 1);
    assert.equal(r.clubs[0]!.documents, 1);
    assert.notEqual(r.master.newKeyId, r.master.oldKeyId);
    assert.notEqual(r.archiveKey.newKeyId, r.archiveKey.oldKeyId);

    // The data is all there under the new keys.
    assert.deepEqual(await readDocumentBuffer(st, club!, docId), DOC);
    assert.equal((st.openClub(club!).db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n, 1);

    // Old master key: does not open the current server.db.
    assert.throws(() => ServerDb.open(serverDbPath(dir), oldMaster), code('WRONG_MASTER_KEY'));
    // Old club key (e.g. unwrapped from the stolen server.db): opens neither the current store ...
    assert.throws(() => openEncrypted(clubDbPath(dir, club!), clubPageKey(oldClubKey), { journalMode: 'keep' }), code('WRONG_DATA_KEY'));
    assert.throws(() => openEncrypted(clubDbPath(dir, club!), oldClubKey, { journalMode: 'keep' }), code('WRONG_DATA_KEY'));
    // ... nor any current document: the document was re-encrypted under a new key and file.
    const cur = st.openClub(club!).db.prepare('SELECT file, wrappedKey FROM documents WHERE id = ?').get(docId) as { file: string; wrappedKey: Buffer };
    assert.notEqual(cur.file, oldDoc.file);
    assert.equal(existsSync(join(clubDir(dir, club!), DOCS_DIR, oldDoc.file)), false, 'the old document file is gone');
    assert.throws(() => unwrapKey(oldClubKey, cur.wrappedKey, { purpose: 'document-key', clubId: club!, docFile: cur.file }));
    const curBytes = readFileSync(join(clubDir(dir, club!), DOCS_DIR, cur.file));
    await assert.rejects(collect(Readable.from([curBytes]).pipe(createDecryptStream(oldDocKey))), 'the old document key opens no current document file');
    assert.deepEqual(await collect(Readable.from([oldDocBytes]).pipe(createDecryptStream(oldDocKey))), DOC, 'control: the old key did open the old file');
    // Old archive key: new archives are written under the new key, which the old one does not open.
    const newArchive = await archiveBytes(st, club!, serverArchiveKey(st));
    await assert.rejects(verifyArchive(Readable.from([newArchive]), { serverKey: oldArchiveKey, trust: archiveTrust(st) }), code('WRONG_BACKUP_KEY'));
    // The server still reads the old archive (retired key kept for reading only).
    const rep = await verifyArchive(Readable.from([oldArchive]), { ...serverOpenKey(st), trust: archiveTrust(st) });
    assert.equal(rep.clubId, club);
  } finally {
    st.close();
  }
  // The stolen server.db opens with the old master key (nothing to be done about a copy), but
  // everything in it is stale; the live data folder does not open with the old master key.
});

test('keys rotate-archive: new archives use the new key, old archives still verify, the old key writes nothing (issue 20 point 3)', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  try {
    const [club] = await makeClubs(st, 1);
    addPerson(st, club!, 1);
    const before = serverArchiveKey(st);
    const oldArchive = await archiveBytes(st, club!, before);
    const r = rotateArchiveKey(st);
    const ids = archiveKeyIds(st);
    assert.equal(ids.current, r.newKeyId);
    assert.deepEqual(ids.retired.map((x) => x.id), [r.oldKeyId]);
    const after = serverArchiveKey(st);
    assert.ok(!after.equals(before));
    const keyring = { ...serverOpenKey(st), trust: archiveTrust(st) };
    assert.equal((await verifyArchive(Readable.from([oldArchive]), keyring)).clubId, club);
    // Without the keyring the current key alone does not open the old archive.
    await assert.rejects(verifyArchive(Readable.from([oldArchive]), { serverKey: after, trust: archiveTrust(st) }), code('WRONG_BACKUP_KEY'));
    // Survives a reopen (kept in server.db).
    st.close();
    const st2 = await openStorage({ dataDir: dir });
    try {
      assert.equal(archiveKeyIds(st2).current, r.newKeyId);
      assert.ok(archiveKeyById(st2, r.oldKeyId)!.equals(before));
    } finally {
      st2.close();
    }
  } finally {
    st.close();
  }
});

test('commusicctl keys forget-archive-keys destroys the named retired keys: their archives open nowhere, others still do', { timeout: 120_000 }, async (t) => {
  const { execFile } = await import('node:child_process');
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const ctl = (...args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [new URL('../bin/commusicctl.js', import.meta.url).pathname, '--data', dir, 'keys', ...args], { timeout: 60_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
  let st = await openStorage({ dataDir: dir, create: true });
  const [club] = await makeClubs(st, 1);
  addPerson(st, club!, 1);
  const first = await archiveBytes(st, club!, serverArchiveKey(st));
  const r1 = rotateArchiveKey(st);
  const second = await archiveBytes(st, club!, serverArchiveKey(st));
  const r2 = rotateArchiveKey(st);
  st.close();
  // Destructive: without --yes it is a usage error and nothing changes; an unknown or current id is refused.
  assert.equal((await ctl('forget-archive-keys', r1.oldKeyId)).code, 2);
  const cur = await ctl('forget-archive-keys', r2.newKeyId, '--yes', '--json');
  assert.equal(cur.code, 1);
  assert.match(cur.stderr, /current key/);
  const done = await ctl('forget-archive-keys', r1.oldKeyId, '--yes', '--json');
  assert.equal(done.code, 0, done.stderr);
  assert.deepEqual(JSON.parse(done.stdout), { forgotten: [r1.oldKeyId], kept: 1 });
  st = await openStorage({ dataDir: dir });
  try {
    assert.deepEqual(archiveKeyIds(st).retired.map((x) => x.id), [r2.oldKeyId]);
    const keyring = { ...serverOpenKey(st), trust: archiveTrust(st) };
    await assert.rejects(verifyArchive(Readable.from([first]), keyring), code('WRONG_BACKUP_KEY'));
    assert.equal((await verifyArchive(Readable.from([second]), keyring)).clubId, club);
  } finally {
    st.close();
  }
  // Without ids: every retired key.
  const all = await ctl('forget-archive-keys', '--yes', '--json');
  assert.deepEqual(JSON.parse(all.stdout), { forgotten: [r2.oldKeyId], kept: 0 });
});

test('commusicctl keys rotate-master --rekey-clubs runs the procedure offline; the old master key then opens nothing (issue 20 point 3)', { timeout: 120_000 }, async (t) => {
  const { execFile } = await import('node:child_process');
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  const st = await openStorage({ dataDir: dir, create: true });
  const [club] = await makeClubs(st, 2);
  addPerson(st, club!, 1);
  const DOC = Buffer.from('Registrierung beim Verband');
  const docId = await addDocument(st, club!, DOC);
  const oldMaster = Buffer.from(st.master.key);
  st.close();
  const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    const child = execFile(process.execPath, [new URL('../bin/commusicctl.js', import.meta.url).pathname, '--data', dir, 'keys', 'rotate-master', '--rekey-clubs', '--json'], { timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    child.stdin!.end('');
  });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.clubs.length, 2);
  assert.notEqual(out.master.newKeyId, out.master.oldKeyId);
  assert.throws(() => ServerDb.open(serverDbPath(dir), oldMaster), code('WRONG_MASTER_KEY'));
  const st2 = await openStorage({ dataDir: dir });
  try {
    assert.equal(st2.master.id, out.master.newKeyId);
    assert.deepEqual(await readDocumentBuffer(st2, club!, docId), DOC);
    assert.equal(st2.server.mustGetClub(club!).keyVersion, 2);
  } finally {
    st2.close();
  }
});
