/**
 * The snapshot worker (node:worker_threads, started by snapshot-pool.ts): opens one club's store
 * with its own SQLite connection, takes the snapshot in one read transaction (image, document
 * rows, hard links, document keys: archive-writer.ts `snapshotStore`), closes the connection,
 * then inspects and hashes the image; all off the daemon's main thread.
 *
 * It never writes to the store: no schema migration, no legacy re-keying, no journal-mode change.
 * A store that needs one of those (a pending store, a legacy layout, an older schema) is answered
 * `{ fallback }` and the pool snapshots it on the calling thread the old way.
 *
 * The thread runs at a lower CPU priority on Linux (WORKER_NICE below).
 *
 * Messages in: {id, dataDir, clubId, keys: [{key, version}]}. Out: {id, ok: true, image, docs,
 * staging, facts, sha256} (the image's buffer transferred), {id, ok: false, fallback}, or
 * {id, ok: false, error: {name, code, message}}. Keys are zeroed here once posted.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import { clubPageKey } from '../../crypto/wrap.js';
import { CLUB_DB_FILE, ClubStore, clubDir } from '../club/club-store.js';
import { MIGRATIONS } from '../club/schema.js';
import { StorageError } from '../engine/errors.js';
import { openEncrypted, type Db } from '../engine/sqlcipher.js';
import { inspectSnapshotImage, releaseTaken, snapshotStore, type TakenStore } from './archive-writer.js';

export interface SnapshotJob {
  id: number;
  dataDir: string;
  clubId: string;
  keys: Array<{ key: Uint8Array; version: number }>;
}

/** Open the store read-only in effect (no writes), or undefined when the calling thread must do it. */
function openForSnapshot(job: SnapshotJob): ClubStore | undefined {
  const dir = clubDir(job.dataDir, job.clubId);
  const path = join(dir, CLUB_DB_FILE);
  if (!existsSync(path)) return undefined;
  const top = MIGRATIONS.length ? MIGRATIONS[MIGRATIONS.length - 1]!.version : 0;
  for (const cand of job.keys) {
    const key = Buffer.from(cand.key);
    const pageKey = clubPageKey(key);
    let db: Db | undefined;
    try {
      db = openEncrypted(path, pageKey, { journalMode: 'keep' });
    } catch (e) {
      if (!(e instanceof StorageError && e.code === 'WRONG_DATA_KEY')) {
        key.fill(0);
        throw e;
      }
    } finally {
      pageKey.fill(0);
    }
    if (!db) {
      key.fill(0);
      continue;
    }
    if ((db.pragma('user_version', { simple: true }) as number) !== top) {
      db.close();
      key.fill(0);
      return undefined;
    }
    const store = new ClubStore(job.clubId, dir, db, key, cand.version);
    key.fill(0);
    return store;
  }
  return undefined;
}

function run(job: SnapshotJob): void {
  let store: ClubStore | undefined;
  let taken: TakenStore | undefined;
  try {
    store = openForSnapshot(job);
    if (!store) {
      parentPort!.postMessage({ id: job.id, ok: false, fallback: true });
      return;
    }
    try {
      taken = snapshotStore(store);
    } finally {
      store.close();
    }
    const inspected = inspectSnapshotImage(taken.image);
    const image = taken.image;
    const own = image.byteOffset === 0 && image.byteLength === image.buffer.byteLength;
    const docs = taken.docs.map((d) => ({ ...d, key: new Uint8Array(d.key) }));
    parentPort!.postMessage({ id: job.id, ok: true, image, docs, staging: taken.staging, facts: inspected.facts, sha256: inspected.sha256 }, own ? [image.buffer as ArrayBuffer] : []);
    for (const d of docs) d.key.fill(0);
    for (const d of taken.docs) d.key.fill(0);
  } catch (e) {
    if (taken) releaseTaken(taken);
    const err = e as { name?: string; code?: string; message?: string };
    parentPort!.postMessage({ id: job.id, ok: false, error: { name: String(err.name ?? 'Error'), code: typeof err.code === 'string' ? err.code : undefined, message: String(err.message ?? e) } });
  } finally {
    for (const k of job.keys) k.key.fill(0);
  }
}

/**
 * On Linux a nice value belongs to one thread (setpriority(PRIO_PROCESS, 0) is the calling
 * thread: man 2 setpriority, "NOTES"), so this lowers the worker only: on a busy machine the
 * daemon's main thread, which answers requests, gets the CPU first. Elsewhere it would renice
 * the whole process, so it is left alone there.
 */
export const WORKER_NICE = 10;
if (parentPort && process.platform === 'linux') {
  try {
    setPriority(WORKER_NICE);
  } catch {
    // Not allowed (a sandbox without setpriority): the worker runs at the daemon's priority.
  }
}

parentPort?.on('message', (job: SnapshotJob) => run(job));
