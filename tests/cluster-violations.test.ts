/**
 * Issue 14, "violation counting is shared or bounded so that spreading attempts over N servers
 * does not give N times the budget": three ban engines, each with its own ban table, sharing
 * their counts through ViolationBoard (cluster/violation-board.ts) on a real 3-member etcd.
 * Failed logins spread round-robin over the three get the source banned at the same total count
 * as on one server (maxRetry; without sharing it would take 3 x maxRetry - 2); a flood of
 * violations turns into a bounded number of etcd writes; nothing in etcd names the address.
 * The daemon-level run (the ban closing the source's sessions on all servers) is in
 * tests/cluster-daemons.test.ts.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EtcdGateway } from '../cluster/etcd-gateway.js';
import { VIOLATIONS_PREFIX, ViolationBoard } from '../cluster/violation-board.js';
import { BanEngine } from '../daemon/bans/ban-engine.js';
import { DEFAULT_BAN_POLICY, sourceKey } from '../daemon/bans/ban-policy.js';
import { BanStore } from '../storage/bans/ban-store.js';
import { etcdMissing, startEtcdCluster, type EtcdCluster } from './helpers/etcd.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();


interface Member {
  gw: EtcdGateway;
  board: ViolationBoard;
  engine: BanEngine;
  table: BanStore;
}

describe('violation counts shared by all servers', { skip: missing }, () => {
  let etcd: EtcdCluster;
  let root: string;
  const masterKey = randomBytes(32);
  const open: Member[] = [];

  before(async () => {
    etcd = await startEtcdCluster();
    root = mkdtempSync(join(tmpdir(), 'commusic-cluster-violations-'));
  });
  after(async () => {
    for (const m of open) {
      m.engine.close();
      await m.board.stop().catch(() => undefined);
      m.gw.close();
      m.table.close();
    }
    await etcd?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  const member = async (id: string, prefix: string, o: { maxPublished?: number; maxPerFlush?: number; loginMaxRetry?: number } = {}): Promise<Member> => {
    const gw = new EtcdGateway({ endpoints: etcd.endpoints, prefix });
    const board = new ViolationBoard(gw, { masterKey, nodeId: id, ...(o.maxPublished ? { maxPublished: o.maxPublished } : {}), ...(o.maxPerFlush ? { maxPerFlush: o.maxPerFlush } : {}) });
    await board.start();
    const table = BanStore.openInDir(mkdtempSync(join(root, `${id}-`)));
    const engine = new BanEngine({ table, purgeEvery: 0, policy: { kinds: { login: { maxRetry: o.loginMaxRetry ?? 5, findTime: '10m' } } } });
    engine.setShared(board);
    const m = { gw, board, engine, table };
    open.push(m);
    return m;
  };

  test('failed logins round-robin over three servers: banned at the same total count as on one server', async () => {
    const servers = [await member('va', 'v1/'), await member('vb', 'v1/'), await member('vc', 'v1/')];
    const ip = '198.51.100.7';
    const src = sourceKey(DEFAULT_BAN_POLICY, ip)!.key;
    const outcomes: string[] = [];
    for (let i = 0; i < 5; i++) {
      const s = servers[i % 3]!;
      const out = s.engine.handle({ ip, kind: 'login', detail: 'failed login', time: Date.now() });
      outcomes.push(out.action);
      if (out.action === 'banned') break;
      // the next server has seen every earlier attempt (the coalesced write and the watch are done)
      const next = servers[(i + 1) % 3]!;
      const total = i + 1;
      const itsOwn = Array.from({ length: total }, (_, j) => j).filter((j) => j % 3 === (i + 1) % 3).length;
      await until(`attempt ${total} seen by the next server`, () => (next.board.remote('login', src, 0) >= total - itsOwn ? true : undefined));
    }
    assert.deepEqual(outcomes, ['counted', 'counted', 'counted', 'counted', 'banned']);
    // the ban is in the table of the server that saw the fifth attempt
    assert.ok(servers[4 % 3]!.table.check(ip, Date.now()));
    // etcd holds the counts only sealed, under an HMAC: never the address
    const all = await servers[0]!.gw.kv.getAll().prefix(VIOLATIONS_PREFIX).keys();
    for (const k of all) assert.ok(!k.includes(ip), k);
    const values = await servers[0]!.gw.kv.getAll().prefix(VIOLATIONS_PREFIX).buffers();
    for (const v of Object.values(values)) assert.ok(!v.includes(Buffer.from(ip)), 'an address in plaintext in etcd');
  });

  test('a flood of violations becomes a bounded number of etcd writes', async () => {
    const [a, b] = [await member('fa', 'v2/', { maxPublished: 200, maxPerFlush: 20, loginMaxRetry: 1000 }), await member('fb', 'v2/', { loginMaxRetry: 1000 })];
    const perFlush: number[] = [];
    a.board.on('flushed', (n: number) => perFlush.push(n));
    // one source, 900 failed logins at once (below its maxRetry of 1000): one count, written once
    for (let i = 0; i < 900; i++) a.engine.handle({ ip: '203.0.113.9', kind: 'login', detail: 'failed login', time: Date.now() });
    await until('the flood source counted on the other server', () => (b.board.remote('login', sourceKey(DEFAULT_BAN_POLICY, '203.0.113.9')!.key, 0) >= 900 ? true : undefined));
    assert.ok(a.board.writes <= 2, `${a.board.writes} writes for one source`);
    // 1000 sources: at most maxPerFlush per flush, at most maxPublished counts in etcd
    for (let i = 0; i < 1000; i++) a.engine.handle({ ip: `10.1.${i >> 8}.${i & 255}`, kind: 'login', detail: 'failed login', time: Date.now() });
    await until('the many-source flood written', () => (a.board.writes >= 200 ? true : undefined));
    assert.ok(perFlush.every((n) => n <= 20), `a flush wrote ${Math.max(...perFlush)}`);
    assert.ok(a.board.skipped >= 800, `${a.board.skipped} sources not published`);
    const keys = await a.gw.kv.getAll().prefix(VIOLATIONS_PREFIX).keys();
    assert.ok(keys.length <= 200, `${keys.length} counts in etcd`);
  });
});
