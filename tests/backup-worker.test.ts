/**
 * Issue 13, backups off the main thread: the nightly run takes each club's snapshot on a worker
 * thread with its own SQLite connection (storage/backup/snapshot-pool.ts). The archive is the
 * same as one taken on the calling thread; the daemon's own store cache is not touched (the main
 * thread opened nothing); errors in the worker come back typed; a worker that dies fails only
 * that club's backup, the run reports it and goes on, and the process stays up.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { archiveTrust, takeClubSnapshot, verifyArchive } from '../storage/backup/backup-archive.js';
import { clubSealingKey, serverOpenKey } from '../storage/backup/archive-keys.js';
import { SnapshotPool } from '../storage/backup/snapshot-pool.js';
import { BackupError } from '../storage/backup/backup-errors.js';
import { StorageError } from '../storage/engine/errors.js';
import { BackupService } from '../daemon/backup/backup-service.js';
import { addDocument, addPerson, makeClubs, newStorage } from './backup-helpers.js';
import { tmpDir } from './store-helpers.js';

/** Each page of an SQLite image without its reserved bytes. */
function pageContents(image: Buffer): Buffer[] {
  const size = image.readUInt16BE(16) === 1 ? 65536 : image.readUInt16BE(16);
  const usable = size - image[20]!;
  const out: Buffer[] = [];
  for (let o = 0; o < image.length; o += size) out.push(image.subarray(o, o + usable));
  return out;
}

const tmp = tmpDir('commusic-backup-worker-');
after(() => tmp.cleanup());

describe('snapshots on a worker thread', { timeout: 120_000 }, () => {
  it('gives the same manifest and image as the calling thread, without opening the store there', async () => {
    const st = await newStorage(join(tmp.dir, 'same', 'data'));
    const pool = new SnapshotPool();
    try {
      const [club] = await makeClubs(st, 1);
      for (let i = 0; i < 30; i++) addPerson(st, club!, i);
      await addDocument(st, club!, randomBytes(100_000));
      const now = new Date('2026-11-30T03:00:00Z');
      const here = takeClubSnapshot(st, club!, now);
      here.release();
      const there = await pool.snapshot(st, club!, now);
      try {
        // The pages' reserved bytes (the page cipher's IV and MAC, header byte 20) differ between
        // connections; the page contents, every manifest fact and the data fingerprint do not.
        assert.deepEqual({ ...there.manifest, sqlite: { ...there.manifest.sqlite, sha256: '' } }, { ...here.manifest, sqlite: { ...here.manifest.sqlite, sha256: '' } });
        assert.equal(there.manifest.sqlite.sha256, createHash('sha256').update(there.image).digest('hex'));
        assert.deepEqual(pageContents(there.image), pageContents(here.image));
        assert.equal(there.docs.length, 1);
        assert.equal(there.docs[0]!.key.length, 32);
      } finally {
        there.release();
      }
      // With the store closed in this process, the snapshot opens nothing on this thread.
      // (Closing checkpoints the WAL: the pages' encryption bytes change, the data does not.)
      st.cache.evict(club!);
      const again = await pool.snapshot(st, club!, now);
      again.release();
      assert.equal(st.cache.isOpen(club!), false, 'the main thread did not open the store');
      assert.equal(again.manifest.dataFingerprint, here.manifest.dataFingerprint);
      assert.deepEqual(again.manifest.tables, here.manifest.tables);
    } finally {
      await pool.close();
      st.close();
    }
  });

  it('writes the server archive on the worker: it verifies and opens like one written here', async () => {
    const st = await newStorage(join(tmp.dir, 'archive', 'data'));
    const pool = new SnapshotPool();
    try {
      const [club] = await makeClubs(st, 1);
      for (let i = 0; i < 10; i++) addPerson(st, club!, i);
      await addDocument(st, club!, randomBytes(50_000));
      const here = takeClubSnapshot(st, club!);
      here.release();
      st.cache.evict(club!);
      const file = join(tmp.dir, 'archive', 'one.cmbk');
      const key = clubSealingKey(st, club!);
      const r = await pool.archive(st, club!, key, file);
      assert.equal(st.cache.isOpen(club!), false, 'the main thread did not open the store');
      const bytes = readFileSync(file);
      assert.equal(r.size, bytes.length);
      assert.equal(r.sha256, createHash('sha256').update(bytes).digest('hex'));
      const rep = await verifyArchive(Readable.from([bytes]), { ...serverOpenKey(st), trust: archiveTrust(st) });
      assert.equal(rep.ok, true);
      assert.equal(r.manifest.dataFingerprint, here.manifest.dataFingerprint);
      assert.deepEqual(r.manifest.documents, here.manifest.documents);
    } finally {
      await pool.close();
      st.close();
    }
  });

  it('errors of the snapshot come back typed (a missing document file: DOC_NOT_FOUND)', async () => {
    const st = await newStorage(join(tmp.dir, 'typed', 'data'));
    const pool = new SnapshotPool();
    try {
      const [club] = await makeClubs(st, 1);
      const id = await addDocument(st, club!, randomBytes(1000));
      const store = st.openClub(club!);
      const file = (store.db.prepare('SELECT file FROM documents WHERE id = ?').get(id) as { file: string }).file;
      rmSync(join(store.docsDir, file));
      await assert.rejects(pool.snapshot(st, club!), (e: unknown) => e instanceof StorageError && e.code === 'DOC_NOT_FOUND');
      await assert.rejects(pool.snapshot(st, 'no-such-club'), (e: unknown) => e instanceof StorageError && e.code === 'CLUB_NOT_FOUND');
    } finally {
      await pool.close();
      st.close();
    }
  });

  for (const mode of ['crash', 'exit'] as const) {
    it(`a worker that dies (${mode}) fails that club's backup; the run reports it and goes on`, async () => {
      const dir = join(tmp.dir, `dies-${mode}`);
      const st = await newStorage(join(dir, 'data'));
      const script = new URL('./snapshot-crash-worker.js', import.meta.url);
      const svc = new BackupService({ storage: st, config: { destinations: [{ name: 'local', kind: 'local', path: join(dir, 'backups') }] }, snapshots: new SnapshotPool({ script, workerData: { mode } }) });
      const good = new BackupService({ storage: st, config: { destinations: [{ name: 'local', kind: 'local', path: join(dir, 'backups') }] } });
      try {
        const clubs = await makeClubs(st, 2);
        for (const c of clubs) addPerson(st, c, 1);
        const rep = await svc.runNightly({ mail: false, retention: false });
        assert.equal(rep.ok, 0);
        assert.deepEqual(rep.failedClubs.map((f) => f.clubId).sort(), [...clubs].sort());
        for (const f of rep.failedClubs) assert.match(f.error, /SNAPSHOT_WORKER_FAILED/);
        // This process is still up and a working pool backs everything up.
        const rep2 = await good.runNightly({ mail: false, retention: false });
        assert.equal(rep2.ok, 2);
        const key = { ...serverOpenKey(st), trust: archiveTrust(st) };
        for (const a of await good.destination('local').list()) assert.equal((await verifyArchive(await good.destination('local').get(a.name), key)).ok, true);
      } finally {
        await svc.close();
        await good.close();
        st.close();
      }
    });
  }

  it('a closed pool refuses with a typed error', async () => {
    const st = await newStorage(join(tmp.dir, 'closed', 'data'));
    const pool = new SnapshotPool();
    try {
      const [club] = await makeClubs(st, 1);
      await pool.close();
      await assert.rejects(pool.snapshot(st, club!), (e: unknown) => e instanceof BackupError && e.code === 'BUSY');
    } finally {
      st.close();
    }
  });
});
