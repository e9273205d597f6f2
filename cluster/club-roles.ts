/** A club's role changes on this server: follow the log as standby, take the club over as primary, hand it back, drop it when deleted. */
import { deriveLogKey } from '../crypto/cluster-seal.js';
import { clubDbPath } from '../storage/club/club-store.js';
import { removeSqliteFiles } from '../storage/engine/rekey.js';
import type { Db } from '../storage/engine/sqlcipher.js';
import { deleteClub } from '../storage/server/provisioning.js';
import type { Storage } from '../storage/server/storage.js';
import { CAPTURE_TABLE, fullImage, installCapture, pendingCapture, readPosition, writePosition } from './capture.js';
import { MAX_ENTRY_BYTES, type ClubLog } from './club-log.js';
import { applyWithDocuments } from './doc-replica.js';
import { ClusterError, type ClusterLogger } from './errors.js';
import { LogFollower, takeOver } from './log-follower.js';
import { PositionPublisher } from './log-trim.js';
import { ensureReachable } from './maintenance.js';
import type { ClubState, NodeContext } from './node-types.js';

/** How often a takeover that keeps meeting another owner says so in the operator log (ms). */
export const TAKEOVER_REPORT_MS = 10_000;

export function logKeyOf(storage: Storage, club: string): Buffer {
  const row = storage.server.mustGetClub(club);
  const keys = storage.clubKeys(row);
  const k = deriveLogKey(keys[0]!.key, club);
  for (const x of keys) x.key.fill(0);
  return k;
}

/**
 * Follow the club's log into the local replica (standby). A replica the log no longer reaches
 * (entry position+1 trimmed) is first replaced by a snapshot (maintenance.ts ensureReachable);
 * the applied position is published for the primary's trim rounds (log-trim.ts).
 */
export async function follow(ctx: NodeContext, club: string, st: ClubState): Promise<void> {
  if (st.follower && !st.follower.isStopped) return;
  // A follower that stopped (a takeover that stopped it and then failed, or one that failed
  // before its error reached us) applies nothing more: it is replaced, never waited on.
  st.follower = undefined;
  const logKey = logKeyOf(ctx.storage, club);
  await ensureReachable(ctx, club, logKey);
  const db = ctx.storage.openClub(club, { allowSuspended: true }).db;
  installCapture(db);
  ctx.storage.onClubOpen?.(club, db);
  const f = new LogFollower({
    gw: ctx.gw,
    clubId: club,
    logKey,
    from: readPosition(db),
    apply: (e) => applyWithDocuments({ db: () => ctx.storage.openClub(club, { allowSuspended: true }).db, entry: e, peers: ctx.peers, storage: ctx.storage, nodeId: ctx.nodeId, club, placement: ctx.placementOf(club), members: ctx.memberIds(), logger: ctx.logger }),
    logger: ctx.logger,
  });
  const pub = new PositionPublisher({ gw: ctx.gw, club, nodeId: ctx.nodeId, lease: () => ctx.lease, everyMs: ctx.upkeep.publishEveryMs, logger: ctx.logger });
  f.on('applied', (p: { seq: number }) => (st.follower === f && st.role !== 'primary' ? pub.note(p.seq) : pub.stop()));
  f.on('error', () => {
    pub.stop();
    if (st.follower === f) st.follower = undefined;
    setTimeout(() => ctx.reconcileSoon(club), 500).unref?.();
  });
  st.follower = f;
  try {
    await f.start();
  } catch (e) {
    // A follower that could not start (the log was trimmed past it meanwhile, etcd away) is
    // dropped, so the retry starts a new one (with a snapshot if needed).
    pub.stop();
    if (st.follower === f) st.follower = undefined;
    await f.stop();
    throw e;
  }
  pub.note(f.position.seq);
}

/**
 * A local store with changes that never reached the log (this server crashed, or lost the club,
 * between a commit and its append; or a command that passed the ownership gate wrote after the
 * club had moved away) is ahead of the log: those changes were never acknowledged. Such a store
 * is dropped and built again from the log (from a snapshot first when the log is trimmed). Runs on every role
 * change (standby, takeover), also while a follower runs: a follower's own applies leave no
 * captured rows, so any captured row on a store that does not serve is a stray local write
 * (fail closed: the follower is stopped and the replica rebuilt).
 */
