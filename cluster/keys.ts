/**
 * The key layout in etcd (issue 14; docs/CLUSTER.md "What goes into etcd"). Every key lives under
 * the gateway's prefix (default `commusic/`). Values that could carry personal data are sealed
 * (crypto/cluster-seal.ts); the keys themselves name only servers, clubs and sequence numbers.
 *
 *   members/<node>            JSON {id, address, state, since}          bound to the node's lease
 *   leader                    node id of the placement leader           bound to the leader's lease
 *   placement/<club>          JSON {primary, standbys[], epoch}         written by the leader
 *   drain/<node>              "1" while an operator drains the node    persistent
 *   clubs/<club>/owner        node id; its create revision is the fencing token; bound to the lease
 *   clubs/<club>/head         JSON {seq, digest} of the last log entry
 *   clubs/<club>/log/<seq>    sealed log entry (seq as 16 zero-padded decimal digits)
 *   clubs/<club>/pos/<node>   JSON {seq} a standby has applied; bound to that standby's lease
 *   bans/<hmac of address>    sealed ban record, bound to a lease whose TTL is the remaining ban
 *   violations/<hmac>/<node>  sealed violation count of one member (violation-board.ts), lease TTL = window
 *   backup/keyring            sealed archive keyring; backup/clubs/<club> sealed club archive key + last archives (backup-board.ts)
 */
import { ClusterError } from './errors.js';

const CLUB_ID = /^[a-z0-9][a-z0-9-]{0,63}$/;
const NODE_ID = /^[a-z0-9][a-z0-9-]{0,63}$/;

/** Same rule as storage/club-store.ts. @throws ClusterError INVALID_ARGUMENT */
export function checkClubId(clubId: string): string {
  if (!CLUB_ID.test(clubId)) throw new ClusterError('INVALID_ARGUMENT', `invalid club id ${JSON.stringify(clubId.slice(0, 80))}`);
  return clubId;
}

/** A node id: lower-case letters, digits and dashes, 1 to 64 characters. @throws ClusterError INVALID_ARGUMENT */
export function checkNodeId(nodeId: string): string {
  if (!NODE_ID.test(nodeId)) throw new ClusterError('INVALID_ARGUMENT', `invalid node id ${JSON.stringify(nodeId.slice(0, 80))}: use a-z, 0-9 and '-', at most 64`);
  return nodeId;
}

export const MEMBERS_PREFIX = 'members/';
export const LEADER_KEY = 'leader';
export const PLACEMENT_PREFIX = 'placement/';
export const DRAIN_PREFIX = 'drain/';
export const CLUBS_PREFIX = 'clubs/';
export const BANS_PREFIX = 'bans/';

export const memberKey = (node: string) => `${MEMBERS_PREFIX}${checkNodeId(node)}`;
export const placementKey = (club: string) => `${PLACEMENT_PREFIX}${checkClubId(club)}`;
export const drainKey = (node: string) => `${DRAIN_PREFIX}${checkNodeId(node)}`;
export const ownerKey = (club: string) => `${CLUBS_PREFIX}${checkClubId(club)}/owner`;
export const headKey = (club: string) => `${CLUBS_PREFIX}${checkClubId(club)}/head`;
export const logPrefix = (club: string) => `${CLUBS_PREFIX}${checkClubId(club)}/log/`;
export const posPrefix = (club: string) => `${CLUBS_PREFIX}${checkClubId(club)}/pos/`;
export const posKey = (club: string, node: string) => `${posPrefix(club)}${checkNodeId(node)}`;

/** Sequence numbers are positive safe integers, written with 16 digits so keys sort numerically. */
export function logKey(club: string, seq: number): string {
  if (!Number.isSafeInteger(seq) || seq < 1) throw new ClusterError('INVALID_ARGUMENT', `invalid log sequence ${seq}`);
  return `${logPrefix(club)}${String(seq).padStart(16, '0')}`;
}

/** The sequence number in a log key (relative to the namespace), or undefined. */
export function seqOfLogKey(club: string, key: string): number | undefined {
  const p = logPrefix(club);
  if (!key.startsWith(p)) return undefined;
  const digits = key.slice(p.length);
  if (!/^[0-9]{16}$/.test(digits)) return undefined;
  const n = Number(digits);
  return Number.isSafeInteger(n) && n >= 1 ? n : undefined;
}
