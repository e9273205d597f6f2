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
 *
 * The same workers run the re-encryption copy of a key rotation (`rekey`, storage/server/
 * rekey-job.ts), so the daemon has one bounded set of SQLite worker threads for backups,
 * downloads, cluster snapshots and rotations; jobs of every kind wait for a free worker in order.
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
import type { ArchiveJob, CopyJob, RekeyMessage, SnapshotJob, StepAck } from './snapshot-worker.js';
import type { RekeyJob, RekeyResult } from '../server/rekey-job.js';

type Reply =
  | { id: number; ok: true; copied: CopyResult; archived?: undefined; image?: undefined }
  | { id: number; ok: true; archived: { size: number; sha256: string; manifest: Manifest } }
  | { id: number; ok: true; archived?: undefined; copied?: undefined; image: Uint8Array; docs: Array<Omit<SnapDoc, 'key'> & { key: Uint8Array }>; staging: string; facts: InspectedImage['facts']; sha256: string }
  | { id: number; ok: true; rekeyed: RekeyResult; archived?: undefined; copied?: undefined; image?: undefined }
  | { id: number; ok: false; fallback?: true; error?: { name: string; code?: string; message: string } };

/** A step a re-encryption job reached; it waits for the StepAck. */
interface StepReport {
  id: number;
  step: string;
}

/** Tests: what a pool-wide step observer is told about the job. */
export interface RekeyJobInfo {
  kind: RekeyJob['kind'];
  clubId?: string;
}

interface Busy {
  id: number;
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
  /** A re-encryption job: its caller's step hooks, and the first error one of them threw. */
  rekey?: { info: RekeyJobInfo; onStep: (step: string) => void | Promise<void>; hookError?: unknown };
}

interface Slot {
  worker: Worker;
  busy: Busy | undefined;
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
  /**
   * Tests: awaited at every step a re-encryption job reports, before the caller's own hooks; the
   * job waits on its worker until both returned (a test holds a rotation at a step with it).
   */
  onRekeyStep?: (step: string, job: RekeyJobInfo) => void | Promise<void>;
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
  readonly #onRekeyStep: SnapshotPoolOptions['onRekeyStep'];
  readonly #slots: Slot[] = [];
  readonly #queue: Array<() => void> = [];
  #nextId = 1;
  #closed = false;

  constructor(o: SnapshotPoolOptions = {}) {
    this.#size = Math.min(8, Math.max(1, Math.floor(o.size ?? 1)));
    this.#script = o.script ?? new URL('./snapshot-worker.js', import.meta.url);
    this.#workerData = o.workerData;
    this.#progress = o.progress;
    this.#onRekeyStep = o.onRekeyStep;
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

  /**
   * A key rotation's re-encryption copy on a worker (storage/server/rekey-job.ts): the source
   * file copied, re-keyed, edited, fsynced and checked there with the worker's own connections.
   * `onStep` runs here at each step the job reports (store-copied, store-rekeyed / server-copied,
   * server-rekeyed) and the job waits for it; if it throws (or its promise rejects) the job stops
   * there and this rejects with that error. The caller holds writers to the source off until it
   * swapped the copy in (key-rotation.ts). Key bytes are copied into buffers of their own and
   * transferred to the worker, which zeroes them; the caller zeroes its own. Errors: the job's
   * (StorageError, CryptoError with their codes), BackupError SNAPSHOT_WORKER_FAILED when the
   * worker stopped or failed otherwise, BUSY when the pool is closed.
   */
  async rekey(job: RekeyJob, onStep: (step: string) => void | Promise<void> = () => undefined): Promise<RekeyResult> {
    if (this.#closed) throw new BackupError('BUSY', 'the storage workers are closed (server shutting down)');
    const own = (k: Uint8Array) => new Uint8Array(k);
    const sent: RekeyJob = job.kind === 'club' ? { ...job, oldKey: own(job.oldKey), newKey: own(job.newKey) } : { ...job, oldKey: own(job.oldKey), newKey: own(job.newKey), oldMaster: own(job.oldMaster), newMaster: own(job.newMaster) };
    const keys = sent.kind === 'club' ? [sent.oldKey, sent.newKey] : [sent.oldKey, sent.newKey, sent.oldMaster, sent.newMaster];
    const slot = await this.#acquire().catch((e: unknown) => {
      for (const k of keys) k.fill(0);
      throw e;
    });
    const busy: Busy = { id: this.#nextId++, resolve: () => undefined, reject: () => undefined, rekey: { info: { kind: job.kind, ...(job.kind === 'club' ? { clubId: job.clubId } : {}) }, onStep } };
    try {
      const p = new Promise<Reply>((resolve, reject) => Object.assign(busy, { resolve, reject }));
      slot.busy = busy;
      slot.worker.ref();
      const msg: RekeyMessage = { id: busy.id, rekey: sent };
      // Transferred, not cloned: no serialized copy of the keys is left behind on this side.
      slot.worker.postMessage(msg, keys.map((k) => k.buffer as ArrayBuffer));
      for (const k of keys) if (k.byteLength > 0) k.fill(0); // detached by the transfer (length 0); zeroed should one not be
      const reply = await p;
      if (busy.rekey!.hookError !== undefined) throw busy.rekey!.hookError;
      if (!reply.ok) throw typedError(reply.error ?? { name: 'Error', message: 'no answer' });
      if (!('rekeyed' in reply) || !reply.rekeyed) throw new BackupError('SNAPSHOT_WORKER_FAILED', 'the storage worker answered another job where a re-encryption was asked for');
      return reply.rekeyed;
    } finally {
      this.#release(slot);
    }
  }

  /** A step of a re-encryption job: the hooks run here, then the worker is told to go on or stop. */
  async #step(slot: Slot, b: Busy, step: string): Promise<void> {
    const r = b.rekey!;
    let abort = false;
    try {
      await this.#onRekeyStep?.(step, r.info);
      await r.onStep(step);
    } catch (e) {
      abort = true;
      r.hookError ??= e;
    }
    const ack: StepAck = { ack: b.id, ...(abort ? { abort: true as const } : {}) };
    if (slot.busy === b) slot.worker.postMessage(ack);
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
      // Checked again: a rotation or deletion may have locked the club while this job waited.
      if (st.cache.isLocked(row.id)) throw new StorageError('STORE_BUSY', `club ${row.id} is being maintained (key rotation or deletion); retry shortly`);
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
    for (const waiting of this.#queue.splice(0)) waiting();
    const slots = this.#slots.splice(0);
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  /** A free worker (spawned up to the bound), or wait for one; BUSY once the pool is closed, also for a job that waited. */
  #acquire(): Promise<Slot> {
    if (this.#closed) return Promise.reject(new BackupError('BUSY', 'the storage workers are closed (server shutting down)'));
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
    return new Promise((resolve, reject) => this.#queue.push(() => void this.#acquire().then(resolve, reject)));
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
      const what = slot.busy?.rekey ? 're-encrypting a copy for a key rotation; the rotation stopped before its commit point and resumes when run again' : "taking a snapshot; this club's backup failed";
      slot.busy?.reject(new BackupError('SNAPSHOT_WORKER_FAILED', `the storage worker stopped while ${what} (${why}); the next job gets a new worker`));
    };
    worker.on('message', (r: Reply | StepReport) => {
      const b = slot.busy;
      if (!b || b.id !== r.id) return;
      if ('step' in r) {
        if (b.rekey) void this.#step(slot, b, r.step);
        return;
      }
      b.resolve(r);
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