export async function rebuildIfAhead(ctx: NodeContext, club: string, st: ClubState): Promise<void> {
  const storage = ctx.storage;
  const db = storage.openClub(club, { allowSuspended: true }).db;
  installCapture(db);
  storage.onClubOpen?.(club, db);
  if (pendingCapture(db) === 0 && !st.needsRebuild) return;
  ctx.logger.warn('local store is ahead of the log (unacknowledged changes); rebuilding it from the log', { event: 'cluster.replica.rebuild', clubId: club });
  forgetUnacknowledgedAnchors(ctx, club, db);
  if (st.follower) {
    const f = st.follower;
    st.follower = undefined;
    await f.stop();
  }
  const release = storage.cache.lock(club);
  try {
    removeSqliteFiles(clubDbPath(storage.dataDir, club));
    storage.server.db.prepare(`UPDATE clubs SET store_state = 'pending', pending_admin = NULL WHERE id = ?`).run(club);
  } finally {
    release();
  }
  st.needsRebuild = false;
}

export async function becomePrimary(ctx: NodeContext, club: string, st: ClubState): Promise<void> {
  await rebuildIfAhead(ctx, club, st);
  const logKey = logKeyOf(ctx.storage, club);
  const schema = ctx.storage.openClub(club, { allowSuspended: true }).db.pragma('user_version', { simple: true }) as number;
  let taken: { log: ClubLog } | undefined;
  const since = Date.now();
  let reported = since;
  for (let delay = 20; !taken; delay = Math.min(delay * 2, 200)) {
    if (ctx.stopped || !ctx.lease.isValid() || ctx.placementOf(club)?.primary !== ctx.nodeId) {
      return;
    }
    // Each round re-reads the state it acts on: the current lease (a rejoin replaces it) and a
    // live follower (one that failed while we waited is replaced, not reused).
    await follow(ctx, club, st);
    const follower = st.follower!;
    try {
      taken = await takeOver(follower, { gw: ctx.gw, lease: ctx.lease, nodeId: ctx.nodeId, clubId: club, logKey, schema });
    } catch (e) {
      if (!(e instanceof ClusterError) || e.code !== 'NOT_OWNER') throw e;
      // The previous owner still holds the key: its lease has not ended or it is handing over.
      // Either ends within a few lease TTLs; past that the operator log names the holder.
      if (Date.now() - reported >= TAKEOVER_REPORT_MS) {
        reported = Date.now();
        ctx.logger.warn('takeover waits for the previous owner to give the club up', { event: 'cluster.takeover.waiting', clubId: club, owner: e.owner ?? null, waitedMs: reported - since });
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }
  st.follower = undefined;
  const db = ctx.storage.openClub(club, { allowSuspended: true }).db;
  installCapture(db);
  ctx.storage.onClubOpen?.(club, db);
  if (pendingCapture(db) > 0) {
    // Captured rows no entry holds (the write guard makes this unreachable; fail closed all the
    // same): never serve them; give the key back and rebuild on the next try.
    st.needsRebuild = true;
    await taken.log.release().catch(() => undefined);
    throw new ClusterError('LOG_CORRUPT', `club ${club}: the local store holds changes its log lacks; rebuilding it`);
  }
  const head = taken.log.head;
  if (head.seq === 0) {
    for (const cs of fullImage(db, MAX_ENTRY_BYTES - 4096)) await taken.log.append(cs);
    writePosition(db, { seq: taken.log.head.seq, digest: taken.log.head.digest });
  }
  st.drainedUpto = (db.prepare('SELECT coalesce(max(seq), 0) AS m FROM _cluster_capture').get() as { m: number }).m;
  st.log = taken.log;
  st.role = 'primary';
  st.serving = true;
  st.namedPrimaryAt = undefined;
  ctx.logger.info('serving club as primary', { event: 'cluster.primary', clubId: club, seq: taken.log.head.seq });
}

/** Longest a handover waits for commits in flight before it closes the log under them (ms). */
export const HANDBACK_WAIT_MS = 30_000;

/**
 * Planned handover: wait for appends in flight (each is bounded by the append budget and the
 * document push deadline; past HANDBACK_WAIT_MS the log is closed under them, they fail and the
 * client retries), record the position, release the owner key.
 */
export async function handBack(storage: Storage, club: string, st: ClubState, logger?: ClusterLogger): Promise<void> {
  const log = st.log;
  if (!log) return;
  const until = Date.now() + HANDBACK_WAIT_MS;
  while (st.inflight > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  if (st.inflight > 0) {
    logger?.warn('handover did not wait longer for commits in flight; they fail', { event: 'cluster.handback.forced', clubId: club, inflight: st.inflight });
    log.close(new ClusterError('CLOSED', `club ${club} handed over`));
  }
  try {
    if (log.state === 'open') {
      const db = storage.openClub(club, { allowSuspended: true }).db;
      writePosition(db, { seq: log.head.seq, digest: log.head.digest });
      await log.release();
    } else {
      // Closed under commits in flight (or by a failure): the key goes back all the same, if it
      // is still ours, so the new primary need not wait for this server's lease to end.
      await log.release().catch(() => undefined);
    }
  } finally {
    st.log = undefined;
    st.role = 'none';
  }
}

/** The club was deleted (its registry record is gone): stop everything and delete the local copy. */
export async function dropClub(storage: Storage, logger: ClusterLogger, clubs: Map<string, ClubState>, club: string): Promise<void> {
  const st = clubs.get(club);
  if (st) {
    st.serving = false;
    await st.chain.catch(() => undefined);
    await st.follower?.stop();
    st.log?.close();
    clubs.delete(club);
  }
  if (!storage.server.getClub(club)) return;
  try {
    await deleteClub(storage, club);
    logger.info('deleted club removed here too', { event: 'cluster.club.deleted', clubId: club });
  } catch (e) {
    logger.warn('deleted club not removed here', { event: 'cluster.club.delete-failed', clubId: club, code: (e as { code?: string }).code ?? (e as Error).name });
  }
}

/**
 * Brings this member's role for `club` in line with the placement: primary (take the club over
 * and serve it), standby (follow its log), or none (stop following). A member that held the
 * club's log and is no longer its primary hands the owner key back first and reports the move
 * (`ctx.clubMoved`). Nothing happens while the node stops or its lease is not valid. Runs on the
 * club's chain (node.ts reconcileSoon), one change at a time.
 * @throws ClusterError from the takeover, the handover or the replica (the chain retries)
 */
export async function reconcileRole(ctx: NodeContext, club: string, st: ClubState): Promise<void> {
  if (ctx.stopped || !ctx.lease.isValid()) return;
  const p = ctx.placementOf(club);
  if (!p || !ctx.storage.server.getClub(club)) return;
  const want: ClubState['role'] = p.primary === ctx.nodeId ? 'primary' : p.standbys.includes(ctx.nodeId) ? 'standby' : 'none';
  if (want === 'primary') {
    if (st.serving && st.log?.state === 'open') return;
    await becomePrimary(ctx, club, st);
    return;
  }
  if (st.log) {
    st.serving = false;
    await handBack(ctx.storage, club, st, ctx.logger);
    ctx.clubMoved(club);
  }
  if (want === 'standby') {
    await rebuildIfAhead(ctx, club, st);
    await follow(ctx, club, st);
  } else {
    await st.follower?.stop();
    st.follower = undefined;
  }
  st.role = want;
}

/**
 * Change-log anchors (server.db, storage/club/audit-log.ts) are written after the local commit,
 * before the entry reaches the club's log. Entries whose append never succeeded are dropped with
 * the store; an anchor of one would name an entry the rebuilt chain has differently at that seq,
 * and `log verify` would call the club's chain broken. The first unacknowledged change-log entry
 * is the lowest captured audit_log row; anchors from its seq on are forgotten (earlier ones name
 * acknowledged entries and stay).
 */
function forgetUnacknowledgedAnchors(ctx: NodeContext, club: string, db: Db): void {
  let first: number | null = null;
  try {
    first = (db.prepare(`SELECT min(a.seq) AS s FROM ${CAPTURE_TABLE} c JOIN audit_log a ON a.rowid = c.rid WHERE c.tbl = 'audit_log'`).get() as { s: number | null }).s;
  } catch {
    return; // no change log in this store yet
  }
  if (first === null) return;
  const n = ctx.storage.server.deleteAnchorsFrom(club, first);
  if (n > 0) ctx.logger.warn('change-log anchors of unacknowledged entries forgotten', { event: 'cluster.anchors.forgotten', clubId: club, fromSeq: first, count: n });
}
