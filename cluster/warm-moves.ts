/**
 * Planned moves only onto caught-up members (issue 14; docs/CLUSTER.md "Placement"). The plan
 * (placement.ts) is pure and knows nothing of replicas; before the leader writes it, a change
 * that would move a club's primary away from a live member (rebalancing, drain), or drop a live
 * standby for a new one, is held back while the member it relies on has not caught up: its
 * published position (`clubs/<club>/pos/<node>`, log-trim.ts) is missing or more than
 * `keepEntries` behind the head. The target then rides as an extra standby and catches up (from
 * a snapshot when the log no longer reaches it); a later round moves the club. Without this a
 * returning member was made primary before it had caught up (the club unavailable meanwhile),
 * and the warm standby it replaced was dropped, so a crash of the old primary in that window
 * left no replica the trimmed log still reached. Moves away from a dead member are never held.
 */
import { readHead } from './club-log.js';
import type { ClusterLogger } from './errors.js';
import type { EtcdGateway } from './etcd-gateway.js';
import { posKey } from './keys.js';
import type { Placement } from './placement.js';

const uniq = (ids: string[]) => ids.filter((s, i, a) => a.indexOf(s) === i);

/**
 * `changed` with the moves onto members not caught up held back (see the file comment): the
 * placements to write. Reads the head and positions of the changed clubs that move or swap a standby.
 * @throws ClusterError ETCD_UNAVAILABLE (the leader's round fails and is tried again).
 */
export async function holdColdMoves(o: { gw: EtcdGateway; current: Record<string, Placement>; changed: Record<string, Placement>; alive: ReadonlySet<string>; keepEntries: number; logger: ClusterLogger }): Promise<Record<string, Placement>> {
  const out: Record<string, Placement> = {};
  for (const [club, next] of Object.entries(o.changed)) {
    const cur = o.current[club];
    out[club] = next;
    if (!cur) continue;
    const moving = next.primary !== cur.primary && o.alive.has(cur.primary);
    const dropped = cur.standbys.filter((s) => o.alive.has(s) && s !== next.primary && !next.standbys.includes(s));
    const added = next.standbys.filter((s) => !cur.standbys.includes(s) && s !== cur.primary);
    if (!moving && (dropped.length === 0 || added.length === 0)) continue;
    const head = await readHead(o.gw, club);
    const warm = async (node: string): Promise<boolean> => {
      if (head.seq === 0) return true;
      const v = await o.gw.read('read standby position', () => o.gw.kv.get(posKey(club, node)).string());
      const seq = v ? Number((JSON.parse(v) as { seq?: unknown }).seq) : NaN;
      return Number.isSafeInteger(seq) && seq >= head.seq - o.keepEntries;
    };
    if (moving && !(await warm(next.primary))) {
      out[club] = { primary: cur.primary, standbys: uniq([next.primary, ...cur.standbys, ...next.standbys]).filter((s) => s !== cur.primary), epoch: cur.epoch };
      o.logger.info('primary move held until the new member has caught up', { event: 'cluster.plan.held', clubId: club, from: cur.primary, to: next.primary });
    } else if (dropped.length > 0 && added.length > 0) {
      let cold = false;
      for (const a of added) if (!(await warm(a))) cold = true;
      if (cold) out[club] = { ...next, standbys: uniq([...next.standbys, ...dropped]) };
    }
    if (JSON.stringify(out[club]) === JSON.stringify(cur)) delete out[club];
  }
  return out;
}
