// Must-show 6: rotation interrupted by kill -9 at several points, then resumed, leaves every club
// readable with all its data; after rotate-club the old data key opens nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { openStorage, unwrapClubKey, type Storage } from '../storage/server/storage.js';
import { createClub, deleteClub, listClubs, ROTATE_CLUB_STEPS, ROTATE_MASTER_STEPS } from '../storage/server/provisioning.js';
import { resumeInterruptedRotations, rotateClub } from '../storage/server/key-rotation.js';
import { listDocuments, putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { openEncrypted } from '../storage/engine/sqlcipher.js';
import { serverDbKey, serverDbPath } from '../storage/server/server-db.js';
import { clubDir } from '../storage/club/club-store.js';
import { unwrapKey } from '../crypto/wrap.js';
import { decryptBuffer } from '../crypto/chunked-aead.js';
import { tmpDir, walk } from './store-helpers.js';

const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'club-crash-child.js');

function runChild(args: string[], crashAt?: string): Promise<{ signal: NodeJS.Signals | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(crashAt ? { CRASH_AT: crashAt } : {}) } });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d));
    c.stderr.on('data', (d: Buffer) => (out += d));
    c.on('exit', (_code, signal) => resolve({ signal, out }));
  });
}

interface Expected { persons: number; docs: Map<string, Buffer> }

async function seed(st: Storage, n: number): Promise<Map<string, Expected>> {
  const exp = new Map<string, Expected>();
  for (let i = 0; i < n; i++) {
    const { id } = await createClub(st, { name: `MV Rotation ${i}`, adminUser: 'admin', adminPassword: 'a long admin password' });
    const ins = st.openClub(id).db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", "blocked") VALUES (?, ?, 0, 0)`);
    for (let p = 0; p < 20 + i; p++) ins.run(`P${p}`, `Club${i}`);
    const docs = new Map<string, Buffer>();
    for (let d = 0; d < 2; d++) {
      const content = Buffer.alloc(70_000 + d, `club ${i} doc ${d} `);
      await putDocument(st, id, Readable.from([content]), { kind: 'honour', name: `d${d}` });
      docs.set(`d${d}`, content);
    }
    exp.set(id, { persons: 20 + i, docs });
  }
  return exp;
}

