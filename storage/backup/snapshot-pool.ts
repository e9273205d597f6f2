/**
 * Club snapshots off the calling thread (issue 13): a small, bounded set of worker threads
 * (snapshot-worker.ts), each taking one snapshot at a time with its own SQLite connection, so a
 * nightly run over hundreds of clubs does not block the daemon's event loop for the store open
 * (~33 ms per club here), the read transaction and the inspection and hashing of the image
 * (~27 ms). The archive bytes are the same as takeClubSnapshot's (archive-writer.ts).
 *
 * Bounds: at most `size` workers (default 1), jobs beyond that wait in order. A worker that
 * stops while taking a snapshot (crash, out of memory, terminated) fails that job with
 * BackupError SNAPSHOT_WORKER_FAILED and is replaced for the next job; the caller (the backup
 * run) reports that club failed and goes on. Errors inside the worker come back typed
 * (StorageError, CryptoError with their codes; anything else as BackupError SNAPSHOT_WORKER_FAILED
 * with its message). Stores the worker must not open without writing (pending, legacy layout,
 * older schema) are snapshotted on the calling thread.
 */
import { Worker } from 'node:worker_threads';
import { CryptoError } from '../../crypto/errors.js';
import { StorageError } from '../engine/errors.js';
import type { Storage } from '../server/storage.js';
import { assembleSnapshot, createClubArchive, takeClubSnapshot, writeFileAtomic, type InspectedImage } from './archive-writer.js';
import { archiveSigner } from './club-backup-keys.js';
import type { ClubRow } from '../server/server-db.js';
import type { ClubSnapshot, Manifest, SnapDoc } from './archive-format.js';
import { BackupError } from './backup-errors.js';
import type { ArchiveJob, CopyJob, SnapshotJob } from './snapshot-worker.js';

type Reply =
  | { id: number; ok: true; copied: CopyResult; archived?: undefined; image?: undefined }
  | { id: number; ok: true; archived: { size: number; sha256: string; manifest: Manifest } }
  | { id: number; ok: true; archived?: undefined; copied?: undefined; image: Uint8Array; docs: Array<Omit<SnapDoc, 'key'> & { key: Uint8Array }>; staging: string; facts: InspectedImage['facts']; sha256: string }
  | { id: number; ok: false; fallback?: true; error?: { name: string; code?: string; message: string } };

interface Slot {
  worker: Worker;
  busy: { id: number; resolve: (r: Reply) => void; reject: (e: Error) => void } | undefined;
}

export interface SnapshotPoolOptions {
  /** Worker threads at most (1..8, default 1). */
  size?: number;
  /** The worker script (tests point it at a failing one); default snapshot-worker.js. */
  script?: URL;
  /** workerData for that script (tests). */
  workerData?: unknown;
  /** Tests: handed to every job (SnapshotJob.progress). */
  progress?: Int32Array;
}

/**
 * What `copy` gives: the copy's size and SHA-256 (hex) with the probe's rows, `changed` when the
 * store changed while it was copied (nothing kept), or `fallback` when the worker may not open
 * this store (the caller copies it itself).
 */
export type CopyResult = { size: number; sha256: string; probe: unknown; changed?: undefined } | { changed: true };

export class SnapshotPool {
  readonly #size: number;
  readonly #script: URL;
  readonly #workerData: unknown;
  readonly #progress: Int32Array | undefined;
  readonly #slots: Slot[] = [];
  readonly #queue: Array<() => void> = [];
  #nextId = 1;
  #closed = false;

  constructor(o: SnapshotPoolOptions = {}) {
    this.#size = Math.min(8, Math.max(1, Math.floor(o.size ?? 1)));
    this.#script = o.script ?? new URL('./snapshot-worker.js', import.meta.url);
    this.#workerData = o.workerData;
    this.#progress = o.progress;
  }

