/**
 * Liveness of takeovers (issue 14): a member the placement names primary of a club must start
 * serving it within a bound that follows from the configuration, whatever happened before: kill -9
 * of members (no handover; their leases run out in etcd), graceful stops (handover), restarts with
 * the old data folder (stale replicas, a log trimmed meanwhile), all under client writes and a CPU
 * burner (races between takeover, handover, snapshot and follower are likelier on a loaded machine).
 *
 * Measured all the time, per club: how long the club is not served by the member that a live
 * member's `cluster status` names its primary (that member's own status says `served: false`, or
 * it is down). The test fails as soon as one such interval passes GAP_BOUND_MS. It is a liveness
 * bound, not a performance figure:
 *   the old owner's lease ends in etcd (TTL, 2 s by default) + the leader's next planning round
 *   (1 s) + the takeover's catch-up (a snapshot of a small store) — a few seconds; the bound is ten
 *   times the TTL plus ten planning rounds (30 s), so only a stall trips it (seen: 60 s and more).
 *
 * TAKEOVER_GAP_EVENTS (default 1: a kill -9 and its restart; two events took 32-100 s in full runs
 * and once passed the runner's 120 s per file on a loaded machine) sets the number of stop/restart events, for long reproduction
 * runs; the CPU burner runs in those (or with TAKEOVER_GAP_BURN=1), not in a plain `npm test`, whose
 * parallel files load the machine already.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { describe, test } from 'node:test';
import { ClusterClient, parseServerList } from '../client/cluster-client.js';
import { runOperation } from '../daemon/ops/offline.js';
import { etcdMissing } from './helpers/etcd.js';
import { PASSWORD, settled, until, useDaemonCluster, type DaemonCluster, type Member } from './helpers/cluster-daemons.js';

const missing = etcdMissing();
/** cluster.leaseTtlSec's default (daemon/main/config.ts) and the planning round (cluster/node.ts). */
const TTL_MS = 2000;
const PLAN_EVERY_MS = 1000;
const GAP_BOUND_MS = 10 * TTL_MS + 10 * PLAN_EVERY_MS;
const EVENTS = Math.max(1, Math.min(50, Number(process.env.TAKEOVER_GAP_EVENTS ?? 1) || 1));
const BURN = process.env.TAKEOVER_GAP_EVENTS !== undefined || process.env.TAKEOVER_GAP_BURN === '1';
/**
 * Every other event follows a restart at once, while clubs still move to the restarted member
 * (reproduction runs, or TAKEOVER_GAP_AT_ONCE=1). This found the rebalancing move onto a member
 * that had not caught up (cluster/warm-moves.ts): with the old primary killed in that window
 * and the log trimmed past both remaining replicas, the club waited for the old primary's
 * return. A plain `npm test` lets the standbys catch up between events (a shorter run).
 */
const AT_ONCE = process.env.TAKEOVER_GAP_EVENTS !== undefined || process.env.TAKEOVER_GAP_AT_ONCE === '1';

interface ClubView {
  id: string;
  primary: string | null;
  standbys: string[];
  lag: number | null;
  served?: boolean;
  waitingMs?: number | null;
}
interface View {
  self: string;
  clubs: ClubView[];
}

const running = (m: Member) => m.child.exitCode === null && m.child.signalCode === null;

/**
 * Polls every running member's status and keeps, per club, the start of the current interval in
 * which the member named primary does not serve it; `failure` is set once an interval passes the bound.
 */
class GapMonitor {
  readonly open = new Map<string, { since: number; why: string; node: string | null }>();
  longest = 0;
  failure: string | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  /** Members being stopped by the test: their own status is not asked. */
  readonly leaving = new Set<string>();

  constructor(private readonly members: () => Member[]) {}