async function checkAll(st: Storage, exp: Map<string, Expected>): Promise<void> {
  assert.equal(listClubs(st).length, exp.size);
  for (const [id, e] of exp) {
    const n = (st.openClub(id).db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n;
    assert.equal(n, e.persons, `club ${id} persons`);
    const docs = listDocuments(st, id);
    assert.equal(docs.length, e.docs.size);
    for (const d of docs) assert.deepEqual(await readDocumentBuffer(st, id, d.id), e.docs.get(d.name), `club ${id} doc ${d.name}`);
    assert.equal(st.openClub(id).db.pragma('integrity_check', { simple: true }), 'ok');
  }
}

/** The old data key must open no file of the club and unwrap no document key. */
async function assertOldKeyUseless(dir: string, id: string, oldKey: Buffer, st: Storage): Promise<void> {
  for (const f of walk(clubDir(dir, id))) {
    // Documents are checked below; -shm holds only the WAL index; an empty file holds nothing.
    if (f.endsWith('.cmdoc') || f.endsWith('-shm') || statSync(f).size === 0) continue;
    assert.throws(() => openEncrypted(f, oldKey, { journalMode: 'keep' }).close(), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY' || e.code === 'STORE_NOT_FOUND', `old key opens ${f}`);
  }
  const rows = st.openClub(id).db.prepare('SELECT file, wrappedKey FROM documents').all() as Array<{ file: string; wrappedKey: Buffer }>;
  for (const r of rows) {
    assert.throws(() => unwrapKey(oldKey, r.wrappedKey, { purpose: 'document-key', clubId: id, docFile: r.file }), (e: Error & { code?: string }) => e.code === 'WRONG_KEY');
    // and the file header names the document key, not the club key, so the old club key decrypts no document either
    await assert.rejects(decryptBuffer(oldKey, readFileSync(join(clubDir(dir, id), 'docs', r.file))));
  }
}

test('rotate-club killed at every step, resumed: all clubs readable, old key useless', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  let st = await openStorage({ dataDir: dir, create: true });
  const exp = await seed(st, 3);
  const target = [...exp.keys()][1]!;
  st.close();
  for (const step of ROTATE_CLUB_STEPS) {
    st = await openStorage({ dataDir: dir });
    const before = st.server.mustGetClub(target);
    const oldKey = unwrapClubKey(st.master, target, before.wrappedKey!, before.keyVersion);
    st.close();
    const r = await runChild(['rotate-club', dir, target], step);
    assert.equal(r.signal, 'SIGKILL', `child should die at ${step}: ${r.out}`);
    // Interrupted: still readable (current or pending key), all data there.
    st = await openStorage({ dataDir: dir });
    await checkAll(st, exp);
    st.close();
    st = await openStorage({ dataDir: dir });
    const res = await resumeInterruptedRotations(st);
    assert.ok(res.clubs.includes(target) || step === 'key-promoted');
    const after = st.server.mustGetClub(target);
    assert.equal(after.keyVersion, before.keyVersion + 1, `after ${step}`);
    assert.equal(after.pendingWrappedKey, null);
    await checkAll(st, exp);
    await assertOldKeyUseless(dir, target, oldKey, st);
    assert.deepEqual(readdirSync(clubDir(dir, target)).filter((f) => f !== 'docs' && !f.startsWith('club.db')), []);
    assert.ok(!existsSync(join(clubDir(dir, target), 'club.db.rotating')));
    st.close();
  }
  // An uninterrupted rotation of another club, in process.
  st = await openStorage({ dataDir: dir });
  const other = [...exp.keys()][0]!;
  const row = st.server.mustGetClub(other);
  const oldKey = unwrapClubKey(st.master, other, row.wrappedKey!, row.keyVersion);
  const r = await rotateClub(st, other);
  assert.equal(r.documents, 2);
  await checkAll(st, exp);
  await assertOldKeyUseless(dir, other, oldKey, st);
  st.close();
});

test('rotate-master killed at every step, resumed: all clubs readable, old master key opens nothing', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  let st = await openStorage({ dataDir: dir, create: true });
  const exp = await seed(st, 3);
  st.close();
  for (const step of ROTATE_MASTER_STEPS) {
    st = await openStorage({ dataDir: dir });
    const oldMaster = Buffer.from(st.master.key);
    st.close();
    const r = await runChild(['rotate-master', dir], step);
    assert.equal(r.signal, 'SIGKILL', `child should die at ${step}: ${r.out}`);
    st = await openStorage({ dataDir: dir });
    await checkAll(st, exp);
    await resumeInterruptedRotations(st);
    assert.equal(st.masterRotationPending, false);
    await checkAll(st, exp);
    const keyChanged = !st.master.key.equals(oldMaster);
    // Killed before the next key file existed is impossible here (first step is after writing it).
    assert.ok(keyChanged, `master key changed after resuming from ${step}`);
    assert.throws(() => openEncrypted(serverDbPath(dir), serverDbKey(oldMaster), { journalMode: 'keep' }), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY');
    assert.deepEqual(readdirSync(join(dir, 'keys')), ['master.key']);
    assert.ok(!existsSync(serverDbPath(dir) + '.next'));
    st.close();
  }
  // Deletion crypto-shreds first, and a killed delete is finished on resume.
  st = await openStorage({ dataDir: dir });
  const victim = [...exp.keys()][2]!;
  await assert.rejects(deleteClub(st, victim, { onStep: (s) => { if (s === 'keys-destroyed') throw new Error('simulated crash'); } }));
  assert.equal(st.server.mustGetClub(victim).wrappedKey, null);
  assert.equal(st.server.mustGetClub(victim).status, 'deleting');
  assert.deepEqual((await resumeInterruptedRotations(st)).deleted, [victim]);
  assert.ok(!existsSync(clubDir(dir, victim)));
  exp.delete(victim);
  await checkAll(st, exp);
  st.close();
});
