/**
 * Key rotation off the event loop: `keys rotate-club`, `keys rotate-master` and `keys rotate-master
 * --rekey-clubs`, run through the daemon's control socket, re-encrypt their copy (VACUUM INTO,
 * rekey, the edit, fsync, the open check) on a storage worker thread (storage/server/rekey-job.ts
 * on the daemon's SnapshotPool). Shown deterministically: the pool's step observer holds the job
 * on its worker at a step (after the copy of a club store of some megabytes, or of server.db),
 * and meanwhile another club's session is answered, a new connection completes its handshake
 * and logs in, while the rotating club answers BUSY (its store is locked) and a change to
 * server.db during its copy answers BUSY (writes held: nothing lands in the file being copied).
 * Released, the rotation finishes, every club holds all its data, and the refused change goes
 * through on retry. On the old code the copy ran inside the operation's turn on the main thread:
 * the step was never reached on a worker and nothing could be answered during it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { connect, type Connection } from '../client/connection.js';
import { nullLogger } from '../daemon/common/log.js';
import { loadConfig } from '../daemon/main/config.js';
import { startServer, type RunningServer } from '../daemon/main/main.js';
import { runOperation } from '../daemon/ops/offline.js';
import { SnapshotPool, type RekeyJobInfo } from '../storage/backup/snapshot-pool.js';
import { listDocuments, putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { createClub } from '../storage/server/provisioning.js';
import { rotateClub } from '../storage/server/key-rotation.js';
import { runRekeyJob } from '../storage/server/rekey-job.js';
import { clubDir } from '../storage/club/club-store.js';

const PASSWORD = 'a long admin password';
/** Rows of about 1 KiB: a store of some megabytes. */
const ROWS = 6_000;

/** The one step a test holds a rotation at: `reached` resolves there, the job waits for `release`. */
interface Hold {
  step: string;
  match: (job: RekeyJobInfo) => boolean;
  reached: Promise<RekeyJobInfo>;
  release: () => void;
}
let hold: Hold | undefined;
const seen: string[] = [];

function holdAt(step: string, match: (job: RekeyJobInfo) => boolean): Hold {
  let reached!: (j: RekeyJobInfo) => void;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const h: Hold = { step, match, reached: new Promise((r) => (reached = r)), release };
  (h as Hold & { go: (j: RekeyJobInfo) => Promise<void> }).go = async (j) => {
    reached(j);
    await released;
  };
  hold = h;
  return h;
}

const workers = new SnapshotPool({
  onRekeyStep: async (step, job) => {
    seen.push(`${job.kind}:${step}`);
    const h = hold as (Hold & { go: (j: RekeyJobInfo) => Promise<void> }) | undefined;
    if (h && h.step === step && h.match(job)) {
      hold = undefined;
      await h.go(job);
    }
  },
});

let server: RunningServer;
let dir: string;
let dataDir: string;
let port: number;
let big: string;
let other: string;
let session: Connection;
const docContent = Buffer.alloc(100_000, 'the honour roll ');

const open = () => connect({ host: '127.0.0.1', port, knownServersFile: join(dir, 'known_servers') });

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return String((e as { code?: string }).code);
  }
}

/** What must hold while a rotation waits on its worker: the daemon serves everyone else. */
async function othersServed(): Promise<void> {
  const listed = (await session.request('persons.list', {})) as { items?: unknown[] };
  assert.ok(listed, 'a request of another club was answered while the rotation waited');
  const fresh = await open();
  try {
    await fresh.request('auth.login', { club: other, user: 'admin', password: PASSWORD });
    await fresh.request('ping');
  } finally {
    fresh.close();
  }
}