  start(): void {
    this.loop = (async () => {
      while (!this.stopped && !this.failure) {
        await this.round();
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  /** One look at every running member; returns whether every club was served by its named primary. */
  async round(): Promise<boolean> {
    const live = this.members().filter((m) => running(m) && !this.leaving.has(m.id));
    const views: View[] = [];
    for (const m of live) {
      try {
        views.push((await runOperation(m.dir, 'cluster.status', {})).result as View);
      } catch {
        // starting, or not joined yet: no view
      }
    }
    if (views.length === 0) return false;
    const liveIds = new Set(live.map((m) => m.id));
    const viewOf = new Map(views.map((v) => [v.self, v]));
    const bad = new Map<string, { why: string; node: string | null }>();
    for (const v of views) {
      for (const c of v.clubs) {
        if (!c.primary) bad.set(c.id, { why: `${v.self}: no primary`, node: null });
        else if (!liveIds.has(c.primary)) bad.set(c.id, { why: `${v.self} names ${c.primary} (down)`, node: c.primary });
        else if (c.primary === v.self && c.served === false) bad.set(c.id, { why: `${v.self} named primary, not serving (waiting ${c.waitingMs ?? '?'} ms)`, node: v.self });
        else if (c.primary !== v.self && !viewOf.has(c.primary)) bad.set(c.id, { why: `${v.self} names ${c.primary}, whose status did not answer`, node: c.primary });
      }
    }
    const now = Date.now();
    for (const club of [...this.open.keys()]) if (!bad.has(club)) this.open.delete(club);
    for (const [club, b] of bad) {
      const o = this.open.get(club) ?? { since: now, ...b };
      this.open.set(club, { ...o, why: b.why, node: b.node });
      const ms = now - o.since;
      this.longest = Math.max(this.longest, ms);
      if (ms > GAP_BOUND_MS && !this.failure) {
        const logs = this.members().map((x) => `log of ${x.id}${x.id === b.node ? ' (named primary)' : ''}: ${x.out.join('').slice(x.id === b.node ? -6000 : -3000)}`);
        this.failure = `club ${club} not served by its named primary for ${ms} ms (bound ${GAP_BOUND_MS} ms): ${b.why}; statuses ${JSON.stringify(views)}; ${logs.join('; ')}`;
      }
    }
    return bad.size === 0;
  }

  /** Waits until one round finds every club served (fails with the monitor's failure instead). */
  async allServed(what: string): Promise<void> {
    await until(what, async () => {
      if (this.failure) assert.fail(this.failure);
      return (await this.round()) ? true : undefined;
    }, 4 * GAP_BOUND_MS);
    if (this.failure) assert.fail(this.failure);
  }
}

describe('takeover gaps: a named primary serves within a bound after kills, stops and restarts', { skip: missing }, () => {
  let cl: DaemonCluster;
  const { status, spawnMember } = useDaemonCluster((c) => (cl = c));

  test(`${EVENTS} kill -9 / SIGTERM / restart events under client writes: no club unserved by its named primary past ${GAP_BOUND_MS} ms`, { timeout: 120_000 + EVENTS * 90_000 }, async (t) => {
    const members = cl.members;
    const clubs: string[] = [];
    for (let i = 0; i < 6; i++) {
      const { result } = await runOperation(members[0]!.dir, 'club.create', { name: `Kapelle ${i}`, admin: 'admin', password: PASSWORD });
      clubs.push((result as { id: string }).id);
    }
    await settled(status, members[0]!);
    const monitor = new GapMonitor(() => members);
    await monitor.allServed('every club served before the events');

    // Load: one writer per club (requests in flight at every kill) and, in reproduction runs, a CPU burner.
    const servers = parseServerList(members.map((m) => `${m.host}:${m.port}`).join(','));
    const clients = clubs.map(
      (club, i) =>
        new ClusterClient({
          servers: [...servers.slice(i % 3), ...servers.slice(0, i % 3)],
          fingerprint: cl.fingerprint,
          retryForMs: 4 * GAP_BOUND_MS,
          retryCapMs: 6 * GAP_BOUND_MS,
          login: async (conn) => void (await conn.request('auth.login', { club, user: 'admin', password: PASSWORD })),
        }),
    );
    let stopWriters = false;
    const writeErrors: string[] = [];
    let writes = 0;
    const writers = clubs.map(async (club, i) => {
      for (let n = 0; !stopWriters; n++) {
        try {
          await clients[i]!.request('persons.create', { firstName: `g${n}`, lastName: 'Gap' }, { mutating: true });
          writes++;
        } catch (e) {
          writeErrors.push(`${club}: ${(e as Error).message}`);
          return;
        }
      }
    });
    const burner: ChildProcess | undefined = BURN ? spawn(process.execPath, ['-e', `const end = Date.now() + ${EVENTS * 90_000}; while (Date.now() < end);`, cl.root], { stdio: 'ignore' }) : undefined;
    monitor.start();
    try {
      for (let i = 0; i < EVENTS; i++) {
        // A member with the most primaries goes (so every event moves clubs; ties in turn): kill -9,
        // a graceful stop, kill -9, ... (AT_ONCE: every other event follows the restart at once).
        const s = (await status(members.find(running)!)) as { clubs: ClubView[] };
        const primaries = (m: Member) => s.clubs.filter((c) => c.primary === m.id).length;
        const turn = (m: Member) => (members.indexOf(m) - i + 3 * EVENTS) % 3;
        const ranked = members.filter(running).sort((a, b) => primaries(b) - primaries(a) || turn(a) - turn(b));
        const victim = ranked[0]!;
        const kind = i % 3 === 1 ? 'SIGTERM' : 'SIGKILL';
        const idx = members.indexOf(victim);
        monitor.leaving.add(victim.id);
        const exited = new Promise((r) => victim.child.once('exit', r));
        victim.child.kill(kind);
        await exited;
        monitor.leaving.delete(victim.id);
        await monitor.allServed(`every club served after ${kind} of ${victim.id}`);
        members[idx] = spawnMember({ id: victim.id, host: victim.host, port: victim.port, dir: victim.dir });
        await until(`${victim.id} back`, async () => {
          if (!running(members[idx]!)) throw new Error(`${victim.id} exited on restart: ${members[idx]!.out.join('').slice(-2000)}`);
          try {
            return (await status(members[idx]!)).members.length === 3 ? true : undefined;
          } catch {
            return undefined;
          }
        }, 60_000);
        if (!AT_ONCE || i % 2 === 1 || i === EVENTS - 1) {
          await settled(status, members[idx]!, 4 * GAP_BOUND_MS);
          await monitor.allServed(`every club served after ${victim.id} came back`);
          // Every standby caught up before the next event (see AT_ONCE for why).
          if (!AT_ONCE) await until('every standby caught up', async () => {
            for (const m of members.filter(running)) {
              const v = (await status(m)) as { clubs: ClubView[] };
              if (v.clubs.some((c) => c.standbys.includes(m.id) && c.lag !== 0)) return undefined;
            }
            return true;
          }, 4 * GAP_BOUND_MS);
        }
        assert.deepEqual(writeErrors, [], 'a writer gave up');
        t.diagnostic(`event ${i + 1}: ${kind} of ${victim.id}, restarted; longest unserved interval so far ${monitor.longest} ms; ${writes} writes`);
      }
    } finally {
      stopWriters = true;
      burner?.kill('SIGKILL');
      await monitor.stop();
    }
    await Promise.all(writers);
    for (const c of clients) await c.close();
    if (monitor.failure) assert.fail(monitor.failure);
    assert.deepEqual(writeErrors, []);
    t.diagnostic(`longest interval a club was not served by its named primary: ${monitor.longest} ms (bound ${GAP_BOUND_MS} ms)`);
  });
});
