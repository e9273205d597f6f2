/**
 * Club snapshots (issue 14, "A new standby starts from an encrypted snapshot and catches up").
 *
 * A snapshot is a copy of a club store at a known log position: `VACUUM INTO` of the store,
 * which SQLite3MultipleCiphers writes under the same page key (the copy is encrypted under the
 * club's data key exactly like the store; nothing is decrypted for the transfer). The position
 * is the one the store records in `_cluster_state` (seq and digest of the last entry it holds).
 *
 * The copy equals its position only when the store holds no captured change that is not in the
 * log yet (`_cluster_capture` empty): a standby's replica always does (each entry is applied in
 * one transaction with its position), a primary's store does between commits. The copy is made
 * on a snapshot worker thread with its own connection (off the event loop), which reads position,
 * pending changes and schema before and after the copy and keeps it only if they agree.
 *
 * Serving (`serveSnapshot`, the peer channel's pull handler for kind 'snapshot'): the file is
 * streamed in 256 KiB chunks and removed afterwards; `meta` carries {seq, digest, schema}.
 *
 * Installing (`obtainSnapshot`): a standby whose position is below the log's trim point pulls a
 * snapshot from the club's other members (standbys first, then the primary), writes it to a
 * temporary file (bounded size and time), and refuses it unless: size and SHA-256 match; the
 * club's data key opens it; its schema is not newer than ours, every object exactly this release's
 * (store-schema.ts); `_cluster_state` names the declared position; nothing is pending capture; the
 * change log verifies; the position continues in etcd (the head, or entry seq+1 names its digest as
 * `prev`). Then it replaces the replica (store closed, locked) and is followed (log-follower.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, createReadStream, readdirSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { clubPageKey } from '../crypto/wrap.js';
import { verifyAuditLog, type AuditVerifier } from '../storage/club/audit-log.js';
import { clubDbPath, clubDir } from '../storage/club/club-store.js';
import { MIGRATIONS } from '../storage/club/schema.js';
import { StorageError } from '../storage/engine/errors.js';
import { removeSqliteFiles, swapInSqliteFile } from '../storage/engine/rekey.js';
import { openEncrypted, type Db } from '../storage/engine/sqlcipher.js';
import type { Storage } from '../storage/server/storage.js';
import { SnapshotPool } from '../storage/backup/snapshot-pool.js';
import { CAPTURE_TABLE, installCapture, pendingCapture, readPosition, STATE_TABLE, type ReplicaPosition } from './capture.js';
import { readEntries, readHead } from './club-log.js';
import { ClusterError, reasonOf, type ClusterLogger } from './errors.js';
import { foreignObject, modelObjects } from './store-schema.js';
import type { EtcdGateway } from './etcd-gateway.js';
import type { PeerPayload, PeerTransport } from './peer-types.js';

/** Chunk size of a snapshot on the peer channel (bytes). */
export const SNAPSHOT_CHUNK_BYTES = 256 * 1024;
/** Largest snapshot taken or accepted by default (bytes). */
export const DEFAULT_SNAPSHOT_MAX_BYTES = 4 * 1024 ** 3;
/** Longest a whole transfer may take by default (ms), and longest one chunk may keep us waiting. */
export const DEFAULT_SNAPSHOT_TIMEOUT_MS = 15 * 60_000;
const CHUNK_IDLE_MS = 30_000;
/** How long a provider waits for a primary's store to have no change in flight (ms). */
const QUIET_WAIT_MS = 3000;
/** Leftover snapshot files (crash, abandoned transfer) older than this are removed (ms). */
const LEFTOVER_MS = 3_600_000;
const SNAP_PREFIX = '.snapshot-';

export interface SnapshotLimits {
  /** Largest snapshot in bytes (default 4 GiB). */
  maxBytes?: number;
  /** Longest transfer in ms (default 15 min). */
  timeoutMs?: number;
}

/** What a snapshot's `meta` carries. */
export interface SnapshotMeta extends ReplicaPosition {
  /** The store's schema version (PRAGMA user_version). */
  schema: number;
}

const HEX64 = /^[0-9a-f]{64}$/;

