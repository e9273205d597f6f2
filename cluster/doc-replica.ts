/**
 * Documents on the standbys (issue 14, "Documents reach the standbys before the entry that
 * references them"; docs/CLUSTER.md "Documents").
 *
 * A document is a row in the club store (with its key wrapped under the club's data key) and an
 * encrypted file `clubs/<club>/docs/<32 hex>.cmdoc`. The row travels in the club's log; the file
 * travels over the peer channel, as stored (already encrypted), under the peer channel's own
 * encryption:
 *
 * - primary, in the output gate (`pushDocuments`): before the log append that carries a row
 *   naming a file, the file is pushed to every standby of the club and each must confirm it holds
 *   it durably. A standby that does not confirm in time fails the append: the client gets
 *   UNAVAILABLE, not an acknowledgment only one server backs.
 * - standby, applying an entry (`applyWithDocuments`): a row naming a file it lacks makes it pull
 *   the file from the primary (then from the club's other members) before the entry is applied;
 *   a file whose row was deleted, or replaced by another file, is removed after the entry.
 * - both: `peer.pull` / `peer.push` of kind 'document' serve and take the files
 *   (`registerDocumentPeers`); a taken file is written to a temporary name, checked against the
 *   SHA-256 and size the sender announced, fsynced, and only then renamed into place.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fsyncDir } from '../crypto/atomic-file.js';
import { clubDir, DOCS_DIR } from '../storage/club/club-store.js';
import type { Db } from '../storage/engine/sqlcipher.js';
import type { Storage } from '../storage/server/storage.js';
import { applyEntry, decodeChangeset, type Changeset } from './capture.js';
import { ClusterError, type ClusterLogger } from './errors.js';
import type { Placement } from './placement.js';
import type { PeerObject, PeerPayload, PeerTransport } from './peer-types.js';

/** A document file's name as documents.ts makes it: 16 random bytes in hex, then `.cmdoc`. */
export const DOC_FILE = /^[0-9a-f]{32}\.cmdoc$/;
const DOCUMENTS_TABLE = 'documents';

function docsDirOf(storage: Storage, club: string): string {
  return join(clubDir(storage.dataDir, club), DOCS_DIR);
}

/** Document files the row images of these changesets name, by rowid (upserts), and the rowids deleted. */
export function documentRows(changesets: Changeset[]): { files: Map<number, string>; deleted: Set<number> } {
  const files = new Map<number, string>();
  const deleted = new Set<number>();
  for (const cs of changesets) {
    for (const o of cs.ops) {
      if (o.table !== DOCUMENTS_TABLE) continue;
      if (o.op === 'd') {
        files.delete(o.rowid);
        deleted.add(o.rowid);
        continue;
      }
      const i = o.columns.indexOf('file');
      const f = i >= 0 ? o.values[i] : undefined;
      if (typeof f === 'string' && DOC_FILE.test(f)) {
        files.set(o.rowid, f);
        deleted.delete(o.rowid);
      }
    }
  }
  return { files, deleted };
}

/** A local document file as a payload (SHA-256 of the file read first, then streamed), or undefined when absent. */
async function filePayload(path: string): Promise<PeerPayload | undefined> {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  const h = createHash('sha256');
  for await (const c of createReadStream(path, { highWaterMark: 1 << 16 })) h.update(c as Buffer);
  return { size, sha256: h.digest('hex'), chunks: createReadStream(path, { highWaterMark: 1 << 16 }) };
}

/**
 * Write `payload` as document `name` of `club`: temporary file (O_EXCL, 0600), every byte as the
 * channel checked it, fsync, rename, fsync of the folder. Nothing is renamed into place unless
 * the stream ended verified (the channel's iterator throws before its end otherwise).
 */
async function installFile(dir: string, name: string, payload: PeerPayload): Promise<void> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const final = join(dir, name);
  // Its own temporary name: a push and a pull of one file never share one (left-overs of a
  // crash are swept as unreferenced files, documents.ts sweepOrphanDocuments).
  const tmp = join(dir, `.${name}.${randomBytes(6).toString('hex')}.peer.tmp`);
  try {
    await pipeline(Readable.from(payload.chunks, { objectMode: false }), createWriteStream(tmp, { flags: 'wx', mode: 0o600 }) as Writable);
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, final);
    fsyncDir(dir);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/** Serve and take document files on the peer channel. Only clubs known here (in the registry) are served or taken. */