  /**
   * A copy of the club's store file at `path` (VACUUM INTO on a worker thread with its own
   * connection, still encrypted under the store's page key, mode 0600), with the rows of `probe`
   * (one read-only SELECT, run before and after the copy: the copy is kept only if both agree).
   * 'fallback' for a store the worker may not open (pending, legacy layout, older schema).
   * Errors as snapshot().
   */
  async copy(st: Storage, clubId: string, path: string, probe: string): Promise<CopyResult | 'fallback'> {
    const row = this.#check(st, clubId);
    if (row.storeState === 'pending') return 'fallback';
    const reply = await this.#run(st, row, undefined, { path, probe });
    if (!reply.ok) {
      if (reply.fallback) return 'fallback';
      throw typedError(reply.error!);
    }
    if (!('copied' in reply) || !reply.copied) throw new BackupError('SNAPSHOT_WORKER_FAILED', 'the snapshot worker answered with a snapshot where a copy was asked for');
    return reply.copied;
  }

  /**
   * The snapshot of a club (as takeClubSnapshot), taken on a worker thread. Errors: StorageError
   * CLUB_NOT_FOUND / CLUB_DELETED / STORE_BUSY as opening the club would give, errors of the
   * snapshot itself (DOC_NOT_FOUND, ...), BackupError SNAPSHOT_WORKER_FAILED when the worker stopped.
   */
  async snapshot(st: Storage, clubId: string, now: Date = new Date()): Promise<ClubSnapshot> {
    const row = this.#check(st, clubId);
    if (row.storeState === 'pending') return takeClubSnapshot(st, clubId, now);
    const reply = await this.#run(st, row);
    if (reply.ok && (reply.archived || !reply.image)) throw new BackupError('SNAPSHOT_WORKER_FAILED', 'the snapshot worker answered with an archive where a snapshot was asked for');
    if (!reply.ok) {
      if (reply.fallback) return takeClubSnapshot(st, clubId, now);
      throw typedError(reply.error!);
    }
    const image = Buffer.from(reply.image.buffer, reply.image.byteOffset, reply.image.byteLength);
    const docs = reply.docs.map((d) => ({ ...d, key: Buffer.from(d.key.buffer, d.key.byteOffset, d.key.byteLength) }));
    return assembleSnapshot(row, { image, docs, staging: reply.staging }, { facts: reply.facts, sha256: reply.sha256 }, now);
  }

  /**
   * The nightly run's step for one club: snapshot and write its server archive (sealed with `key`,
   * signed by this server: archiveSigner) to `file`, all on a worker thread; the same archive as
   * createClubArchive + writeFileAtomic on this thread. `key` is not kept (the caller zeroes it).
   * Errors as snapshot(), and those of writing the file.
   */
  async archive(st: Storage, clubId: string, key: Buffer, file: string, now: Date = new Date()): Promise<{ size: number; sha256: string; manifest: Manifest }> {
    const row = this.#check(st, clubId);
    const here = async () => {
      const { manifest, stream } = createClubArchive(st, clubId, { kind: 'server', key }, { now });
      return { ...(await writeFileAtomic(stream, file)), manifest };
    };
    if (row.storeState === 'pending') return here();
    const signer = archiveSigner(st);
    const archive: ArchiveJob = {
      file,
      createdAt: now.toISOString(),
      row: { id: row.id, name: row.name, plan: row.plan, settings: row.settings },
      sealKey: new Uint8Array(key),
      signer: signer.kind === 'hmac' ? { kind: 'hmac', macKey: new Uint8Array(signer.macKey) } : signer,
    };
    if (signer.kind === 'hmac') signer.macKey.fill(0);
    const reply = await this.#run(st, row, archive);
    if (!reply.ok) {
      if (reply.fallback) return here();
      throw typedError(reply.error!);
    }
    if (!reply.archived) throw new BackupError('SNAPSHOT_WORKER_FAILED', 'the snapshot worker answered with a snapshot where an archive was asked for');
    return reply.archived;
  }

