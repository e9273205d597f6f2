/**
 * Issue 14, a write racing a handover: a command passes the ownership gate, waits (a password
 * hash, an upload, a grouped write) and writes after its club moved to another server. Two
 * servers' cluster nodes on real club stores and a 3-member etcd, in one process:
 * - the late write on the old primary (now a standby following the log) is refused inside its
 *   transaction (cluster/capture.ts guardWrites), also through the store's write group;
 * - a stray row that got in all the same (the guard dropped, as a write slipping past it would)
 *   makes the standby rebuild its replica from the log when it takes the club over again, even
 *   though a follower runs there: the new primary's store equals the log (the acknowledged writes,
 *   once, no stray row), the change log verifies, and the other server's replica equals it.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { isNotServedWrite } from '../cluster/capture.js';
import { ClusterError } from '../cluster/errors.js';
import { AuditLog, verifyAuditLog } from '../storage/club/audit-log.js';
import { signTranscript, verifyTranscript } from '../crypto/identity.js';
import { testIdentity } from './helpers/pair.js';
import { createRecord } from '../storage/club/club-data.js';
import { createClub } from '../storage/server/provisioning.js';
import { etcdMissing, type EtcdCluster } from './helpers/etcd.js';
import { makeTemplate, newMemberFolder, startNodeServer, stopNodeServers, useEtcdAndFolder, type NodeServer } from './helpers/cluster-nodes.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();

type Server = NodeServer;

describe('a write racing a handover', { skip: missing }, () => {
  let etcd: EtcdCluster;
  let root: string;
  const servers: Server[] = [];
  useEtcdAndFolder('cluster-stray', (e, r) => ((etcd = e), (root = r)), () => stopNodeServers(servers));

  const start = async (id: string, template: string): Promise<Server> => {
    const s = await startNodeServer({ etcd, id, dir: newMemberFolder(template, join(root, id)), index: servers.length, prefix: 'stray/' });
    servers.push(s);
    return s;
  };

  const primaryOf = (club: string) => servers.find((s) => s.node.route(club).kind === 'serve');
  /** The transaction of a command (as the daemon runs it), without the output gate. */
  const insert = (s: Server, club: string, tag: string): void => {
    const db = s.storage.openClub(club).db;
    createRecord(db, 'persons', { firstName: tag, lastName: 'T' }, { scope: { kind: 'all' }, audit: new AuditLog(db, club), actor: { user: 'admin', ip: '127.0.0.1', session: null } });
  };
  const names = (s: Server, club: string): string[] =>
    (s.storage.openClub(club).db.prepare(`SELECT firstName FROM persons WHERE lastName = 'T' ORDER BY id`).all() as Array<{ firstName: string }>).map((r) => r.firstName);
  /** Move the club's primary to `to`: drain the other server, wait, undrain it; it follows again as standby. */
  const moveTo = async (to: Server, club: string): Promise<Server> => {
    const from = servers.find((s) => s !== to)!;
    await to.node.drain(from.id, true);
    await until(`${to.id} serves ${club}`, () => (primaryOf(club) === to ? true : undefined));
    await to.node.drain(from.id, false);
    await until(`${from.id} follows ${club} again`, () => (from.node.lagOf(club) === 0 ? true : undefined));
    return from;
  };

  test('a late write on the old primary is refused; a stray row that got in is dropped by a rebuild when it takes over again', async () => {
    const tmpl = await makeTemplate(root);
    const a = await start('node-s1', tmpl);
    await start('node-s2', tmpl);
    const { id: club } = await createClub(a.storage, { name: 'Verein S', adminUser: 'admin', adminPassword: 'correct horse battery', materialize: false });
    await a.node.registerClub(club);
    const p = await until(`club ${club} served`, () => primaryOf(club));
    const q = servers.find((s) => s !== p)!;
    const acked: string[] = [];
    for (let i = 0; i < 3; i++) {
      insert(p, club, `p${i}`);
      await p.node.commit(club);
      acked.push(`p${i}`);
    }
    // A command on p passed the ownership gate here ...
    assert.equal(p.node.route(club).kind, 'serve');
    // ... and waits while the club moves to q; p follows the log as standby again.
    await moveTo(q, club);
    for (let i = 0; i < 2; i++) {
      insert(q, club, `q${i}`);
      await q.node.commit(club);
      acked.push(`q${i}`);
    }
    await until(`${p.id} caught up`, () => (names(p, club).length === acked.length && p.node.lagOf(club) === 0 ? true : undefined));
    // Its write now comes: refused inside the transaction, directly and through the write group.
    assert.throws(() => insert(p, club, 'late'), (e: unknown) => isNotServedWrite(e));
    await assert.rejects(p.storage.openClub(club).writes.run(() => insert(p, club, 'late-grouped')), (e: unknown) => isNotServedWrite(e));
    await assert.rejects(p.node.commit(club), (e: unknown) => e instanceof ClusterError && e.code === 'NOT_OWNER');
    assert.deepEqual(names(p, club), acked, 'no stray row on the standby');
    // A write that slipped past all the same (the guard dropped from this connection): p's store
    // is ahead of the log while its follower runs.
    const pdb = p.storage.openClub(club).db;
    pdb.exec('DROP TRIGGER temp._cluster_guard');
    // As the daemon writes: a signed head, anchored in server.db right after the local commit.
    const identity = testIdentity();
    const signer = { sign: (b: Uint8Array) => signTranscript(identity, b), fingerprint: identity.fingerprint };
    createRecord(pdb, 'persons', { firstName: 'stray', lastName: 'T' }, { scope: { kind: 'all' }, audit: new AuditLog(pdb, club, { signer, anchors: p.storage }), actor: { user: 'admin', ip: '127.0.0.1', session: null } });
    await until('the stray entry anchored', () => (p.storage.server.listAnchors(club).length > 0 ? true : undefined));
    assert.ok((pdb.prepare('SELECT count(*) AS n FROM _cluster_capture').get() as { n: number }).n > 0);
    // p takes the club over again: it must rebuild from the log, not serve the stray row.
    await moveTo(p, club);
    assert.deepEqual(names(p, club), acked, `${p.id} serves exactly the log`);
    assert.equal(verifyAuditLog(p.storage.openClub(club).db, club, undefined).ok, true, `change log on ${p.id}`);
    // The rebuilt store is guarded again (a new connection), and writes go on through the log.
    insert(p, club, 'after');
    await p.node.commit(club);
    acked.push('after');
    // The stray entry's anchor went with it: the chain verifies against this server's anchors
    // (was "entry N differs from what was anchored": the new entry N is another one).
    const verifier = { verify: (b: Uint8Array, sig: Uint8Array, fp: string) => fp === identity.fingerprint && verifyTranscript(identity.spki, b, sig) };
    const anchored = verifyAuditLog(p.storage.openClub(club).db, club, verifier, p.storage.server.listAnchors(club));
    assert.equal(anchored.ok, true, `anchors on ${p.id}: ${JSON.stringify(anchored.firstBad)}`);
    await until(`${q.id} caught up`, () => (names(q, club).length === acked.length && q.node.lagOf(club) === 0 ? true : undefined));
    assert.deepEqual(names(q, club), acked, `${q.id}'s replica equals the log`);
    assert.equal(verifyAuditLog(q.storage.openClub(club).db, club, undefined).ok, true, `change log on ${q.id}`);
    assert.throws(() => insert(q, club, 'late'), (e: unknown) => isNotServedWrite(e));
  });
});