/** Parse and check a snapshot's meta. @throws ClusterError SNAPSHOT_INVALID */
export function parseSnapshotMeta(meta: Record<string, string | number> | undefined): SnapshotMeta {
  const seq = meta?.seq;
  const digest = meta?.digest;
  const schema = meta?.schema;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1 || typeof digest !== 'string' || !HEX64.test(digest) || typeof schema !== 'number' || !Number.isSafeInteger(schema) || schema < 0) {
    throw new ClusterError('SNAPSHOT_INVALID', 'snapshot position is missing or malformed');
  }
  return { seq, digest, schema };
}

function sweepLeftovers(dir: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const n of names) {
    if (!n.startsWith(SNAP_PREFIX)) continue;
    try {
      if (now - statSync(join(dir, n)).mtimeMs > LEFTOVER_MS) rmSync(join(dir, n), { force: true });
    } catch {
      // gone meanwhile
    }
  }
}

function sqlString(p: string): string {
  return "'" + p.replace(/'/g, "''") + "'";
}

/**
 * Copy a club's store to a new file beside it (still encrypted under the club's page key), at the
 * position it records, on this thread. Returns undefined when the store has no position yet
 * (nothing applied) or holds changes not yet in the log. The fallback of `takeSnapshotOffThread`.
 */
export function takeSnapshot(storage: Storage, club: string): { path: string; meta: SnapshotMeta } | undefined {
  const dir = clubDir(storage.dataDir, club);
  sweepLeftovers(dir);
  const db = storage.openClub(club, { allowSuspended: true }).db;
  installCapture(db);
  if (pendingCapture(db) > 0) return undefined;
  const pos = readPosition(db);
  if (pos.seq < 1 || !HEX64.test(pos.digest)) return undefined;
  const schema = db.pragma('user_version', { simple: true }) as number;
  const path = join(dir, `${SNAP_PREFIX}${randomBytes(8).toString('hex')}.db`);
  db.exec(`VACUUM INTO ${sqlString(path)}`);
  chmodSync(path, 0o600);
  return { path, meta: { seq: pos.seq, digest: pos.digest, schema } };
}

/** What the worker reads before and after its copy: the position, unshipped changes, the schema. */
const SNAPSHOT_PROBE = `SELECT (SELECT count(*) FROM ${CAPTURE_TABLE}) AS pending, (SELECT v FROM ${STATE_TABLE} WHERE k = 'seq') AS seq, (SELECT v FROM ${STATE_TABLE} WHERE k = 'digest') AS digest, (SELECT user_version FROM pragma_user_version) AS schema`;

let sharedPool: SnapshotPool | undefined;

/**
 * `takeSnapshot` off the event loop (issue 13 with 14): `VACUUM INTO` runs on a snapshot worker
 * thread with its own connection (storage/backup/snapshot-pool.ts `copy`), so requests keep
 * being answered while a large store is copied; the worker hashes the copy too. Same file and
 * meta as takeSnapshot. Undefined as takeSnapshot (and when the store changed during the copy);
 * a store the worker may not open is copied on this thread (takeSnapshot).
 */
export async function takeSnapshotOffThread(storage: Storage, club: string, pool: SnapshotPool): Promise<{ path: string; meta: SnapshotMeta; size: number; sha256: string } | undefined> {
  const dir = clubDir(storage.dataDir, club);
  sweepLeftovers(dir);
  // The capture tables and triggers exist before the copy (made on this store's own connection).
  installCapture(storage.openClub(club, { allowSuspended: true }).db);
  const path = join(dir, `${SNAP_PREFIX}${randomBytes(8).toString('hex')}.db`);
  const r = await pool.copy(storage, club, path, SNAPSHOT_PROBE);
  if (r === 'fallback') {
    const taken = takeSnapshot(storage, club);
    return taken ? { ...taken, ...(await hashFile(taken.path)) } : undefined;
  }
  if (r.changed) return undefined;
  const [row] = r.probe as Array<{ pending: number; seq: string | null; digest: string | null; schema: number }>;
  const seq = Number(row?.seq ?? 0);
  if (!row || row.pending > 0 || !Number.isSafeInteger(seq) || seq < 1 || !HEX64.test(row.digest ?? '')) {
    rmSync(path, { force: true });
    return undefined;
  }
  return { path, meta: { seq, digest: row.digest!, schema: row.schema }, size: r.size, sha256: r.sha256 };
}

async function hashFile(path: string): Promise<{ size: number; sha256: string }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of createReadStream(path, { highWaterMark: SNAPSHOT_CHUNK_BYTES }) as AsyncIterable<Buffer>) {
    h.update(c);
    size += c.length;
  }
  return { size, sha256: h.digest('hex') };
}

