/**
 * Issue 14, "Documents reach the standbys before the entry that references them": three servers'
 * cluster nodes in one process, each with its peer channel on a real listener (the daemon's edge
 * with the peer commands) and a real 3-member etcd. A document stored on a club's primary is
 * pushed to the standby before the log entry naming it; the primary crashes (no handover); the
 * document reads back with equal content on the new primary. Deleting it there removes the file
 * on the replica too. A primary whose standby cannot take the file refuses the write (nothing is
 * acknowledged that one server alone holds).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { readPosition } from '../cluster/capture.js';
import { ClusterError } from '../cluster/errors.js';
import { ClusterNode } from '../cluster/node.js';
import { PeerChannel } from '../cluster/peer-channel.js';
import { registerPeerCommands } from '../daemon/cluster/peer-commands.js';
import { ViolationBus } from '../daemon/bans/violations.js';
import { nullLogger } from '../daemon/common/log.js';
import { Dispatcher } from '../daemon/edge/dispatcher.js';
import { Daemon } from '../daemon/edge/server.js';
import { configSchema } from '../daemon/main/config.js';
import { AuditLog } from '../storage/club/audit-log.js';
import { createRecord } from '../storage/club/club-data.js';
import { deleteDocument, putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage, type Storage } from '../storage/server/storage.js';
import { placementKey } from '../cluster/keys.js';
import { etcdMissing, type EtcdCluster } from './helpers/etcd.js';
import { makeTemplate, newMemberFolder, useEtcdAndFolder } from './helpers/cluster-nodes.js';
import { testIdentity } from './helpers/pair.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();

interface Server {
  id: string;
  storage: Storage;
  node: ClusterNode;
  edge: Daemon;
  peers: PeerChannel;
}

describe('documents on the standbys', { skip: missing }, () => {
  let etcd: EtcdCluster;
  let root: string;
  const servers: Server[] = [];
  const crashed = new Set<string>();

  const start = async (id: string, host: string, template: string): Promise<Server> => {
    const dir = newMemberFolder(template, join(root, id));
    const storage = await openStorage({ dataDir: dir });
    const identity = testIdentity();
    let node: ClusterNode | undefined;
    const peers = new PeerChannel({
      nodeId: id,
      masterKey: storage.master.key,
      fingerprints: () => [identity.fingerprint],
      resolve: (n) => node?.memberAddress(n),
      isMember: (n) => node?.memberAddress(n) !== undefined,
      localAddress: host,
    });
    const dispatcher = new Dispatcher();
    registerPeerCommands(dispatcher, () => (node ? peers : undefined), new ViolationBus());
    const edge = await Daemon.start({ config: configSchema.parse({ dataDir: dir, listen: `${host}:0`, logLevel: 'error' }), identity, logger: nullLogger(), violations: new ViolationBus(), dispatcher });
    node = await ClusterNode.start({
      etcd: { endpoints: etcd.endpoints, prefix: 'docs/' },
      nodeId: id,
      address: `${host}:${edge.address().port}`,
      storage,
      masterKey: storage.master.key,
      // a longer lease than the daemon's default: three servers share this process and a loaded machine
      ttlSec: 6,
      planEveryMs: 200,
      peers,
    });
    const s = { id, storage, node, edge, peers };
    servers.push(s);
    return s;
  };

  useEtcdAndFolder(
    'cluster-docs',
    (e, r) => ((etcd = e), (root = r)),
    async () => {
      for (const s of servers) {
        await s.node.stop().catch(() => undefined);
        await s.edge.stop(0).catch(() => undefined);
        s.storage.close();
      }
    },
  );

  const primaryOf = (club: string, among: Server[]) => among.find((s) => s.node.route(club).kind === 'serve');
  const docFile = (s: Server, club: string, id: number) => (s.storage.openClub(club, { allowSuspended: true }).db.prepare('SELECT file FROM documents WHERE id = ?').get(id) as { file: string } | undefined)?.file;
  const fileOn = (s: Server, club: string, file: string) => existsSync(join(s.storage.dataDir, 'clubs', club, 'docs', file));

  /**
   * One write as the daemon does it (the transaction, then the output gate) on whichever server
   * serves the club; a refusal of the gate (the club moved, or a lease lapsed on the loaded test
   * machine) is retried where the club is served next, as a client with a request key would.
   */
  const write = async <T>(club: string, among: Server[], fn: (s: Server) => Promise<T> | T): Promise<{ s: Server; r: T }> =>
    until(`a write to ${club}`, async () => {
      const s = primaryOf(club, among);
      if (!s) return undefined;
      try {
        const r = await fn(s);
        await s.node.commit(club);
        return { s, r };
      } catch (e) {
        if (e instanceof ClusterError) return undefined;
        throw e;
      }
    });

  test('a document stored on the primary reads back with equal content on the new primary after a crash; a deletion reaches the replica', async () => {
    const tmpl = await makeTemplate(root);
    const all = [await start('doc-a', '127.0.0.2', tmpl), await start('doc-b', '127.0.0.3', tmpl), await start('doc-c', '127.0.0.4', tmpl)];
    const { id: club } = await createClub(all[0]!.storage, { name: 'Verein Dokumente', adminUser: 'admin', adminPassword: 'correct horse battery', materialize: false });
    await all[0]!.node.registerClub(club);
    const content = randomBytes(700_000); // several encrypted chunks, several flow-control windows
    // As documents.upload does it: the file and the row, then the output gate (the answer waits for it).
    const { s: primary, r: info } = await write(club, all, (s) => putDocument(s.storage, club, Readable.from([content]), { kind: 'other', name: 'Satzung.pdf' }));
    const file = docFile(primary, club, info.id)!;
    const standbys = all.filter((s) => s !== primary && s.node.lagOf(club) !== undefined);
    assert.ok(standbys.length >= 1, 'the club has a standby');
    // The standby held the file before the entry existed: it is there as soon as the push returned.
    for (const s of standbys) assert.ok(fileOn(s, club, file), `file on standby ${s.id}`);
    await until('standby caught up', () => (standbys.some((s) => s.node.lagOf(club) === 0) ? true : undefined));
    await primary.node.crash();
    crashed.add(primary.id);
    const survivors = all.filter((s) => s !== primary);
    const next = await until(`club ${club} served again`, () => primaryOf(club, survivors), 30_000);
    assert.deepEqual(await readDocumentBuffer(next.storage, club, info.id), content);
    // A deletion on the new primary removes the file on its standby once the entry is applied.
    const replica = await until('a new standby', () => survivors.find((s) => s !== next && s.node.lagOf(club) !== undefined));
    await until('file on the new standby', () => (fileOn(replica, club, file) ? true : undefined));
    await write(club, survivors, (s) => deleteDocument(s.storage, club, info.id));
    await until('file removed on the standby', () => (!fileOn(replica, club, file) ? true : undefined));
  });

  test('appends stay in drain order while a document push is in flight', async () => {
    const live = servers.filter((s) => !crashed.has(s.id));
    const { id: club } = await createClub(live[0]!.storage, { name: 'Verein Reihenfolge', adminUser: 'admin', adminPassword: 'correct horse battery', materialize: false });
    await live[0]!.node.registerClub(club);
    const primary = await until(`club ${club} served`, () => primaryOf(club, live));
    const standby = await until('its standby follows', () => live.find((s) => s !== primary && s.node.lagOf(club) !== undefined));
    const db = primary.storage.openClub(club).db;
    const pid = createRecord(db, 'persons', { firstName: 'v0', lastName: 'O' }, { scope: { kind: 'all' }, audit: new AuditLog(db, club), actor: { user: 'admin', ip: '127.0.0.1', session: null } }).id as number;
    await primary.node.commit(club);
    // The primary's pushes wait until released: the commit that names the document waits with them.
    const realPush = primary.peers.push.bind(primary.peers);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    primary.peers.push = async (...args) => {
      await held;
      return realPush(...args);
    };
    try {
      await putDocument(primary.storage, club, Readable.from([randomBytes(5000)]), { kind: 'other', name: 'a.pdf' });
      db.prepare(`UPDATE persons SET firstName = 'v1' WHERE id = ?`).run(pid);
      const first = primary.node.commit(club); // the document row and v1
      db.prepare(`UPDATE persons SET firstName = 'v2' WHERE id = ?`).run(pid);
      const second = primary.node.commit(club); // v2, drained later: must not reach the log first
      release();
      await Promise.all([first, second]);
    } finally {
      primary.peers.push = realPush;
    }
    const head = readPosition(db).seq;
    await until('standby at the primary\'s position', () => (readPosition(standby.storage.openClub(club, { allowSuspended: true }).db).seq >= head ? true : undefined));
    const row = standby.storage.openClub(club, { allowSuspended: true }).db.prepare('SELECT firstName FROM persons WHERE id = ?').get(pid) as { firstName: string };
    assert.equal(row.firstName, 'v2');
  });

  test('a primary whose standby cannot take a document refuses the write, and the unacknowledged row is gone', async () => {
    const live = servers.filter((s) => !crashed.has(s.id));
    const { id: club } = await createClub(live[0]!.storage, { name: 'Verein Abgelehnt', adminUser: 'admin', adminPassword: 'correct horse battery', materialize: false });
    await live[0]!.node.registerClub(club);
    const primary = await until(`club ${club} served`, () => primaryOf(club, live));
    const standby = await until('its standby follows', () => live.find((s) => s !== primary && s.node.lagOf(club) !== undefined));
    // The standby's listener goes away: the push cannot reach it.
    await standby.edge.stop(0);
    const info = await putDocument(primary.storage, club, Readable.from([randomBytes(10_000)]), { kind: 'other', name: 'x.pdf' });
    await assert.rejects(primary.node.commit(club), (e: unknown) => e instanceof ClusterError && (e.code === 'PEER_UNAVAILABLE' || e.code === 'PEER_REFUSED'));
    assert.notEqual(primary.node.route(club).kind, 'serve', 'the club is not served on with a row one server alone holds');
    // The club moves away at once (the placement written as the leader would, in the same turn,
    // before the failed primary's own retry): the failed primary gave its owner key back, so the
    // standby takes over now, not when the failed primary's (live) lease ends, i.e. never.
    const placed = JSON.parse((await primary.node.gw.kv.get(placementKey(club)).string())!) as { epoch: number };
    await primary.node.gw.kv.put(placementKey(club)).value(JSON.stringify({ primary: standby.id, standbys: [primary.id], epoch: placed.epoch + 1 })).exec();
    await until(`club ${club} served by its standby`, () => (standby.node.route(club).kind === 'serve' ? true : undefined), 30_000);
    // Back as a standby (or primary again), its store rebuilt from the log: the row that was never acknowledged is not there.
    await until(`${primary.id} holds ${club} again`, () => (primary.node.lagOf(club) === 0 || primary.node.route(club).kind === 'serve' ? true : undefined), 30_000);
    assert.equal(docFile(primary, club, info.id), undefined);
  });
});
