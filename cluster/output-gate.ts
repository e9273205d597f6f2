/** The output gate: a served club's captured changes shipped to its log before the client is answered. */
import { ackCapture, drainCapture, encodeChangeset, writePosition } from './capture.js';
import type { ClubLog } from './club-log.js';
import { documentRows, pushDocuments } from './doc-replica.js';
import { ClusterError } from './errors.js';
import type { ClubState, NodeContext } from './node-types.js';

/**
 * Appends of one club must be enqueued in the order their changesets were drained: a changeset
 * holds row images as they were when drained, and a later image applied before an earlier one
 * would be overwritten by it on the replicas. A changeset that names documents waits for their
 * push before its append; every changeset drained after it waits behind it (`pending`), and
 * fails with it when the push fails. With nothing waiting, an append is enqueued at once, in the
 * turn that drained it (the path of every write that stores no document).
 */
interface AppendOrder {
  /** Commits drained but not yet enqueued (waiting for a push, or behind one). */
  pending: number;
  /** Settles once the last of them has enqueued its append; rejects when it failed before that. */
  last: Promise<void>;
}
const orders = new WeakMap<ClubState, AppendOrder>();

/**
 * Ship what the last transactions of a served club changed and resolve once it is in etcd; on
 * failure the club stops being served here. Document files the changes name reach the club's
 * standbys before the append (doc-replica.ts). The caller checked `st.serving` and passes `st.log`.
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
  let order = orders.get(st);
  if (!order) orders.set(st, (order = { pending: 0, last: Promise.resolve() }));
  const o = order;
  st.inflight++;
  const shipping = (async () => {
    let appended: Promise<number>;
    if (o.pending === 0 && documentRows([d.changeset]).files.size === 0) {
      appended = log.append(encodeChangeset(d.changeset));
    } else {
      const prev = o.last;
      let settle!: (e?: unknown) => void;
      o.last = new Promise<void>((res, rej) => (settle = (e) => (e === undefined ? res() : rej(e))));
      o.last.catch(() => undefined);
      o.pending++;
      try {
        // Documents first: each standby holds the file before the entry naming it exists (RPO 0).
        await pushDocuments({ peers: ctx.peers, storage: ctx.storage, nodeId: ctx.nodeId, club, placement: ctx.placementOf(club), changesets: [d.changeset], logger: ctx.logger });
        await prev;
      } catch (e) {
        settle(e);
        // Nothing drained after this changeset may reach the log without it.
        log.close(e instanceof ClusterError ? e : new ClusterError('PEER_UNAVAILABLE', `documents of club ${club} did not reach the standbys`, { cause: e }));
        throw e;
      } finally {
        o.pending--;
      }
      appended = log.append(encodeChangeset(d.changeset));
      settle();
    }
    await appended;
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

/**
 * A failed append: stop serving at once, rebuild the store before next use, give the owner key
 * back (if it is still ours: after a refused document push or an append whose outcome stayed
 * unclear, the key lives on with this server's lease, and a new primary would wait for it for as
 * long as this server lives), and let the placement decide again. The release runs on the
 * club's role chain, so a takeover here again starts after it.
 */
export function loseClub(ctx: NodeContext, club: string, st: ClubState, e: unknown): void {
  if (!st.serving) return;
  const log = st.log;
  st.serving = false;
  st.log = undefined;
  st.role = 'none';
  st.needsRebuild = true;
  ctx.logger.warn('club no longer served here', { event: 'cluster.club.lost', clubId: club, code: (e as ClusterError).code ?? (e as Error).name });
  if (log) st.chain = st.chain.then(() => log.release()).catch(() => undefined);
  ctx.clubMoved(club);
  setTimeout(() => ctx.reconcileSoon(club), 250).unref?.();
}