async function* fileChunks(path: string): AsyncGenerator<Uint8Array> {
  try {
    for await (const c of createReadStream(path, { highWaterMark: SNAPSHOT_CHUNK_BYTES }) as AsyncIterable<Buffer>) yield c;
  } finally {
    rmSync(path, { force: true });
  }
}

let serving = Promise.resolve();

/**
 * The pull handler for kind 'snapshot': a fresh snapshot of the club's local store, or undefined
 * when this server has none (no store, no position yet, or a primary too busy to be quiet within
 * 3 s). The copy is made on a snapshot worker thread (takeSnapshotOffThread; `o.pool`: the daemon
 * passes its one pool of storage workers, shared with backups and key rotation; default one pool
 * of one worker per process). One snapshot is taken at a time per process; the file is removed once streamed (or, when
 * a transfer is abandoned, by the sweep an hour later).
 */
export function serveSnapshot(storage: Storage, club: string, limits: SnapshotLimits = {}, o: { pool?: SnapshotPool } = {}): Promise<PeerPayload | undefined> {
  const pool = o.pool ?? (sharedPool ??= new SnapshotPool());
  const run = serving.then(async (): Promise<PeerPayload | undefined> => {
    const row = storage.server.getClub(club);
    if (!row || row.status === 'deleting' || row.storeState !== 'created') return undefined;
    const deadline = Date.now() + QUIET_WAIT_MS;
    let taken = await takeSnapshotOffThread(storage, club, pool);
    while (!taken && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      taken = await takeSnapshotOffThread(storage, club, pool);
    }
    if (!taken) return undefined;
    const { size, sha256 } = taken;
    if (size > (limits.maxBytes ?? DEFAULT_SNAPSHOT_MAX_BYTES)) {
      rmSync(taken.path, { force: true });
      return undefined;
    }
    return { size, sha256, meta: { seq: taken.meta.seq, digest: taken.meta.digest, schema: taken.meta.schema }, chunks: fileChunks(taken.path) };
  });
  serving = run.then(
    () => undefined,
    () => undefined,
  );
  return run;
}

/** Register `serveSnapshot` for this server's stores on the peer channel; copies run on `pool` (default the process's own). */
export function registerSnapshotProvider(peers: PeerTransport, storage: Storage, logger: ClusterLogger, limits: SnapshotLimits = {}, pool?: SnapshotPool): void {
  peers.onPull('snapshot', async (obj) => {
    if (obj.kind !== 'snapshot' || obj.name !== '') return undefined;
    try {
      return await serveSnapshot(storage, obj.club, limits, pool ? { pool } : {});
    } catch (e) {
      logger.warn('snapshot not served', { event: 'cluster.snapshot.serve-failed', clubId: obj.club, code: (e as { code?: string }).code ?? (e as Error).name });
      return undefined;
    }
  });
}

/** Write a payload to `path` (mode 0600), bounded in size and time, and check size and hash. */
async function receive(payload: PeerPayload, path: string, limits: SnapshotLimits): Promise<void> {
  const max = limits.maxBytes ?? DEFAULT_SNAPSHOT_MAX_BYTES;
  if (!Number.isSafeInteger(payload.size) || payload.size < 1 || payload.size > max) throw new ClusterError('SNAPSHOT_INVALID', `snapshot size ${payload.size} is outside 1..${max}`);
  if (typeof payload.sha256 !== 'string' || !HEX64.test(payload.sha256)) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot hash is malformed');
  const deadline = Date.now() + (limits.timeoutMs ?? DEFAULT_SNAPSHOT_TIMEOUT_MS);
  const fh = await open(path, 'wx', 0o600);
  const h = createHash('sha256');
  let size = 0;
  const it = payload.chunks[Symbol.asyncIterator]();
  try {
    for (;;) {
      const left = Math.min(CHUNK_IDLE_MS, deadline - Date.now());
      if (left <= 0) throw new ClusterError('SNAPSHOT_UNAVAILABLE', 'snapshot transfer took too long');
      let timer: NodeJS.Timeout | undefined;
      const next = await Promise.race([
        it.next(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new ClusterError('SNAPSHOT_UNAVAILABLE', 'snapshot transfer stalled')), left);
        }),
      ]).finally(() => clearTimeout(timer));
      if (next.done) break;
      const c = next.value;
      size += c.length;
      if (size > payload.size) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot is longer than declared');
      h.update(c);
      await fh.write(c);
    }
    await fh.sync();
  } catch (e) {
    await it.return?.().catch(() => undefined);
    throw e;
  } finally {
    await fh.close();
  }
  if (size !== payload.size) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot is shorter than declared');
  if (h.digest('hex') !== payload.sha256) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot hash does not match');
}

