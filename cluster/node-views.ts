/** Readers over the node's live etcd copies (members, placement, drains, registry) and local stores: routing, planning rounds, status. */
import type { Storage } from '../storage/server/storage.js';
import type { MemberInfo } from './membership.js';
import type { ClubState, ClusterStatus } from './node-types.js';
import { planPlacement, type Placement } from './placement.js';
import type { PrefixMirror } from './prefix-mirror.js';

export function memberList(members: PrefixMirror): MemberInfo[] {
  const out: MemberInfo[] = [];
  for (const [, v] of members.entries()) {
    try {
      out.push(JSON.parse(v.toString('utf8')) as MemberInfo);
    } catch {
      // ignored: membership.ts validates on write
    }
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : 1));
}

export function memberInfo(members: PrefixMirror, id: string): MemberInfo | undefined {
  const v = members.get(id);
  if (!v) return undefined;
  try {
    return JSON.parse(v.toString('utf8')) as MemberInfo;
  } catch {
    return undefined;
  }
}

export function placementOf(placement: PrefixMirror, club: string): Placement | undefined {
  const v = placement.get(club);
  if (!v) return undefined;
  try {
    return JSON.parse(v.toString('utf8')) as Placement;
  } catch {
    return undefined;
  }
}

export function allPlacements(placement: PrefixMirror): Record<string, Placement> {
  const out: Record<string, Placement> = {};
  for (const [club] of placement.entries()) {
    const p = placementOf(placement, club);
    if (p) out[club] = p;
  }
  return out;
}

/** The size of a club's store if it is open here (planning weight), else 0. */
export function localBytes(storage: Storage, club: string): number {
  try {
    const db = storage.cache.isOpen(club) ? storage.openClub(club, { allowSuspended: true }).db : undefined;
    if (!db) return 0;
    const r = db.prepare('SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()').get() as { n: number };
    return r.n;
  } catch {
    return 0;
  }
}

/** Members, leader and every club's primary, standbys and (for clubs followed here) lag. */
export function clusterStatus(a: {
  self: string;
  leader: string | undefined;
  members: PrefixMirror;
  placement: PrefixMirror;
  drains: PrefixMirror;
  registry: PrefixMirror;
  clubs: ReadonlyMap<string, ClubState>;
  /** Whether this member serves `club` now (ClusterNode.route). */
  served(club: string): boolean;
  now: number;
}): ClusterStatus {
  const drained = new Set(a.drains.entries().map(([k]) => k));
  const placements = allPlacements(a.placement);
  const clubs: ClusterStatus['clubs'] = [];
  for (const [club] of a.registry.entries()) {
    const p = placements[club];
    const st = a.clubs.get(club);
    // lag is known for the clubs this server follows (its replica) or serves (0); others: null
    const lag = st?.follower ? st.follower.lag : st?.serving ? 0 : null;
    const served = a.served(club);
    const waiting = !served && p?.primary === a.self && st?.namedPrimaryAt !== undefined ? Math.max(0, a.now - st.namedPrimaryAt) : null;
    clubs.push({ id: club, primary: p?.primary ?? null, standbys: p?.standbys ?? [], lag, epoch: p?.epoch ?? 0, served, waitingMs: waiting });
  }
  return {
    self: a.self,
    leader: a.leader,
    members: memberList(a.members).map((m) => ({ id: m.id, address: m.address, state: drained.has(m.id) ? 'draining' : m.state, drained: drained.has(m.id) })),
    clubs: clubs.sort((x, y) => (x.id < y.id ? -1 : 1)),
  };
}

/** One planning round of the leader: the placements that change (only those are written). */
export function placementChanges(a: {
  members: PrefixMirror;
  drains: PrefixMirror;
  registry: PrefixMirror;
  placement: PrefixMirror;
  storage: Storage;
  standbys: number;
  maxMoves: number;
}): Record<string, Placement> {
  const drained = new Set(a.drains.entries().map(([k]) => k));
  const members = memberList(a.members).map((m) => ({ id: m.id, state: m.state, drained: drained.has(m.id) }));
  const clubs = a.registry.entries().map(([club]) => ({ id: club, bytes: localBytes(a.storage, club) }));
  const current = allPlacements(a.placement);
  const next = planPlacement({ members, clubs, current, standbys: a.standbys, maxMoves: a.maxMoves });
  const changed: Record<string, Placement> = {};
  for (const [club, p] of Object.entries(next)) if (JSON.stringify(current[club]) !== JSON.stringify(p)) changed[club] = p;
  return changed;
}
