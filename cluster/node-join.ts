/**
 * A server's seat in the cluster (issue 14; docs/CLUSTER.md "Membership and leases"): its lease,
 * its `members/` key and its placement campaign, taken together by `joinCluster`, and taken again
 * by `rejoinUntilJoined` after the lease ran out by the server's own clock.
 */
import { ClusterError, type ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { MemberLease } from './member-lease.js';
import { Membership } from './membership.js';
import { PlacementLeader } from './placement.js';

export interface Seat {
  lease: MemberLease;
  membership: Membership;
  leader: PlacementLeader;
}

export interface JoinOptions {
  gw: EtcdGateway;
  nodeId: string;
  address: string;
  ttlSec: number;
  logger: ClusterLogger;
  /** This server was elected placement leader. */
  onElected(): void;
  /** `lease` ran out by this server's clock (the caller acts only if it is its current lease). */
  onExpired(lease: MemberLease): void;
  stopped(): boolean;
}

/**
 * Grant a lease, register the member key under it and campaign for placement. A join that fails
 * part-way revokes the lease it granted (and with it the member key it may have put): no lease of
 * an abandoned attempt is kept alive. (One was, after every lease that ran out by our clock: the
 * first attempt meets the old member key, which etcd expires only a margin later; that attempt's
 * lease lived on, and when it ran out later the server dropped every club while its current
 * lease kept the member and owner keys alive, so it could neither join again nor be replaced.)
 * @throws ClusterError ETCD_UNAVAILABLE, INVALID_ARGUMENT (node id in use), CLOSED (stopping).
 */
export async function joinCluster(o: JoinOptions): Promise<Seat> {
  const lease = await MemberLease.grant(o.gw, { ttlSec: o.ttlSec });
  lease.once('expired', () => o.onExpired(lease));
  let leader: PlacementLeader | undefined;
  try {
    const membership = new Membership(o.gw, lease, { id: o.nodeId, address: o.address, state: 'active' });
    await membership.register();
    leader = new PlacementLeader(o.gw, lease, o.nodeId, o.logger);
    leader.on('elected', () => o.onElected());
    await leader.start();
    if (o.stopped()) throw new ClusterError('CLOSED', 'server stopping');
    return { lease, membership, leader };
  } catch (e) {
    await leader?.stop().catch(() => undefined);
    await lease.revoke();
    throw e;
  }
}

/**
 * Join again after the lease ran out: `leave` (the old leader's watch), `join`, until a join
 * succeeds with a lease that is still valid; retried after 100 ms doubling to 2 s, logged
 * (`cluster.lease.rejoin-failed`, `cluster.lease.rejoined`). Stops trying once `stopped()`.
 */
export function rejoinUntilJoined(o: { nodeId: string; logger: ClusterLogger; stopped(): boolean; leave(): Promise<void>; join(): Promise<MemberLease>; done(joined: boolean): void }): void {
  const attempt = (delay: number): void => {
    if (o.stopped()) {
      o.done(false);
      return;
    }
    void o
      .leave()
      .catch(() => undefined)
      .then(() => o.join())
      .then((lease) => {
        if (!lease.isValid()) throw new ClusterError('LEASE_EXPIRED', 'the new lease expired while joining');
        o.logger.info('joined the cluster again with a new lease', { event: 'cluster.lease.rejoined', node: o.nodeId });
        o.done(true);
      })
      .catch((e: unknown) => {
        o.logger.warn('joining the cluster again failed; retrying', { event: 'cluster.lease.rejoin-failed', node: o.nodeId, code: (e as ClusterError).code ?? (e as Error).name });
        setTimeout(() => attempt(Math.min(delay * 2, 2000)), delay).unref?.();
      });
  };
  attempt(100);
}