/**
 * The checks on the image itself: schema, integrity, position, nothing pending, change log.
 * Returns the document file names its rows name.
 */
function checkImage(db: Db, club: string, meta: SnapshotMeta, auditVerifier: AuditVerifier | undefined): string[] {
  const top = MIGRATIONS.length ? MIGRATIONS[MIGRATIONS.length - 1]!.version : 0;
  const schema = db.pragma('user_version', { simple: true }) as number;
  if (schema !== meta.schema || schema > top) throw new ClusterError('SNAPSHOT_INVALID', `snapshot schema ${schema} (declared ${meta.schema}, this server knows up to ${top})`);
  const ok = db.pragma('quick_check', { simple: true });
  if (ok !== 'ok') throw new ClusterError('SNAPSHOT_INVALID', 'snapshot fails SQLite quick_check');
  const odd = foreignObject(db, modelObjects(schema, 'capture', installCapture)); // no trigger, view or SQL of the sender's own
  if (odd) throw new ClusterError('SNAPSHOT_INVALID', `snapshot holds ${odd.type} ${JSON.stringify(odd.name.slice(0, 80))}, which is not part of this server's club schema ${schema}`);
  if (!db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(STATE_TABLE)) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot has no log position');
  const pos = readPosition(db);
  if (pos.seq !== meta.seq || pos.digest !== meta.digest) throw new ClusterError('SNAPSHOT_INVALID', `snapshot holds position ${pos.seq}, declared ${meta.seq}`);
  installCapture(db);
  if (pendingCapture(db) > 0) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot holds changes that are not in the log');
  const audit = verifyAuditLog(db, club, auditVerifier); // signed heads need the identity keys (most stores have some)
  if (!audit.ok) throw new ClusterError('SNAPSHOT_INVALID', `snapshot's change log does not verify (${audit.firstBad?.reason ?? 'unknown'})`);
  if (!db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'documents'`).get()) return [];
  return (db.prepare('SELECT DISTINCT file FROM documents').all() as Array<{ file: unknown }>).map((r) => r.file).filter((f): f is string => typeof f === 'string');
}

/** Check a received snapshot file against its declared position and the club's log. */
async function verify(path: string, club: string, meta: SnapshotMeta, dataKeys: Buffer[], gw: EtcdGateway, logKey: Uint8Array, auditVerifier: AuditVerifier | undefined): Promise<string[]> {
  let db: Db | undefined;
  for (const k of dataKeys) {
    const pageKey = clubPageKey(k);
    try {
      db = openEncrypted(path, pageKey, { journalMode: 'keep' });
      break;
    } catch (e) {
      if (!(e instanceof StorageError && e.code === 'WRONG_DATA_KEY')) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot does not open', { cause: e });
    } finally {
      pageKey.fill(0);
    }
  }
  if (!db) throw new ClusterError('SNAPSHOT_INVALID', "the club's data key does not open the snapshot");
  let files: string[];
  try {
    files = checkImage(db, club, meta, auditVerifier);
  } catch (e) {
    // A damaged page fails its HMAC inside SQLite: that is a refusal too.
    if (e instanceof ClusterError) throw e;
    throw new ClusterError('SNAPSHOT_INVALID', 'snapshot is damaged', { cause: e });
  } finally {
    db.close();
  }
  const head = await readHead(gw, club);
  if (head.seq < meta.seq) throw new ClusterError('SNAPSHOT_INVALID', `snapshot position ${meta.seq} is beyond the log head ${head.seq}`);
  if (head.seq === meta.seq) {
    if (head.digest !== meta.digest) throw new ClusterError('SNAPSHOT_INVALID', 'snapshot position is not in the log (digest differs from the head)');
    return files;
  }
  const next = await readEntries(gw, club, logKey, meta.seq + 1, { limit: 1, prevDigest: meta.digest }).catch((e: unknown) => {
    if (e instanceof ClusterError && e.code === 'LOG_CORRUPT' && /gap at/.test(e.message)) throw new ClusterError('SNAPSHOT_UNAVAILABLE', `snapshot at ${meta.seq} is older than the trimmed log`, { cause: e });
    if (e instanceof ClusterError && e.code === 'LOG_CORRUPT') throw new ClusterError('SNAPSHOT_INVALID', 'snapshot position does not continue in the log', { cause: e });
    throw e;
  });
  if (next.length === 0) throw new ClusterError('SNAPSHOT_UNAVAILABLE', `snapshot at ${meta.seq} is older than the trimmed log`);
  return files;
}

export interface InstallOptions extends SnapshotLimits {
  storage: Storage;
  gw: EtcdGateway;
  club: string;
  logKey: Uint8Array;
  logger: ClusterLogger;
  /**
   * Fetch the document files a verified snapshot's rows name that are missing here, before it is
   * installed (the files are not part of a snapshot). @throws when one could not be fetched.
   */
  documents?: (files: string[]) => Promise<void>;
  /** Checks the snapshot's signed change-log heads (the shared identity keys); without it, signed heads are refused. */
  auditVerifier?: AuditVerifier | undefined;
}

/**
 * Receive, verify and install one snapshot payload as the club's local store (see the file
 * comment). The store must not be in use as a primary; a follower must be stopped.
 * @returns the installed position.
 * @throws ClusterError SNAPSHOT_INVALID (refused; nothing changed), SNAPSHOT_UNAVAILABLE (too old
 *   for the log, stalled), ETCD_UNAVAILABLE; StorageError STORE_BUSY while the club is locked.
 */
export async function installSnapshot(o: InstallOptions, payload: PeerPayload): Promise<SnapshotMeta> {
  const { storage, club } = o;
  const meta = parseSnapshotMeta(payload.meta);
  const dir = clubDir(storage.dataDir, club);
  sweepLeftovers(dir);
  const tmp = join(dir, `${SNAP_PREFIX}in-${randomBytes(8).toString('hex')}.db`);
  try {
    await receive(payload, tmp, o);
    const row = storage.server.mustGetClub(club);
    const keys = storage.clubKeys(row);
    let files: string[];
    try {
      files = await verify(tmp, club, meta, keys.map((k) => k.key), o.gw, o.logKey, o.auditVerifier);
    } finally {
      for (const k of keys) k.key.fill(0);
    }
    if (o.documents && files.length > 0) await o.documents(files);
    const release = storage.cache.lock(club);
    try {
      swapInSqliteFile(tmp, clubDbPath(storage.dataDir, club));
      storage.server.markStoreCreated(club);
    } finally {
      release();
    }
  } finally {
    removeSqliteFiles(tmp);
  }
  o.logger.info('replica installed from a snapshot', { event: 'cluster.snapshot.installed', clubId: club, seq: meta.seq });
  return meta;
}

/**
 * Obtain a snapshot of `club` from one of `sources` (node ids, tried in order) and install it.
 * @throws ClusterError SNAPSHOT_UNAVAILABLE when no source gave a usable one (the last refusal is
 *   the cause); the caller tries again later.
 */
export async function obtainSnapshot(o: InstallOptions & { peers: PeerTransport; sources: string[] }): Promise<SnapshotMeta> {
  let last: unknown;
  for (const node of o.sources) {
    try {
      const payload = await o.peers.pull(node, { kind: 'snapshot', club: o.club, name: '' }, { deadlineMs: o.timeoutMs ?? DEFAULT_SNAPSHOT_TIMEOUT_MS });
      if (!payload) continue;
      return await installSnapshot(o, payload);
    } catch (e) {
      last = e;
      o.logger.warn('snapshot from a member refused or failed', { event: 'cluster.snapshot.failed', clubId: o.club, from: node, code: (e as { code?: string }).code ?? (e as Error).name, reason: reasonOf(e) });
    }
  }
  throw new ClusterError('SNAPSHOT_UNAVAILABLE', `no member gave a usable snapshot of club ${o.club}`, last === undefined ? undefined : { cause: last });
}