async function bigIntact(): Promise<void> {
  const c = await open();
  try {
    await c.request('auth.login', { club: big, user: 'admin', password: PASSWORD });
  } finally {
    c.close();
  }
  const db = server.storage.openClub(big).db;
  assert.equal((db.prepare('SELECT count(*) AS n FROM persons').get() as { n: number }).n, ROWS);
  assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
  const [doc] = listDocuments(server.storage, big);
  assert.deepEqual(await readDocumentBuffer(server.storage, big, doc!.id), docContent);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'commusic-rotation-offthread-'));
  dataDir = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false } }));
  server = await startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger: nullLogger(), workers });
  port = server.daemon.address().port;
  big = (await createClub(server.storage, { name: 'MV Groß', adminUser: 'admin', adminPassword: PASSWORD })).id;
  other = (await createClub(server.storage, { name: 'MV Klein', adminUser: 'admin', adminPassword: PASSWORD })).id;
  const db = server.storage.openClub(big).db;
  db.transaction(() => {
    const ins = db.prepare('INSERT INTO persons (firstName, lastName, notes, photoConsent, blocked) VALUES (?, ?, ?, 0, 0)');
    for (let i = 0; i < ROWS; i++) ins.run(`F${i}`, `L${i}`, randomBytes(512).toString('hex'));
  })();
  await putDocument(server.storage, big, Readable.from([docContent]), { kind: 'honour', name: 'roll' });
  session = await open();
  await session.request('auth.login', { club: other, user: 'admin', password: PASSWORD });
});

