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
 * With `archive` (the nightly run) it also writes the server archive of the snapshot to a staging
 * file (encryption, origin signature, fsync: archive-writer.ts, the same bytes as on the calling
 * thread), so none of that runs on the daemon's event loop either. The signing key (the server
 * identity's KeyObject, or the archive MAC key) is handed over in memory, never logged or stored.
 *
 * With `copy` (a cluster snapshot: cluster/snapshot.ts) it makes a plain copy of the store file
 * instead (CopyJob).
 *
 * A RekeyMessage (key rotation: storage/server/rekey-job.ts) re-encrypts a club's store or
 * server.db into a copy; this is the one job that writes (the copy, and the source's switch out
 * of WAL), and the caller holds every other writer off meanwhile. At each of its steps the worker
 * posts {id, step} and waits for {ack: id} (or {ack: id, abort: true}: the job stops there).
 *
 * Messages in: {id, dataDir, clubId, keys: [{key, version}], archive?, copy?}. Out: {id, ok: true, image,
 * docs, staging, facts, sha256} (the image's buffer transferred), {id, ok: true, archived: {size,
 * sha256, manifest}}, {id, ok: false, fallback}, or {id, ok: false, error: {name, code, message}}.
 * Keys are zeroed here once used or posted.
 */
import { createHash } from 'node:crypto';
import { chmodSync, createReadStream, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import { clubPageKey } from '../../crypto/wrap.js';
import { CLUB_DB_FILE, ClubStore, clubDir } from '../club/club-store.js';
import { MIGRATIONS } from '../club/schema.js';
import { StorageError } from '../engine/errors.js';
import { openEncrypted, type Db } from '../engine/sqlcipher.js';
import type { IdentityKey } from '../../crypto/identity.js';
import type { ClubRow } from '../server/server-db.js';
import { runRekeyJob, type RekeyJob } from '../server/rekey-job.js';
import type { OriginSigner } from './archive-origin.js';
import { archiveStream, assembleSnapshot, inspectSnapshotImage, releaseTaken, snapshotStore, writeFileAtomic, type InspectedImage, type TakenStore } from './archive-writer.js';

export interface SnapshotJob {
  id: number;
  dataDir: string;
  clubId: string;
  keys: Array<{ key: Uint8Array; version: number }>;
  /** Also write the server archive of the snapshot to `file` here (nightly run), not only snapshot. */
  archive?: ArchiveJob;
  /** Instead of a snapshot: a plain copy of the store (VACUUM INTO), cluster/snapshot.ts. */
  copy?: CopyJob;
  /** Tests: [0] is set to 1 when the snapshot or copy starts and to 2 when it ended. */
  progress?: Int32Array;
}

/**
 * A copy of the store file, still encrypted under its page key (`VACUUM INTO path`, mode 0600),
 * made with this worker's own connection. `probe` (one read-only SELECT) runs before and after
 * the copy on the same connection; the copy is kept only when both answers are equal, so the
 * answer describes the copy. Out: {id, ok: true, copied: {size, sha256, probe}} or
 * {id, ok: true, copied: {changed: true}} (the store changed meanwhile: nothing kept).
 */
export interface CopyJob {
  path: string;
  probe: string;
}

function sqlString(p: string): string {
  return "'" + p.replace(/'/g, "''") + "'";
}

/** Run a CopyJob on an opened store; removes a partial or unwanted copy. */
async function copyStore(job: SnapshotJob, c: CopyJob, store: ClubStore): Promise<void> {
  let kept = false;
  try {
    const probe = store.db.prepare(c.probe);
    const before = JSON.stringify(probe.all());
    if (job.progress) Atomics.store(job.progress, 0, 1);
    store.db.exec(`VACUUM INTO ${sqlString(c.path)}`);
    if (job.progress) Atomics.store(job.progress, 0, 2);
    const after = JSON.stringify(probe.all());
    store.close();
    if (before !== after) {
      parentPort!.postMessage({ id: job.id, ok: true, copied: { changed: true } });
      return;
    }
    chmodSync(c.path, 0o600);
    const h = createHash('sha256');
    let size = 0;
    for await (const chunk of createReadStream(c.path, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
      h.update(chunk);
      size += chunk.length;
    }
    kept = true;
    parentPort!.postMessage({ id: job.id, ok: true, copied: { size, sha256: h.digest('hex'), probe: JSON.parse(before) as unknown } });
  } finally {
    if (!kept) rmSync(c.path, { force: true });
  }
}

/** What writing a server archive needs: the club row's manifest facts, the sealing key, the signer. */
export interface ArchiveJob {
  file: string;
  createdAt: string;
  row: { id: string; name: string; plan: ClubRow['plan']; settings: ClubRow['settings'] };
  sealKey: Uint8Array;
  signer: { kind: 'rsa-pss'; identity: IdentityKey } | { kind: 'hmac'; macKey: Uint8Array };
}

/** Buffers arrive as plain Uint8Arrays: give the signer its Buffers back. */
function signerOf(s: ArchiveJob['signer']): OriginSigner {
  if (s.kind === 'hmac') return { kind: 'hmac', macKey: Buffer.from(s.macKey) };
  return { kind: 'rsa-pss', identity: { ...s.identity, spki: Buffer.from(s.identity.spki) } };
}

/** Write the archive of a taken snapshot to job.file; the snapshot is released by the stream. */
async function writeArchive(job: SnapshotJob, a: ArchiveJob, taken: TakenStore, inspected: InspectedImage): Promise<void> {
  const now = new Date(a.createdAt);
  const snap = assembleSnapshot(a.row, taken, inspected, now);
  const key = Buffer.from(a.sealKey);
  a.sealKey.fill(0);
  const signer = signerOf(a.signer);
  let written: { size: number; sha256: string };
  try {
    let stream;
    try {
      stream = archiveStream(snap, { kind: 'server', key }, { signer, now });
    } finally {
      key.fill(0);
      if (signer.kind === 'hmac') signer.macKey.fill(0);
    }
    written = await writeFileAtomic(stream, a.file);
  } finally {
    snap.release();
  }
  parentPort!.postMessage({ id: job.id, ok: true, archived: { ...written, manifest: snap.manifest } });
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

async function run(job: SnapshotJob): Promise<void> {
  let store: ClubStore | undefined;
  let taken: TakenStore | undefined;
  try {
    store = openForSnapshot(job);
    if (!store) {
      parentPort!.postMessage({ id: job.id, ok: false, fallback: true });
      return;
    }
    if (job.copy) {
      try {
        await copyStore(job, job.copy, store);
      } finally {
        store.close();
      }
      return;
    }
    try {
      if (job.progress) Atomics.store(job.progress, 0, 1);
      taken = snapshotStore(store);
      if (job.progress) Atomics.store(job.progress, 0, 2);
    } finally {
      store.close();
    }
    const inspected = inspectSnapshotImage(taken.image);
    if (job.archive) {
      const t = taken;
      taken = undefined; // released by the archive stream from here on
      await writeArchive(job, job.archive, t, inspected);
      return;
    }
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
    job.archive?.sealKey.fill(0);
  }
}

/**
 * On Linux a nice value belongs to one thread (setpriority(PRIO_PROCESS, 0) is the calling
 * thread: man 2 setpriority, "NOTES"), so this lowers the worker only: on a busy machine the
 * daemon's main thread, which answers requests, gets the CPU first. Elsewhere it would renice
 * the whole process, so it is left alone there. 19 (the lowest priority), not 10: at 10 the
 * request p99 during a nightly run was 1.68x the quiet p99 (median of ten runs), at 19 1.24x
 * (seven runs, no longer run time; docs/BENCHMARKS.md "Request path and backups"). The price:
 * a key rotation's copy (also on these workers) yields to the main thread more on a busy machine.
 */
export const WORKER_NICE = 19;
if (parentPort && process.platform === 'linux') {
  try {
    setPriority(WORKER_NICE);
  } catch {
    // Not allowed (a sandbox without setpriority): the worker runs at the daemon's priority.
  }
}

/** A key rotation's re-encryption copy (snapshot-pool.ts `rekey`). */
export interface RekeyMessage {
  id: number;
  rekey: RekeyJob;
}

/** The calling thread's answer to a step: go on, or stop the job there. */
export interface StepAck {
  ack: number;
  abort?: true;
}

const waitingSteps = new Map<number, (abort: boolean) => void>();

async function runRekey(m: RekeyMessage): Promise<void> {
  const step = (name: string) =>
    new Promise<void>((resolve, reject) => {
      waitingSteps.set(m.id, (abort) => (abort ? reject(new StorageError('STORE_BUSY', `the rotation was stopped at step ${name}`)) : resolve()));
      parentPort!.postMessage({ id: m.id, step: name });
    });
  try {
    const rekeyed = await runRekeyJob(m.rekey, step);
    parentPort!.postMessage({ id: m.id, ok: true, rekeyed });
  } catch (e) {
    const err = e as { name?: string; code?: string; message?: string };
    parentPort!.postMessage({ id: m.id, ok: false, error: { name: String(err.name ?? 'Error'), code: typeof err.code === 'string' ? err.code : undefined, message: String(err.message ?? e) } });
  } finally {
    waitingSteps.delete(m.id);
  }
}

parentPort?.on('message', (m: SnapshotJob | RekeyMessage | StepAck) => {
  if ('ack' in m) {
    const go = waitingSteps.get(m.ack);
    waitingSteps.delete(m.ack);
    go?.(m.abort === true);
  } else if ('rekey' in m) {
    void runRekey(m);
  } else {
    void run(m);
  }
});
