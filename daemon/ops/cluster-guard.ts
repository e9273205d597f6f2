/**
 * Operator writes on a cluster member (docs/CLUSTER.md "Operator writes"): a write that changes a
 * club outside a client command is not in the club's replicated log, so it is refused (deny by
 * default) with the club's primary named, unless it goes through the cluster (club rows go
 * through the registry record, every member applies them).
 */
import { CAPTURE_TABLE, STATE_TABLE } from '../../cluster/capture.js';
import type { ClusterNode } from '../../cluster/node.js';
import { OperationError, type OpsContext } from './operations.js';

/** Where a club is served, as an operator reads it: "node n2 (127.0.0.3:7000)", "this server", ... */
export function primaryOf(node: ClusterNode, club: string): string {
  const r = node.route(club);
  if (r.kind === 'serve') return 'this server';
  if (r.kind === 'redirect') return `node ${r.node} (${r.address})`;
  return `no server right now (${r.reason})`;
}

/**
 * Refuses `what` on a cluster member: online when the daemon is a member (the message names each
 * club's primary), offline when a store of `clubs` ('all': every club) in the data folder is
 * replicated (it has the cluster's capture or state table).
 * @throws OperationError NOT_SUPPORTED_IN_CLUSTER with `why` and what to do instead.
 */
export async function refuseInCluster(c: OpsContext, what: string, clubs: readonly string[] | 'all', why: string): Promise<void> {
  const node = c.cluster?.();
  if (node) {
    const served = clubs === 'all' ? '' : `; ${clubs.map((id) => `club ${id} is served by ${primaryOf(node, id)}`).join(', ')}`;
    throw new OperationError('NOT_SUPPORTED_IN_CLUSTER', `${what} is not supported on a cluster member${served}: ${why}; see docs/CLUSTER.md`);
  }
  const st = await c.storage();
  const ids = clubs === 'all' ? st.server.listClubs().map((r) => r.id) : clubs;
  for (const id of ids) {
    const row = st.server.getClub(id);
    if (!row || row.storeState !== 'created' || row.status === 'deleting') continue;
    const tables = st.openClub(id, { allowSuspended: true }).db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)`).all(CAPTURE_TABLE, STATE_TABLE);
    if (tables.length > 0) throw new OperationError('NOT_SUPPORTED_IN_CLUSTER', `${what} is not supported on a cluster member (club ${id} is replicated here): ${why}; see docs/CLUSTER.md`);
  }
}

/** After a change of a club's row on this member: publish it, so every member applies it (cluster/registry.ts). */
export async function shareClubRow(c: OpsContext, club: string): Promise<void> {
  await c.cluster?.()?.registerClub(club);
}