after(async () => {
  hold?.release();
  session?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('keys rotate-club through the daemon: while the big store is re-encrypted on the worker, another club and a new handshake are answered', { timeout: 180_000 }, async () => {
  const versionBefore = server.storage.server.mustGetClub(big).keyVersion;
  const h = holdAt('store-copied', (j) => j.clubId === big);
  let finished = false;
  const rotation = runOperation(dataDir, 'keys.rotate-club', { id: big }).finally(() => (finished = true));
  const job = await h.reached;
  assert.deepEqual(job, { kind: 'club', clubId: big });
  try {
    await othersServed();
    // The rotating club is locked: BUSY, nothing written to the file being copied.
    const c = await open();
    try {
      assert.equal(await codeOf(c.request('auth.login', { club: big, user: 'admin', password: PASSWORD })), 'BUSY');
    } finally {
      c.close();
    }
    // One rotation at a time: a second one is refused while this one waits.
    await assert.rejects(runOperation(dataDir, 'keys.rotate-club', { id: other }), /another key rotation is running/);
    assert.equal(finished, false, 'the rotation waits on its worker meanwhile');
  } finally {
    h.release();
  }
  const r = await rotation;
  assert.equal(r.via, 'daemon');
  assert.deepEqual(r.result, { id: big, keyVersion: versionBefore + 1, documents: 1 });
  assert.ok(seen.includes('club:store-rekeyed'), 'the worker reported both steps');
  await bigIntact();
});

test('keys rotate-master through the daemon: server.db is copied on the worker; reads go on, a server.db change answers BUSY and goes through afterwards', { timeout: 180_000 }, async () => {
  const oldId = server.storage.master.id;
  const h = holdAt('server-copied', (j) => j.kind === 'server');
  let finished = false;
  const rotation = runOperation(dataDir, 'keys.rotate-master', {}).finally(() => (finished = true));
  await h.reached;
  try {
    await othersServed();
    // backup.setPassphrase changes the club's row in server.db: refused while server.db is copied.
    assert.equal(await codeOf(session.request('backup.setPassphrase', { passphrase: 'the first backup passphrase' })), 'BUSY');
    assert.equal(finished, false, 'the rotation waits on its worker meanwhile');
  } finally {
    h.release();
  }
  const r = (await rotation).result as { oldKeyId: string; newKeyId: string; clubs: number };
  assert.equal(r.oldKeyId, oldId);
  assert.notEqual(r.newKeyId, oldId);
  assert.equal(r.clubs, 2);
  assert.equal(server.storage.master.id, r.newKeyId);
  // The change refused during the copy goes through now, into the new server.db.
  assert.equal(await codeOf(session.request('backup.setPassphrase', { passphrase: 'the first backup passphrase' })), 'ok');
  assert.ok(server.storage.server.mustGetClub(other).settings['backup'], 'the change is in the swapped-in server.db');
  await othersServed();
  await bigIntact();
  // The backups share the workers and write their state to the new server.db (not the closed one).
  const run = (await runOperation(dataDir, 'backup.run', {})).result as { ok: number; failedClubs: unknown[] };
  assert.deepEqual([run.ok, run.failedClubs], [2, []]);
  assert.ok(server.storage.server.getMeta('backup.lastSuccess.local'), 'the last success is written to the swapped-in server.db');
});

test('keys rotate-master --rekey-clubs through the daemon: each store is re-encrypted on the worker while the others are served', { timeout: 180_000 }, async () => {
  const versionBefore = server.storage.server.mustGetClub(big).keyVersion;
  const h = holdAt('store-rekeyed', (j) => j.clubId === big);
  let finished = false;
  const rotation = runOperation(dataDir, 'keys.rotate-master', { rekeyClubs: true }).finally(() => (finished = true));
  await h.reached;
  try {
    await othersServed();
    assert.equal(finished, false, 'the procedure waits on its worker meanwhile');
  } finally {
    h.release();
  }
  const r = (await rotation).result as { clubs: Array<{ id: string; keyVersion: number }> };
  assert.equal(r.clubs.find((c) => c.id === big)?.keyVersion, versionBefore + 1);
  assert.equal(r.clubs.length, 2);
  await othersServed();
  await bigIntact();
});

test('a step hook that throws stops the job on the worker: the rotation fails, the club stays usable, the next run finishes it', { timeout: 120_000 }, async () => {
  const st = server.storage;
  const before = st.server.mustGetClub(other).keyVersion;
  await assert.rejects(rotateClub(st, other, { workers, onStep: (s) => { if (s === 'store-rekeyed') throw new Error('simulated stop'); } }), /simulated stop/);
  assert.equal(st.server.mustGetClub(other).keyVersion, before, 'not promoted');
  assert.ok(st.server.mustGetClub(other).pendingWrappedKey, 'the pending key stays for the next run');
  await othersServed();
  const r = await rotateClub(st, other, { workers });
  assert.equal(r.keyVersion, before + 1);
  assert.ok(!existsSync(join(clubDir(dataDir, other), 'club.db.rotating')));
  await othersServed();
});

test('the worker side zeroes every key it was handed, after a copy and after a failure', { timeout: 120_000 }, async () => {
  const st = server.storage;
  const row = st.server.mustGetClub(other);
  const [cur] = st.clubKeys(row);
  const fresh = randomBytes(32);
  const path = join(clubDir(dataDir, other), 'club.db');
  const tmp = join(clubDir(dataDir, other), 'club.db.keytest');
  const release = st.cache.lock(other);
  try {
    const job = { kind: 'club' as const, dataDir, clubId: other, path, tmp, oldKey: new Uint8Array(cur!.key), newKey: new Uint8Array(fresh), oldVersion: row.keyVersion };
    const r = await runRekeyJob(job, async () => undefined);
    assert.equal(r.state, 'copied');
    assert.ok(job.oldKey.every((b) => b === 0) && job.newKey.every((b) => b === 0), 'keys zeroed after the copy');
    const bad = { ...job, oldKey: new Uint8Array(randomBytes(32)), newKey: new Uint8Array(randomBytes(32)) };
    await assert.rejects(runRekeyJob(bad, async () => undefined), (e: Error & { code?: string }) => e.code === 'WRONG_DATA_KEY');
    assert.ok(bad.oldKey.every((b) => b === 0) && bad.newKey.every((b) => b === 0), 'keys zeroed after a failure');
  } finally {
    rmSync(tmp, { force: true });
    release();
    cur!.key.fill(0);
    fresh.fill(0);
  }
  await othersServed();
});