export function registerDocumentPeers(peers: PeerTransport, storage: Storage): void {
  const check = (o: PeerObject): string => {
    if (!DOC_FILE.test(o.name)) throw new ClusterError('INVALID_ARGUMENT', 'not a document file name');
    if (!storage.server.getClub(o.club)) throw new ClusterError('PEER_REFUSED', 'club not known here');
    return docsDirOf(storage, o.club);
  };
  peers.onPull('document', async (o) => filePayload(join(check(o), o.name)));
  peers.onPush('document', async (o, payload) => installFile(check(o), o.name, payload));
}

/**
 * Files already confirmed by a standby before their row existed (documents.upload pushes them
 * early, `replicateFiles`), per storage and club: file name -> standbys that hold it. The commit
 * that carries the row does not send them again. At most SENT_CAP files per club are remembered
 * (an upload that failed after its push leaves its entry behind).
 */
const sentFiles = new WeakMap<Storage, Map<string, Map<string, Set<string>>>>();
const SENT_CAP = 256;

function sentOf(storage: Storage, club: string): Map<string, Set<string>> {
  let byClub = sentFiles.get(storage);
  if (!byClub) sentFiles.set(storage, (byClub = new Map()));
  let m = byClub.get(club);
  if (!m) byClub.set(club, (m = new Map()));
  return m;
}

export interface PushContext {
  peers: PeerTransport | undefined;
  storage: Storage;
  nodeId: string;
  club: string;
  placement: Placement | undefined;
  logger: ClusterLogger;
}

/**
 * Primary: push every file the changesets' document rows name to each standby of the club and
 * wait until each holds it durably. Files a standby already confirmed are not sent again.
 * @throws ClusterError PEER_UNAVAILABLE / PEER_REFUSED / PEER_OBJECT_BAD when a standby did not
 *   confirm a file: the entry must not be appended.
 */
export async function pushDocuments(o: PushContext & { changesets: Changeset[] }): Promise<void> {
  const { files } = documentRows(o.changesets);
  if (files.size === 0) return;
  const names = [...new Set(files.values())];
  await replicateFiles(o, names);
  const sent = sentOf(o.storage, o.club);
  for (const n of names) sent.delete(n);
}

/**
 * Push document files of a club to each of its standbys (those not yet confirmed); resolves when
 * every standby holds every file durably.
 * @throws ClusterError as pushDocuments
 */
export async function replicateFiles(o: PushContext, names: string[]): Promise<void> {
  const standbys = (o.placement?.standbys ?? []).filter((s) => s !== o.nodeId);
  if (standbys.length === 0 || names.length === 0) return;
  if (!o.peers) throw new ClusterError('PEER_UNAVAILABLE', 'no peer channel: documents cannot reach the standbys');
  const dir = docsDirOf(o.storage, o.club);
  const sent = sentOf(o.storage, o.club);
  await Promise.all(
    standbys.map(async (node) => {
      for (const name of names) {
        if (!DOC_FILE.test(name)) throw new ClusterError('INVALID_ARGUMENT', 'not a document file name');
        if (sent.get(name)?.has(node)) continue;
        const payload = await filePayload(join(dir, name));
        if (!payload) throw new ClusterError('PEER_OBJECT_BAD', `document file of club ${o.club} missing on the primary`);
        try {
          await o.peers!.push(node, { kind: 'document', club: o.club, name }, payload);
          let nodes = sent.get(name);
          if (!nodes) {
            if (sent.size >= SENT_CAP) sent.delete(sent.keys().next().value!);
            sent.set(name, (nodes = new Set()));
          }
          nodes.add(node);
        } catch (e) {
          (payload.chunks as Readable).destroy?.();
          o.logger.warn('document not confirmed by a standby; the write fails', { event: 'cluster.doc.push-failed', clubId: o.club, node, code: (e as ClusterError).code ?? (e as Error).name });
          throw e;
        }
      }
    }),
  );
}

/**
 * Standby: apply one log entry with its documents. Files named by the entry's rows and missing
 * here are pulled first (from the primary, then the club's standbys, then any member); an entry is applied
 * only when each is here, or when every member asked answered that it does not have it (the
 * document was deleted or replaced since, and a later entry removes the row). Files whose row
 * the entry deletes or points at another file are removed afterwards.
 * @throws ClusterError PEER_UNAVAILABLE when a missing file could not be fetched (the follower
 *   stops and is started again: the replica stays at the entry before).
 */
