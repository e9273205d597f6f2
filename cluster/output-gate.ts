/** The output gate: a served club's captured changes shipped to its log before the client is answered. */
import { ackCapture, drainCapture, encodeChangeset, writePosition } from './capture.js';
import type { ClubLog } from './club-log.js';
import type { ClusterError } from './errors.js';
import type { ClubState, NodeContext } from './node-types.js';

/**
 * Ship what the last transactions of a served club changed and resolve once it is in etcd; on
 * failure the club stops being served here. The caller checked `st.serving` and passes `st.log`.
 */
export async function commitClub(ctx: NodeContext, club: string, st: ClubState, log: ClubLog): Promise<void> {
  // `log` is held apart from st.log: a handover, a lost lease or another commit's failure may
  // clear st.log while this append is in flight; an append that succeeded still sets the
  // store's position.
  const db = ctx.storage.openClub(club, { allowSuspended: true }).db;
  const d = drainCapture(db, st.drainedUpto);
  if (!d) {
    // Nothing left to drain: another command's commit took this command's changes with its own
    // (a group commit answers several commands at once; storage/club/write-group.ts). This
    // answer waits for that append too: appends of a club complete in order, so the newest one
    // covers every change drained before it. Its failure is this command's failure.
    if (st.shipping) await st.shipping;
    return;
  }
  st.drainedUpto = d.upto;
  st.inflight++;
  const shipping = (async () => {
    await log.append(encodeChangeset(d.changeset));
    // The store holds every change up to the log head (its own), so that is its position.
    const db2 = ctx.storage.openClub(club, { allowSuspended: true }).db;
    const head = log.head;
    db2.transaction(() => {
      ackCapture(db2, d.upto);
      writePosition(db2, { seq: head.seq, digest: head.digest });
    })();
  })();
  st.shipping = shipping;
  try {
    await shipping;
  } catch (e) {
    loseClub(ctx, club, st, e);
    throw e;
  } finally {
    if (st.shipping === shipping) st.shipping = undefined;
    st.inflight--;
  }
}

/** Whether the club's store holds changes not yet shipped (the command just run changed it). */
export function hasPendingChanges(ctx: NodeContext, club: string, st: ClubState | undefined): boolean {
  if (!st?.serving) return false;
  const db = ctx.storage.openClub(club, { allowSuspended: true }).db;
  return db.prepare('SELECT 1 FROM _cluster_capture WHERE seq > ? LIMIT 1').get(st.drainedUpto) !== undefined;
}

/** A failed append: stop serving at once, rebuild the store before next use, let the placement decide again. */
export function loseClub(ctx: NodeContext, club: string, st: ClubState, e: unknown): void {
  if (!st.serving) return;
  st.serving = false;
  st.log = undefined;
  st.role = 'none';
  st.needsRebuild = true;
  ctx.logger.warn('club no longer served here', { event: 'cluster.club.lost', clubId: club, code: (e as ClusterError).code ?? (e as Error).name });
  ctx.clubMoved(club);
  setTimeout(() => ctx.reconcileSoon(club), 250).unref?.();
}
