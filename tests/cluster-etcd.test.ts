/**
 * Issue 14, milestone 1: the cluster's etcd building blocks against a real 3-member etcd on
 * loopback (tests/helpers/etcd.ts): fenced appends, the etcd leader killed during appends, the
 * lease judged by our own clock, ban propagation with a resync after compaction, the placement
 * leader. Skips, saying what to install, when /usr/bin/etcd is missing.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { BanBoard, type ClusterBan } from '../cluster/ban-board.js';
import { ClubLog, readEntries, readHead, readOwner } from '../cluster/club-log.js';
import { ClusterError } from '../cluster/errors.js';
import { EtcdGateway } from '../cluster/etcd-gateway.js';
import { LogFollower, takeOver } from '../cluster/log-follower.js';
import { MemberLease } from '../cluster/member-lease.js';
import { listMembers, Membership } from '../cluster/membership.js';
import { PlacementLeader, type Placement } from '../cluster/placement.js';
import { holdColdMoves } from '../cluster/warm-moves.js';
import { headKey, posKey } from '../cluster/keys.js';
import { deriveLogKey } from '../crypto/cluster-seal.js';
import { etcdMissing, startEtcdCluster, type EtcdCluster } from './helpers/etcd.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();


describe('cluster on a real 3-member etcd', { skip: missing }, () => {
  let etcd: EtcdCluster;
  const gateways: EtcdGateway[] = [];
  const leases: MemberLease[] = [];
  const gw = (endpoints?: string[], prefix = 'commusic/') => {
    const g = new EtcdGateway({ endpoints: endpoints ?? etcd.endpoints, prefix });
    gateways.push(g);
    return g;
  };
  const lease = async (g: EtcdGateway, ttlSec = 2, now?: () => number) => {
    const l = await MemberLease.grant(g, { ttlSec, ...(now ? { now } : {}) });
    leases.push(l);
    return l;
  };
  const dataKey = randomBytes(32);

  before(async () => {
    etcd = await startEtcdCluster();
  });
  after(async () => {
    for (const l of leases) l.abandon();
    for (const g of gateways) g.close();
    await etcd?.stop();
  });

  test('a stale owner is fenced: its append is refused once another server owns the club', async () => {
    const g = gw(undefined, 'fence/');
    const club = 'fence-club';
    const key = deriveLogKey(dataKey, club);
    // Server A's clock never advances, so A still believes its lease valid after etcd expired
    // it: exactly the server a partition or a long pause leaves behind. Only etcd's compare on
    // the owner key's create revision can stop it.
    const frozen = 1_000_000;
    const leaseA = await lease(g, 1, () => frozen);
    const a = await ClubLog.acquire({ gw: g, lease: leaseA, nodeId: 'node-a', clubId: club, logKey: key, schema: 1 });
    for (let i = 0; i < 3; i++) assert.equal(await a.append(Buffer.from(`a${i}`)), i + 1);
    leaseA.suspendKeepalive(); // a partition: etcd expires the lease, A's clock says it is fine
    await until('owner key gone with the lease', async () => ((await readOwner(g, club)) === undefined ? true : undefined));
    const leaseB = await lease(g);
    const b = await ClubLog.acquire({ gw: g, lease: leaseB, nodeId: 'node-b', clubId: club, logKey: key, schema: 1 });
    assert.notEqual(b.token, a.token);
    assert.equal(b.head.seq, 3);
    assert.equal(await b.append(Buffer.from('b0')), 4);
    assert.equal(leaseA.isValid(), true);
    await assert.rejects(a.append(Buffer.from('a-stale')), (e: unknown) => e instanceof ClusterError && e.code === 'FENCED' && e.owner === 'node-b');
    assert.equal(a.state, 'fenced');
    await assert.rejects(a.append(Buffer.from('after')), (e: unknown) => e instanceof ClusterError && e.code === 'FENCED');
    // A third server cannot take the club while B holds it, and learns who does.
    const leaseC = await lease(g);
    await assert.rejects(
      ClubLog.acquire({ gw: g, lease: leaseC, nodeId: 'node-c', clubId: club, logKey: key, schema: 1 }),
      (e: unknown) => e instanceof ClusterError && e.code === 'NOT_OWNER' && e.owner === 'node-b',
    );
    const entries = await readEntries(g, club, key, 1);
    assert.deepEqual(
      entries.flatMap((e) => e.items.map((i) => Buffer.from(i).toString())),
      ['a0', 'a1', 'a2', 'b0'],
    );
    // Entries are sealed: another club's key does not open them.
    await assert.rejects(readEntries(g, club, deriveLogKey(dataKey, 'other'), 1), (e: unknown) => e instanceof ClusterError && e.code === 'LOG_CORRUPT');
  });

  test('a standby follows the log, takes the club over at the head when the primary dies, and its successor follows on', async () => {
    const g = gw(undefined, 'follow/');
    const club = 'warm-club';
    const key = deriveLogKey(dataKey, club);
    const leaseA = await lease(g, 1);
    const a = await ClubLog.acquire({ gw: g, lease: leaseA, nodeId: 'node-a', clubId: club, logKey: key, schema: 1 });
    const replicaB: string[] = [];
    const replicaC: string[] = [];
    const fb = new LogFollower({ gw: g, clubId: club, logKey: key, from: { seq: 0, digest: '' }, apply: (e) => void replicaB.push(...e.items.map((i) => Buffer.from(i).toString())) });
    const fc = new LogFollower({ gw: g, clubId: club, logKey: key, from: { seq: 0, digest: '' }, apply: (e) => void replicaC.push(...e.items.map((i) => Buffer.from(i).toString())) });
    await a.append(Buffer.from('before-b'));
    await fb.start();
    await fc.start();
    const acked = ['before-b'];
    await Promise.all(Array.from({ length: 20 }, (_, i) => a.append(Buffer.from(`a${i}`)).then(() => acked.push(`a${i}`))));
    await until('B applied up to the head', () => (fb.position.seq === a.head.seq ? true : undefined));
    assert.equal(fb.lag, 0);
    assert.deepEqual([...replicaB].sort(), [...acked].sort());
    // A dies (its keepalives stop); B takes over as soon as etcd lets it.
    leaseA.suspendKeepalive();
    const leaseB = await lease(g, 2);
    const { log: b } = await until('B takes the club over', async () => {
      try {
        return await takeOver(fb, { gw: g, lease: leaseB, nodeId: 'node-b', clubId: club, logKey: key, schema: 1 });
      } catch (e) {
        if (e instanceof ClusterError && e.code === 'NOT_OWNER') return undefined;
        throw e;
      }
    });
    assert.deepEqual([...replicaB].sort(), [...acked].sort());
    await b.append(Buffer.from('b0'));
    acked.push('b0');
    await until('C follows across the change of owner', () => (fc.position.seq === b.head.seq ? true : undefined));
    assert.deepEqual([...replicaC].sort(), [...acked].sort());
    await fc.stop();
  });

  test('the etcd leader killed during appends: nothing lost, nothing doubled, the chain verifies', async (t) => {
    const g = gw(undefined, 'leaderkill/');
    const club = 'busy-club';
    const key = deriveLogKey(dataKey, club);
    // A TTL above the election time so the lease survives the election.
    const l = await lease(g, 5);
    const log = await ClubLog.acquire({ gw: g, lease: l, nodeId: 'node-a', clubId: club, logKey: key, schema: 3 });
    const acked: string[] = [];
    const failed: string[] = [];
    let killedAt = 0;
    let largestGap = 0;
    let lastAck = Date.now();
    let afterKill = 0;
    const writers = 4;
    let n = 0;
    let stop = false;
    const worker = async () => {
      while (!stop) {
        const id = `w${n++}`;
        try {
          await log.append(Buffer.from(id));
          const t = Date.now();
          if (killedAt > 0) {
            largestGap = Math.max(largestGap, t - lastAck);
            afterKill++;
          }
          lastAck = t;
          acked.push(id);
        } catch (e) {
          failed.push(id);
          if (!(e instanceof ClusterError)) throw e;
          stop = true;
        }
      }
    };
    const running = Array.from({ length: writers }, () => worker());
    await until('some appends before the kill', () => (acked.length >= 40 ? true : undefined));
    const leader = await etcd.leaderIndex();
    killedAt = Date.now();
    lastAck = killedAt;
    await etcd.kill(leader);
    await until('appends acknowledged after the kill', () => (afterKill >= 40 || stop ? true : undefined), 30_000);
    stop = true;
    await Promise.all(running);
    assert.deepEqual(failed, [], `appends failed: ${log.error?.code ?? ''} ${log.error?.message ?? ''}`);
    const entries = await readEntries(g, club, key, 1, { limit: 100_000 });
    const items = entries.flatMap((e) => e.items.map((i) => Buffer.from(i).toString()));
    assert.equal(new Set(items).size, items.length, 'an item appears twice in the log');
    assert.deepEqual([...items].sort(), [...acked].sort(), 'log and acknowledged appends differ');
    assert.equal((await readHead(g, club)).seq, entries.length);
    assert.ok(entries.every((e) => e.schema === 3));
    t.diagnostic(`etcd leader kill: largest gap between acknowledged appends ${largestGap} ms, ${log.settled} appends settled by reading, ${entries.length} entries for ${items.length} appends`);
    await etcd.restart(leader);
    await etcd.waitHealthy();
  });

  test("a server stops by its own clock before etcd expires its lease", async () => {
    const g = gw(undefined, 'clock/');
    const l = await lease(g, 2);
    const m = new Membership(g, l, { id: 'node-clock', address: '127.0.0.2:7000' });
    await m.register();
    assert.deepEqual((await listMembers(g)).map((x) => x.id), ['node-clock']);
    // Cut the keepalives as a partition would: the lease object keeps judging by its clock.
    l.suspendKeepalive();
    let localExpiredAt = 0;
    l.once('expired', () => (localExpiredAt = performance.now()));
    const etcdExpiredAt = await until(
      'etcd to expire the lease',
      async () => ((await listMembers(g)).length === 0 ? performance.now() : undefined),
    );
    assert.ok(localExpiredAt > 0, 'the server still considered its lease valid after etcd had expired it');
    assert.ok(localExpiredAt <= etcdExpiredAt);
    assert.equal(l.isValid(), false);
    assert.throws(() => l.assertValid(), (e: unknown) => e instanceof ClusterError && e.code === 'LEASE_EXPIRED');
  });

  test('a ban published on one server reaches the others, ends everywhere, and survives a compacted watch', async () => {
    const masterKey = randomBytes(32);
    const gA = gw(undefined, 'bans-t/');
    // B talks to the third member only, so killing that member cuts B's watch.
    const gB = gw([etcd.members[2]!.clientUrl], 'bans-t/');
    const a = new BanBoard(gA, { masterKey, nodeId: 'node-a' });
    const b = new BanBoard(gB, { masterKey, nodeId: 'node-b' });
    await b.start();
    const seen: string[] = [];
    b.on('ban', (x: ClusterBan) => seen.push(`ban ${x.address}`));
    b.on('unban', (x: string) => seen.push(`unban ${x}`));
    await a.publish({ address: '127.0.0.9', untilMs: Date.now() + 1500, reason: 'rights' });
    await until('B sees the ban', () => (seen.includes('ban 127.0.0.9') ? true : undefined));
    assert.equal(b.active()[0]?.origin, 'node-a');
    await until('the ban ends on B', () => (seen.includes('unban 127.0.0.9') ? true : undefined));
    // Nothing in etcd names the address in plaintext.
    const raw = await gA.kv.getAll().prefix('bans/').buffers();
    for (const [k, v] of Object.entries(raw)) {
      assert.ok(!k.includes('127.0.0'));
      assert.ok(!v.includes(Buffer.from('127.0.0')));
    }
    // Compacted watch: B's member goes down, A publishes and lifts, etcd compacts, B resyncs.
    await a.publish({ address: '127.0.0.10', untilMs: Date.now() + 60_000, reason: 'rights' });
    await until('B sees the second ban', () => (seen.includes('ban 127.0.0.10') ? true : undefined));
    const leaderBefore = await etcd.leaderIndex();
    await etcd.kill(2);
    if (leaderBefore === 2) await etcd.leaderIndex();
    await a.lift('127.0.0.10');
    await a.publish({ address: '127.0.0.11', untilMs: Date.now() + 60_000, reason: 'flood' });
    await gA.compact(await gA.revision());
    await etcd.restart(2);
    await until('B resyncs after the compaction', () => (seen.includes('unban 127.0.0.10') && seen.includes('ban 127.0.0.11') ? true : undefined), 30_000);
    assert.ok(b.resyncs >= 1, 'B did not list again after its watch was compacted');
    assert.deepEqual(b.active().map((x) => x.address), ['127.0.0.11']);
    await a.lift('127.0.0.11');
    await a.stop();
    await b.stop();
  });

  test('one placement leader; another takes over when its lease ends; a deposed leader cannot write', async () => {
    const g = gw(undefined, 'lead/');
    const l1 = await lease(g, 1);
    const l2 = await lease(g, 2);
    const p1 = new PlacementLeader(g, l1, 'node-1');
    const p2 = new PlacementLeader(g, l2, 'node-2');
    await p1.start();
    await p2.start();
    assert.equal(p1.isLeader(), true);
    assert.equal(p2.isLeader(), false);
    await p1.write({ 'club-a': { primary: 'node-1', standbys: ['node-2'], epoch: 1 } });
    const elected = new Promise<void>((r) => p2.once('elected', () => r()));
    l1.abandon();
    await elected;
    assert.equal(await p2.currentLeader(), 'node-2');
    await assert.rejects(p1.write({ 'club-a': { primary: 'node-1', standbys: [], epoch: 2 } }), (e: unknown) => e instanceof ClusterError);
    await p2.write({ 'club-a': { primary: 'node-2', standbys: [], epoch: 2 } });
    await p1.stop();
    await p2.stop();
  });
  test('a campaign that fails when the leader key vanishes is tried again until a member leads', async () => {
    const g1 = gw(undefined, 'lead2/');
    const g2 = gw(undefined, 'lead2/');
    const p1 = new PlacementLeader(g1, await lease(g1, 2), 'node-1');
    const p2 = new PlacementLeader(g2, await lease(g2, 2), 'node-2');
    await p1.start();
    await p2.start();
    assert.equal(p1.isLeader(), true);
    // node-2's next campaigns fail (etcd electing its own leader at that moment, injected here).
    let failures = 2;
    const read = g2.read.bind(g2);
    g2.read = (<T>(what: string, fn: () => Promise<T>, budgetMs?: number): Promise<T> =>
      what === 'campaign' && failures-- > 0 ? Promise.reject(new ClusterError('ETCD_UNAVAILABLE', 'injected: etcd did not answer "campaign"')) : read(what, fn, budgetMs)) as typeof g2.read;
    await p1.stop(); // resigns: the key is deleted, node-2's watch sees it
    await until('node-2 leads after its failed campaigns', () => (p2.isLeader() ? true : undefined), 20_000);
    assert.ok(failures < 0, 'the injected failures were not hit');
    await p2.stop();
  });
  test('planned moves wait until their target has caught up; moves away from a dead member do not', async () => {
    const g = gw(undefined, 'warm/');
    const club = 'warm-club';
    await g.kv.put(headKey(club)).value(JSON.stringify({ seq: 500, digest: 'a'.repeat(64) })).exec();
    const pos = (node: string, seq: number) => g.kv.put(posKey(club, node)).value(JSON.stringify({ seq })).exec();
    const cur = { [club]: { primary: 'node-p', standbys: ['node-s'], epoch: 3 } };
    const hold = (changed: Record<string, Placement>, alive = ['node-p', 'node-s', 'node-q']) =>
      holdColdMoves({ gw: g, current: cur, changed, alive: new Set(alive), keepEntries: 100, logger: { info: () => undefined, warn: () => undefined } });
    // A rebalancing move onto node-q, which has published no position (it returned, needs a snapshot):
    // held; node-q rides as an extra standby and the warm standby stays.
    const move = { [club]: { primary: 'node-q', standbys: ['node-p'], epoch: 4 } };
    assert.deepEqual(await hold(move), { [club]: { primary: 'node-p', standbys: ['node-q', 'node-s'], epoch: 3 } });
    // node-q far behind: still held. Within keepEntries of the head: the move goes ahead.
    await pos('node-q', 300);
    assert.equal((await hold(move))[club]!.primary, 'node-p');
    await pos('node-q', 450);
    assert.deepEqual(await hold(move), move);
    // The primary is dead: its club goes to the standby the plan chose, caught up or not.
    await g.kv.delete().key(posKey(club, 'node-q')).exec();
    assert.deepEqual(await hold(move, ['node-s', 'node-q']), move);
    // A standby swap onto a cold member keeps the warm standby too.
    const swap = { [club]: { primary: 'node-p', standbys: ['node-q'], epoch: 3 } };
    assert.deepEqual(await hold(swap), { [club]: { primary: 'node-p', standbys: ['node-q', 'node-s'], epoch: 3 } });
  });
});