export async function applyWithDocuments(o: {
  db: () => Db;
  entry: { seq: number; digest: string; items: Uint8Array[] };
  peers: PeerTransport | undefined;
  storage: Storage;
  nodeId: string;
  club: string;
  placement: Placement | undefined;
  /** Every current member: asked last, after the club's primary and standbys. */
  members?: string[];
  logger: ClusterLogger;
}): Promise<void> {
  let rows: ReturnType<typeof documentRows> | undefined;
  try {
    rows = documentRows(o.entry.items.map(decodeChangeset));
  } catch {
    rows = undefined; // applyEntry reports the malformed entry
  }
  const dir = docsDirOf(o.storage, o.club);
  if (rows && rows.files.size > 0) {
    // The primary first, then the standbys, then any member (one that was a standby before).
    const sources = [...new Set([o.placement?.primary, ...(o.placement?.standbys ?? []), ...(o.members ?? [])])].filter((n): n is string => typeof n === 'string' && n !== o.nodeId);
    for (const name of new Set(rows.files.values())) {
      if (existsSync(join(dir, name))) continue;
      await pullFile(o.peers, o.club, name, dir, sources, o.logger);
    }
  }
  const db = o.db();
  const touched = rows ? [...rows.files.keys(), ...rows.deleted] : [];
  const before = new Map<number, string>();
  const sel = touched.length > 0 ? db.prepare(`SELECT file FROM ${DOCUMENTS_TABLE} WHERE rowid = ?`) : undefined;
  for (const id of touched) {
    const r = sel!.get(id) as { file?: unknown } | undefined;
    if (typeof r?.file === 'string') before.set(id, r.file);
  }
  if (!applyEntry(db, o.entry) || before.size === 0) return;
  const still = db.prepare(`SELECT 1 FROM ${DOCUMENTS_TABLE} WHERE file = ? LIMIT 1`);
  let removed = false;
  for (const [id, file] of before) {
    if (rows!.files.get(id) === file || !DOC_FILE.test(file) || still.get(file)) continue;
    try {
      unlinkSync(join(dir, file));
      removed = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') o.logger.warn('replaced document file not removed', { event: 'cluster.doc.unlink-failed', clubId: o.club });
    }
  }
  if (removed) fsyncDir(dir);
}

/**
 * Fetch the document files of `club` that `files` names and its folder lacks, asking `sources`
 * (node ids) in order: what a replica installed from a snapshot needs (a snapshot carries rows,
 * not files). Names that are not document file names are refused, never joined into a path.
 * @throws ClusterError INVALID_ARGUMENT (a bad name), PEER_UNAVAILABLE (a member that may hold a
 *   file did not answer; the caller tries again later).
 */
export async function pullMissingFiles(o: { peers: PeerTransport | undefined; storage: Storage; club: string; files: readonly string[]; sources: readonly string[]; logger: ClusterLogger }): Promise<void> {
  const dir = docsDirOf(o.storage, o.club);
  for (const name of new Set(o.files)) {
    if (!DOC_FILE.test(name)) throw new ClusterError('INVALID_ARGUMENT', 'not a document file name');
    if (existsSync(join(dir, name))) continue;
    await pullFile(o.peers, o.club, name, dir, [...o.sources], o.logger);
  }
}

async function pullFile(peers: PeerTransport | undefined, club: string, name: string, dir: string, sources: string[], logger: ClusterLogger): Promise<void> {
  if (!peers) throw new ClusterError('PEER_UNAVAILABLE', 'no peer channel: a missing document cannot be fetched');
  let unreachable = 0;
  for (const node of sources) {
    try {
      const p = await peers.pull(node, { kind: 'document', club, name });
      if (!p) continue;
      await installFile(dir, name, p);
      return;
    } catch (e) {
      unreachable++;
      logger.warn('document not pulled from a member', { event: 'cluster.doc.pull-failed', clubId: club, node, code: (e as ClusterError).code ?? (e as Error).name });
    }
  }
  if (unreachable > 0) throw new ClusterError('PEER_UNAVAILABLE', `a document file of club ${club} could not be fetched yet`);
  logger.warn('no member has a document file an entry names (deleted or replaced since, or no other member to ask); applying the row without it', { event: 'cluster.doc.absent', clubId: club });
}
