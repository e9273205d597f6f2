/**
 * Key rotation on a cluster member is refused with a typed error (docs/CLUSTER.md "Not yet
 * built"): a club's log in etcd is sealed under a key derived from its data key, and registry
 * and ban records under one derived from the master key that every member shares. Online (the
 * daemon is a member) and offline (a store in the folder is replicated) alike; a single server
 * rotates as before.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildOperations, type OpsContext } from '../daemon/ops/ops.js';
import { offlineContext, type OfflineContext } from '../daemon/ops/offline.js';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { installCapture } from '../cluster/capture.js';
import type { ClusterNode } from '../cluster/node.js';

const ops = buildOperations<OpsContext>();
let dir: string;
let ctx: OfflineContext;
let replicated: string;
let plain: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'commusic-cluster-rot-'));
  const st = await openStorage({ dataDir: dir, create: true, scryptLog2N: 10 });
  replicated = (await createClub(st, { name: 'MV Replica', adminUser: 'admin', adminPassword: 'a long admin password' })).id;
  plain = (await createClub(st, { name: 'MV Plain', adminUser: 'admin', adminPassword: 'a long admin password' })).id;
  installCapture(st.openClub(replicated).db); // what a primary or standby does to its store
  st.close();
  ctx = offlineContext(dir);
});

after(async () => {
  await ctx?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const refused = (e: unknown) => (e as { code?: string }).code === 'NOT_SUPPORTED_IN_CLUSTER' && /cluster/.test((e as Error).message);

test('offline: rotating a replicated club key, or the master key, is refused and changes nothing', async () => {
  const st = await ctx.storage();
  const before = st.server.mustGetClub(replicated).keyVersion;
  await assert.rejects(ops.run(ctx, 'keys.rotate-club', { id: replicated }), refused);
  await assert.rejects(ops.run(ctx, 'keys.rotate-master', {}), refused);
  await assert.rejects(ops.run(ctx, 'keys.rotate-master', { rekeyClubs: true }), refused);
  assert.equal(st.server.mustGetClub(replicated).keyVersion, before);
  assert.equal(st.server.mustGetClub(replicated).pendingWrappedKey ?? null, null, 'no pending key was stored');
});

test('online on a cluster member: every key rotation that members share is refused', async () => {
  const member: OpsContext = { ...ctx, cluster: () => ({ route: () => ({ kind: 'redirect', node: 'n9', address: '127.0.0.9:7000' }) }) as unknown as ClusterNode };
  await assert.rejects(ops.run(member, 'keys.rotate-club', { id: plain }), (e) => refused(e) && (e as Error).message.includes('served by node n9 (127.0.0.9:7000)'));
  await assert.rejects(ops.run(member, 'keys.rotate-master', {}), refused);
});

test('a club that is not replicated, on a single server, still rotates', async () => {
  const st = await ctx.storage();
  const before = st.server.mustGetClub(plain).keyVersion;
  const r = (await ops.run(ctx, 'keys.rotate-club', { id: plain })) as { keyVersion: number };
  assert.equal(r.keyVersion, before + 1);
});
