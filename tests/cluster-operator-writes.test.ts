/**
 * Operator writes on a cluster member (docs/CLUSTER.md "Operator writes"), with two cluster nodes
 * on real stores and a real 3-member etcd: a change of a club's row made on a member that is not
 * the club's primary (club suspend/resume, backup set-mail, club create-bulk) reaches the primary
 * through the registry; a write into a club's store outside a command (backup restore, key
 * rotation) is refused with the primary named.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import type { ClusterNode } from '../cluster/node.js';
import { buildOperations, type OpsContext } from '../daemon/ops/ops.js';
import type { Storage } from '../storage/server/storage.js';
import { etcdMissing, type EtcdCluster } from './helpers/etcd.js';
import { makeTemplate, newMemberFolder, startNodeServer, stopNodeServers, useEtcdAndFolder } from './helpers/cluster-nodes.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();
/** The bound of each wait (far above what it needs) and its pause, 20 ms growing to 200 ms. */
const WAIT_MS = 60_000;
const SLOW_POLL = { maxPauseMs: 200 };

interface Member {
  id: string;
  storage: Storage;
  node: ClusterNode;
  ctx: OpsContext;
}

describe('operator writes on a cluster member', { skip: missing, timeout: 300_000 }, () => {
  let etcd: EtcdCluster;
  let root: string;
  const members: Member[] = [];
  const ops = buildOperations<OpsContext>();
  let club: string;

  useEtcdAndFolder('cluster-ops', (e, r) => ((etcd = e), (root = r)), () => stopNodeServers(members));

  before(async () => {
    const tmpl = await makeTemplate(root);
    for (const id of ['op-a', 'op-b']) {
      const dir = newMemberFolder(tmpl, join(root, id));
      const { storage, node } = await startNodeServer({ etcd, id, dir, index: members.length, prefix: 'ops/' });
      const ctx: OpsContext = { dataDir: dir, storage: async () => storage, bans: () => Promise.reject(new Error('not used')), cluster: () => node };
      members.push({ id, storage, node, ctx });
    }
    club = ((await ops.run(members[0]!.ctx, 'club.create', { name: 'MV Operator', admin: 'admin', password: 'correct horse battery' })) as { id: string }).id;
    await until('the club served', () => (members.some((m) => m.node.route(club).kind === 'serve') ? true : undefined), WAIT_MS, SLOW_POLL);
  });


  const roles = () => {
    const primary = members.find((m) => m.node.route(club).kind === 'serve')!;
    return { primary, other: members.find((m) => m !== primary)! };
  };

  test('club suspend, resume and backup set-mail on the non-primary member reach the primary', async () => {
    const { primary, other } = roles();
    await ops.run(other.ctx, 'club.suspend', { id: club });
    await until('the primary sees the club suspended', () => (primary.storage.server.mustGetClub(club).status === 'suspended' ? true : undefined), WAIT_MS, SLOW_POLL);
    await ops.run(other.ctx, 'club.resume', { id: club });
    await until('the primary sees the club active', () => (primary.storage.server.mustGetClub(club).status === 'active' ? true : undefined), WAIT_MS, SLOW_POLL);
    await ops.run(other.ctx, 'backup.set-mail', { club, emails: ['kassier@example.org'] });
    await until('the primary has the mail address', () => (JSON.stringify((primary.storage.server.mustGetClub(club).settings as { backup?: { emails?: string[] } }).backup?.emails) === '["kassier@example.org"]' ? true : undefined), WAIT_MS, SLOW_POLL);
  });

  test('club create-bulk on a member registers the clubs with the cluster', async () => {
    const { other } = roles();
    const made = (await ops.run(other.ctx, 'club.create-bulk', { clubs: [{ name: 'Chor Bulk 1', admin: 'admin' }, { name: 'Chor Bulk 2', admin: 'admin' }] })) as Array<{ id: string }>;
    for (const { id } of made) {
      await until(`bulk club ${id} known to every member and served`, () => (members.every((m) => m.storage.server.getClub(id)) && members.some((m) => m.node.route(id).kind === 'serve') ? true : undefined), WAIT_MS, SLOW_POLL);
    }
  });

  test('a restore into a member or a key rotation is refused, naming the primary', async () => {
    const { primary, other } = roles();
    for (const m of [other, primary]) {
      const named = (e: unknown) => (e as { code?: string }).code === 'NOT_SUPPORTED_IN_CLUSTER' && (e as Error).message.includes(m === primary ? 'this server' : `node ${primary.id}`);
      await assert.rejects(ops.run(m.ctx, 'backup.restore', { club, from: 'local:any', yes: true }), named);
      await assert.rejects(ops.run(m.ctx, 'keys.rotate-club', { id: club }), named);
    }
  });
});
