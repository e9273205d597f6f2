/**
 * Issue 14, a lease that ran out by the server's own clock (a long pause, a partition): the
 * server stops serving, joins again with a new lease and serves its clubs again. The first join
 * attempt after such an expiry always meets the old member key (etcd expires the old lease only a
 * margin after our own clock does), so it fails; that attempt's lease must not live on. It did:
 * it was kept alive for good, and its later expiry by our clock made the server drop every club
 * while its current lease kept the member key and the owner keys alive, so no join succeeded
 * and no other member could take the clubs over (named primary, answering UNAVAILABLE, for
 * minutes: the stall tests/cluster-takeover-gap.test.ts measures). Two servers' cluster nodes in
 * this process on a 3-member etcd.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { createClub } from '../storage/server/provisioning.js';
import { etcdMissing, type EtcdCluster } from './helpers/etcd.js';
import { makeTemplate, newMemberFolder, startNodeServer, stopNodeServers, useEtcdAndFolder, type NodeServer } from './helpers/cluster-nodes.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();

describe('a lease that ran out by our own clock', { skip: missing }, () => {
  let etcd: EtcdCluster;
  let root: string;
  const servers: NodeServer[] = [];
  useEtcdAndFolder('cluster-rejoin', (e, r) => ((etcd = e), (root = r)), () => stopNodeServers(servers));

  test('the server joins again and serves its clubs; no lease of a failed join attempt stays alive', async (t) => {
    const tmpl = await makeTemplate(root);
    for (const id of ['node-r1', 'node-r2']) {
      servers.push(await startNodeServer({ etcd, id, dir: newMemberFolder(tmpl, join(root, id)), index: servers.length, prefix: 'rejoin/' }));
    }
    const [a] = servers as [NodeServer, NodeServer];
    const clubs: string[] = [];
    for (let i = 0; i < 2; i++) {
      const { id } = await createClub(a.storage, { name: `Verein R${i}`, adminUser: 'admin', adminPassword: 'correct horse battery', materialize: false });
      await a.node.registerClub(id);
      clubs.push(id);
    }
    const servedBy = (club: string) => servers.find((s) => s.node.route(club).kind === 'serve');
    await until('every club served', () => (clubs.every((c) => servedBy(c)) ? true : undefined), 60_000);
    const client = new Etcd3({ hosts: etcd.endpoints });
    try {
      const leases = async () => (await client.leaseClient.leaseLeases()).leases.length;
      // One lease per server (a lease whose grant answer was lost, or one that lapsed under load,
      // is gone within its TTL).
      await until('one lease per server before the pause', async () => ((await leases()) === 2 ? true : undefined), 30_000);
      for (let round = 1; round <= 2; round++) {
        const victim = servedBy(clubs[0]!)!;
        const memberLease = async () => (await client.get(`rejoin/members/${victim.id}`).exec()).kvs[0]?.lease;
        const before = await memberLease();
        assert.ok(before);
        const lost = new Promise((r) => victim.node.once('lease-lost', r));
        victim.node.suspendLeaseKeepalive();
        await lost;
        await until(`${victim.id} a member again, with a new lease`, async () => {
          const l = await memberLease();
          return l && l !== before ? true : undefined;
        }, 60_000);
        await until(`every club served again after round ${round}`, () => (clubs.every((c) => servedBy(c)) ? true : undefined), 60_000);
        // A lease whose keepalives stopped is gone from etcd within its TTL (4 s here): wait until
        // only kept-alive leases remain. One per server, or a failed join attempt's lease lives on.
        const n = await until(`etcd down to the servers' own leases (round ${round})`, async () => {
          const k = await leases();
          return k <= 2 ? k : undefined;
        }, 30_000).catch(async () => leases());
        t.diagnostic(`round ${round}: ${victim.id} joined again; leases in etcd: ${n}`);
        assert.equal(n, 2, `${n} leases in etcd for 2 servers: a failed join attempt's lease is kept alive`);
      }
    } finally {
      client.close();
    }
  });
});
