/**
 * Snapshots off the event loop (issue 13 with 14): a cluster snapshot (VACUUM INTO,
 * cluster/snapshot.ts) and the snapshot of backup.download run on a snapshot worker thread with
 * its own connection (storage/backup/snapshot-pool.ts). Shown over the socket: while the worker
 * copies a large store, pings are answered (a request sent and answered entirely while the
 * worker's copy was under way, seen through the pool's progress flag). The results are the same
 * as the snapshot taken on the main thread. On the old code the copy ran on the main thread
 * inside the request's turn: no request could be answered during it.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { installCapture, CAPTURE_TABLE, STATE_TABLE } from '../cluster/capture.js';
import { serveSnapshot, takeSnapshot } from '../cluster/snapshot.js';
import { clubPageKey } from '../crypto/wrap.js';
import { registerBackupCommands } from '../daemon/backup/backup-commands.js';
import type { Connection } from '../client/connection.js';
import { archiveTrust, verifyArchive } from '../storage/backup/backup-archive.js';
import { SnapshotPool } from '../storage/backup/snapshot-pool.js';
import { openEncrypted } from '../storage/engine/sqlcipher.js';
import { ADMIN_PASSWORD, clubEnv, type ClubTestEnv } from './helpers/club-server.js';

/** Rows of about 2 KiB: a store of some 40 MB, whose copy takes many ping round trips. */
const ROWS = 20_000;

let env: ClubTestEnv;
let club: string;
let conn: Connection;
const progress = new Int32Array(new SharedArrayBuffer(4));
const pool = new SnapshotPool({ progress });

before(async () => {
  env = await clubEnv();
  registerBackupCommands(env.dispatcher, env.services, { passphraseLog2N: 12, snapshots: pool });
  club = await env.newClub();
  const db = env.storage.openClub(club).db;
  installCapture(db);
  db.transaction(() => {
    const ins = db.prepare('INSERT INTO persons (firstName, lastName, notes, photoConsent, blocked) VALUES (?, ?, ?, 0, 0)');
    for (let i = 0; i < ROWS; i++) ins.run(`F${i}`, `L${i}`, randomBytes(900).toString('hex'));
  })();
  // A replica at position 1 with nothing unshipped (what a standby or a quiet primary holds).
  db.exec(`DELETE FROM ${CAPTURE_TABLE}`);
  db.prepare(`INSERT OR REPLACE INTO ${STATE_TABLE} (k, v) VALUES ('seq', '1'), ('digest', ?)`).run('ab'.repeat(32));
  conn = await (await env.listen()).connect();
});
after(async () => {
  conn.close();
  await pool.close();
  await env.close();
});

/** Ping over the socket until `p` settles; counts pings sent and answered while the worker copied. */
async function pingsDuring(p: Promise<unknown>): Promise<number> {
  let done = false;
  void p.then(() => (done = true), () => (done = true));
  let during = 0;
  for (let i = 0; !done && i < 100_000; i++) {
    const before = Atomics.load(progress, 0);
    await conn.request('ping');
    if (before === 1 && Atomics.load(progress, 0) === 1) during++;
  }
  return during;
}

function tableDigest(path: string): string {
  const row = env.storage.server.mustGetClub(club);
  const [k] = env.storage.clubKeys(row);
  const pageKey = clubPageKey(k!.key);
  const db = openEncrypted(path, pageKey, { journalMode: 'keep' });
  try {
    const h = createHash('sha256');
    for (const r of db.prepare('SELECT * FROM persons ORDER BY id').iterate()) h.update(JSON.stringify(r));
    for (const r of db.prepare(`SELECT * FROM ${STATE_TABLE} ORDER BY k`).iterate()) h.update(JSON.stringify(r));
    return h.digest('hex');
  } finally {
    db.close();
    pageKey.fill(0);
  }
}

test('a cluster snapshot is copied on the worker: requests are answered meanwhile, the copy equals the main-thread one', { timeout: 240_000 }, async () => {
  Atomics.store(progress, 0, 0);
  const served = serveSnapshot(env.storage, club, {}, { pool });
  const during = await pingsDuring(served);
  assert.ok(during >= 1, 'no request was answered while the snapshot was copied');
  const payload = (await served)!;
  assert.ok(payload, 'a snapshot was served');
  const parts: Buffer[] = [];
  for await (const c of payload.chunks) parts.push(Buffer.from(c));
  const bytes = Buffer.concat(parts);
  assert.equal(bytes.length, payload.size);
  assert.equal(createHash('sha256').update(bytes).digest('hex'), payload.sha256);
  const here = takeSnapshot(env.storage, club)!;
  assert.deepEqual(payload.meta, here.meta, 'same position and schema');
  const file = join(env.dataDir, 'served-snapshot.db');
  writeFileSync(file, bytes, { mode: 0o600 });
  try {
    assert.equal(tableDigest(file), tableDigest(here.path), 'the worker copy holds what the main-thread copy holds');
  } finally {
    rmSync(file, { force: true });
    rmSync(here.path, { force: true });
  }
});

test('backup.download takes its snapshot on the worker: requests are answered meanwhile, the archive is whole', { timeout: 240_000 }, async () => {
  const admin = env.session();
  await admin.call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  const pass = 'a passphrase for the download';
  await admin.call('backup.setPassphrase', { passphrase: pass });
  Atomics.store(progress, 0, 0);
  const download = admin.call('backup.download');
  const during = await pingsDuring(download);
  assert.ok(during >= 1, 'no request was answered while the backup snapshot was taken');
  const r = await download;
  const parts: Buffer[] = [];
  for await (const c of r.download!) parts.push(Buffer.from(c));
  const rep = await verifyArchive(Readable.from([Buffer.concat(parts)]), { passphrase: pass, trust: archiveTrust(env.storage) });
  assert.equal(rep.tables['persons'], ROWS);
  assert.equal(r.payload.records, Object.values(rep.tables).reduce((a, b) => a + b, 0));
});