  #check(st: Storage, clubId: string): ClubRow {
    if (this.#closed) throw new BackupError('BUSY', 'the snapshot workers are closed (server shutting down)');
    const row = st.server.mustGetClub(clubId);
    if (row.status === 'deleting') throw new StorageError('CLUB_DELETED', `club ${clubId} is being deleted; finish with commusicctl club delete ${clubId}`);
    if (st.cache.isLocked(clubId)) throw new StorageError('STORE_BUSY', `club ${clubId} is being maintained (key rotation or deletion); retry shortly`);
    return row;
  }

  /** One job on a free worker (waiting for one); keys are copied into the job and zeroed here. */
  async #run(st: Storage, row: ClubRow, archive?: ArchiveJob, copy?: CopyJob): Promise<Reply> {
    const slot = await this.#acquire();
    try {
      const keys = st.clubKeys(row);
      const job: SnapshotJob = { id: this.#nextId++, dataDir: st.dataDir, clubId: row.id, keys: keys.map((k) => ({ key: new Uint8Array(k.key), version: k.version })), ...(archive ? { archive } : {}), ...(copy ? { copy } : {}), ...(this.#progress ? { progress: this.#progress } : {}) };
      const p = new Promise<Reply>((resolve, reject) => (slot.busy = { id: job.id, resolve, reject }));
      slot.worker.ref();
      slot.worker.postMessage(job);
      for (const k of keys) k.key.fill(0);
      for (const k of job.keys) k.key.fill(0);
      archive?.sealKey.fill(0);
      if (archive?.signer.kind === 'hmac') archive.signer.macKey.fill(0);
      return await p;
    } finally {
      this.#release(slot);
    }
  }

  /** Stop the workers (a snapshot under way fails with SNAPSHOT_WORKER_FAILED). */
  async close(): Promise<void> {
    this.#closed = true;
    const slots = this.#slots.splice(0);
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  #acquire(): Promise<Slot> {
    const free = this.#slots.find((s) => !s.busy);
    if (free) {
      free.busy = { id: 0, resolve: () => undefined, reject: () => undefined };
      return Promise.resolve(free);
    }
    if (this.#slots.length < this.#size) {
      const slot = this.#spawn();
      slot.busy = { id: 0, resolve: () => undefined, reject: () => undefined };
      return Promise.resolve(slot);
    }
    return new Promise((resolve) => this.#queue.push(() => void this.#acquire().then(resolve)));
  }

  #release(slot: Slot): void {
    slot.busy = undefined;
    if (this.#slots.includes(slot)) slot.worker.unref();
    this.#queue.shift()?.();
  }

  #spawn(): Slot {
    const worker = new Worker(this.#script, { workerData: this.#workerData });
    const slot: Slot = { worker, busy: undefined };
    const fail = (why: string) => {
      const i = this.#slots.indexOf(slot);
      if (i >= 0) this.#slots.splice(i, 1);
      slot.busy?.reject(new BackupError('SNAPSHOT_WORKER_FAILED', `the snapshot worker stopped while taking a snapshot (${why}); this club's backup failed, the next one gets a new worker`));
    };
    worker.on('message', (r: Reply) => {
      if (slot.busy && slot.busy.id === r.id) slot.busy.resolve(r);
    });
    worker.on('error', (e) => fail(e.name));
    worker.on('exit', (code) => fail(`exit code ${code}`));
    worker.unref();
    this.#slots.push(slot);
    return slot;
  }
}

function typedError(e: { name: string; code?: string; message: string }): Error {
  if (e.name === 'StorageError' && e.code) return new StorageError(e.code as StorageError['code'], e.message);
  if (e.name === 'CryptoError' && e.code) return new CryptoError(e.code as CryptoError['code'], e.message);
  return new BackupError('SNAPSHOT_WORKER_FAILED', `the snapshot failed in the worker: ${e.message}`);
}
