/**
 * Issue 14: the cluster's pure parts without etcd: the placement plan, the sealing of what goes
 * into etcd, the key layout and the endpoint list.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { openEntry } from '../cluster/club-log.js';
import { ClusterError } from '../cluster/errors.js';
import { createWatch, EtcdGateway, parseEndpoints } from '../cluster/etcd-gateway.js';
import type { WatchBuilder } from 'etcd3';
import { until } from './helpers/until.js';
import { logKey, seqOfLogKey } from '../cluster/keys.js';
import { planPlacement, type Placement } from '../cluster/placement.js';
import { deriveLogKey, openRecord, sealRecord } from '../crypto/cluster-seal.js';

const members = (...ids: string[]) => ids.map((id) => ({ id, state: 'active' as const }));
const primaries = (plan: Record<string, Placement>) => {
  const c: Record<string, number> = {};
  for (const p of Object.values(plan)) c[p.primary] = (c[p.primary] ?? 0) + 1;
  return c;
};

describe('placement plan', () => {
  test('new clubs spread by count and size, each with a standby that is not its primary', () => {
    const clubs = Array.from({ length: 9 }, (_, i) => ({ id: `c${i}`, bytes: 1000 }));
    const plan = planPlacement({ members: members('a', 'b', 'c'), clubs, current: {} });
    assert.deepEqual(primaries(plan), { a: 3, b: 3, c: 3 });
    for (const p of Object.values(plan)) {
      assert.equal(p.standbys.length, 1);
      assert.notEqual(p.standbys[0], p.primary);
    }
    // one huge club weighs like many small ones
    const sized = planPlacement({ members: members('a', 'b'), clubs: [{ id: 'big', bytes: 9000 }, ...clubs.slice(0, 4)], current: {} });
    const bigOwner = sized.big!.primary;
    assert.ok(Object.values(sized).filter((p) => p.primary === bigOwner).length < 3);
  });

  test("a dead primary's club goes to its warm standby, with a new epoch", () => {
    const current = { c1: { primary: 'a', standbys: ['b'], epoch: 4 } };
    const plan = planPlacement({ members: members('b', 'c'), clubs: [{ id: 'c1', bytes: 1 }], current });
    assert.equal(plan.c1!.primary, 'b');
    assert.equal(plan.c1!.epoch, 5);
    assert.deepEqual(plan.c1!.standbys, ['c']);
  });

  test('a drained member hands its clubs over; a joining member becomes a standby first, then receives clubs', () => {
    const current: Record<string, Placement> = {
      c1: { primary: 'a', standbys: ['b'], epoch: 1 },
      c2: { primary: 'a', standbys: ['b'], epoch: 1 },
    };
    const drainMembers = [{ id: 'a', state: 'active' as const, drained: true }, { id: 'b', state: 'active' as const }, { id: 'c', state: 'active' as const }];
    const twoClubs = [{ id: 'c1', bytes: 1 }, { id: 'c2', bytes: 1 }];
    const round1 = planPlacement({ members: drainMembers, clubs: twoClubs, current, maxMoves: 1 });
    assert.equal(Object.values(round1).filter((p) => p.primary === 'a').length, 1, 'a drain moves one club per round');
    const drained = planPlacement({ members: drainMembers, clubs: twoClubs, current: round1, maxMoves: 1 });
    assert.ok(Object.values(drained).every((p) => p.primary !== 'a' && !p.standbys.includes('a')));
    const many: Record<string, Placement> = {};
    const clubs = Array.from({ length: 6 }, (_, i) => ({ id: `k${i}`, bytes: 1 }));
    for (const c of clubs) many[c.id] = { primary: 'a', standbys: ['b'], epoch: 1 };
    const withJoiner = planPlacement({ members: [...members('a', 'b'), { id: 'n', state: 'joining' }], clubs, current: many });
    assert.ok(Object.values(withJoiner).some((p) => p.standbys.includes('n')), 'the joining member is no standby');
    assert.ok(Object.values(withJoiner).every((p) => p.primary !== 'n'), 'a joining member got a primary before catching up');
    // once active, it receives primaries at the bounded rate (one per round), only where it is warm
    let plan = withJoiner;
    const rounds: number[] = [];
    for (let r = 0; r < 12; r++) {
      const next = planPlacement({ members: members('a', 'b', 'n'), clubs, current: plan, maxMoves: 1 });
      const moved = Object.keys(next).filter((id) => next[id]!.primary !== plan[id]!.primary);
      for (const id of moved) assert.ok(plan[id]!.standbys.includes(next[id]!.primary), 'a primary moved to a member that was not warm');
      rounds.push(moved.length);
      plan = next;
    }
    assert.ok(rounds.every((m) => m <= 1));
    const counts = primaries(plan);
    assert.ok(Math.max(...Object.values(counts)) - Math.min(...Object.values(counts)) <= 1, JSON.stringify(counts));
    assert.ok((counts.n ?? 0) >= 1);
  });
});

describe('sealing and layout', () => {
  test('a log entry opens only with its club key, at its own club and position', () => {
    const dataKey = randomBytes(32);
    const key = deriveLogKey(dataKey, 'club-a');
    assert.notDeepEqual(key, deriveLogKey(dataKey, 'club-b'));
    const sealed = sealRecord(key, Buffer.from('x'), Buffer.from('commusic-log|club-a|1'));
    assert.deepEqual(openRecord(key, sealed, Buffer.from('commusic-log|club-a|1')), Buffer.from('x'));
    assert.throws(() => openRecord(key, sealed, Buffer.from('commusic-log|club-a|2')));
    assert.throws(() => openEntry(key, 'club-a', 1, sealed), (e: unknown) => e instanceof ClusterError && e.code === 'LOG_CORRUPT');
    const tampered = Buffer.from(sealed);
    tampered[tampered.length - 1]! ^= 1;
    assert.throws(() => openRecord(key, tampered, Buffer.from('commusic-log|club-a|1')));
  });

  test('log keys sort numerically and reject bad sequence numbers and ids', () => {
    assert.ok(logKey('c', 9) < logKey('c', 10));
    assert.equal(seqOfLogKey('c', logKey('c', 42)), 42);
    assert.equal(seqOfLogKey('c', 'clubs/c/log/12'), undefined);
    assert.throws(() => logKey('c', 0));
    assert.throws(() => logKey('../x', 1));
  });

  test('etcd endpoint lists', () => {
    assert.deepEqual(parseEndpoints('http://127.0.0.1:2379, https://etcd-2.example:2379'), ['http://127.0.0.1:2379', 'https://etcd-2.example:2379']);
    for (const bad of ['', '127.0.0.1:2379', 'http://h:0', 'ftp://h:1', 'http://h:1/path']) {
      assert.throws(() => parseEndpoints(bad), (e: unknown) => e instanceof ClusterError && e.code === 'INVALID_ARGUMENT', bad);
    }
  });
  test('a watch whose stream never confirms fails within the read budget, and a late one is cancelled', async () => {
    // No etcd behind this gateway: the builder is a stand-in whose create() never settles, as
    // etcd3's waits without a deadline for a stream that does not come up.
    const gw = new EtcdGateway({ endpoints: ['http://127.0.0.1:9'], callTimeoutMs: 100, readBudgetMs: 2500 });
    try {
      let attempts = 0;
      let cancelled = 0;
      const late: Array<(w: unknown) => void> = [];
      const builder = { create: () => new Promise((resolve) => (attempts++, late.push(resolve))) } as unknown as WatchBuilder;
      await assert.rejects(createWatch(gw, 'watch test', () => builder), (e: unknown) => e instanceof ClusterError && e.code === 'ETCD_UNAVAILABLE');
      assert.ok(attempts >= 2, `retried within the budget (${attempts} attempts)`);
      // A watcher that connects after its attempt gave up is cancelled, not left running.
      for (const r of late) r({ cancel: async () => void cancelled++ });
      await until('late watchers cancelled', () => (cancelled === attempts ? true : undefined), 5000);
    } finally {
      gw.close();
    }
  });
});
