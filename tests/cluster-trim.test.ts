/**
 * Issue 14: log trimming, snapshots for new and far-behind standbys, and compaction of etcd's
 * history, on real club stores and a real 3-member etcd (servers in one process, joined by the
 * in-process peer channel of tests/helpers/peer-fake.ts):
 * - a club's log is trimmed; a server added later becomes a warm standby from a snapshot plus the
 *   log's tail, its replica equals the primary's; with the other servers killed it serves the
 *   club with every acknowledged write;
 * - trimming keeps every entry a live standby still needs; a standby away while the log was
 *   trimmed past it comes back through a snapshot;
 * - a deleted club's records cannot be read at an older revision (compacted), and the leader's
 *   periodic compaction removes the history of trimmed entries;
 * - a tampered snapshot (bytes, hash, position, another club's) is refused and changes nothing.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { logKeyOf } from '../cluster/club-roles.js';
import { readHead } from '../cluster/club-log.js';
import { ClusterError } from '../cluster/errors.js';
import { headKey, logKey, ownerKey, posKey } from '../cluster/keys.js';
import { firstLogSeq, trimRange } from '../cluster/log-trim.js';
import type { ClusterNodeOptions } from '../cluster/node.js';
import { registryKey } from '../cluster/registry.js';
import { installSnapshot, serveSnapshot } from '../cluster/snapshot.js';
import { clubPageKey } from '../crypto/wrap.js';
import { AuditLog, verifyAuditLog } from '../storage/club/audit-log.js';
import { signTranscript, verifyTranscript } from '../crypto/identity.js';
import { testIdentity } from './helpers/pair.js';
import { createRecord } from '../storage/club/club-data.js';
import { putDocument, readDocumentBuffer } from '../storage/club/documents.js';
import { clubDir } from '../storage/club/club-store.js';
import { openEncrypted, type Db } from '../storage/engine/sqlcipher.js';
import { createClub } from '../storage/server/provisioning.js';
import type { Storage } from '../storage/server/storage.js';
import { etcdMissing, type EtcdCluster } from './helpers/etcd.js';
import { makeTemplate, newMemberFolder, startNodeServer, stopNodeServers, useEtcdAndFolder, type NodeServer } from './helpers/cluster-nodes.js';
import { createPeerHub, payloadBytes, payloadOf, type PeerHub } from './helpers/peer-fake.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();

describe('trim range (pure)', () => {
  test('never past a standby that is inside the log; standbys without a position or behind the start do not hold it back; bounded', () => {
    const base = { keepEntries: 5, maxDeletes: 1000 };
    assert.deepEqual(trimRange({ ...base, head: 100, first: 1, standbys: [] }), { from: 1, through: 95 });
    assert.deepEqual(trimRange({ ...base, head: 100, first: 1, standbys: [40, 90] }), { from: 1, through: 35 });
    assert.equal(trimRange({ ...base, head: 100, first: 36, standbys: [40] }), undefined);
    // a standby whose position is below the start of the log needs a snapshot anyway
    assert.deepEqual(trimRange({ ...base, head: 100, first: 50, standbys: [10, undefined] }), { from: 50, through: 95 });
    // position first-1 still follows from `first`: it holds trimming
    assert.equal(trimRange({ ...base, head: 100, first: 50, standbys: [49] }), undefined);
    assert.deepEqual(trimRange({ ...base, maxDeletes: 10, head: 100, first: 1, standbys: [] }), { from: 1, through: 10 });
    assert.equal(trimRange({ ...base, head: 100, first: undefined, standbys: [] }), undefined);
    // at least one entry stays
    assert.deepEqual(trimRange({ keepEntries: 0, maxDeletes: 1000, head: 10, first: 1, standbys: [] }), { from: 1, through: 9 });
  });
});

type Server = NodeServer;

interface Event {
  node: string;
  event?: unknown;
  clubId?: unknown;
}

describe('log trimming, snapshots and compaction', { skip: missing }, () => {
  let etcd: EtcdCluster;
  let root: string;
  let live: Server[] = [];
  const events: Event[] = [];

  const logger = (node: string) => ({
    info: (_m: string, meta?: Record<string, unknown>) => void events.push({ node, ...meta }),
    warn: (_m: string, meta?: Record<string, unknown>) => void events.push({ node, ...meta }),
  });
  const installed = (node: string, club: string) => events.filter((e) => e.node === node && e.event === 'cluster.snapshot.installed' && e.clubId === club).length;

  const template = (): Promise<string> => makeTemplate(root);
  // Writes sign the change log's head (every SIGN_EVERY entries, as the daemon's do), so the
  // snapshots carry signed heads and their check needs the identity's public key (a snapshot
  // verified without it was refused for good: a replica behind the trimmed log never returned).
  const identity = testIdentity();
  const signer = { sign: (b: Uint8Array) => signTranscript(identity, b), fingerprint: identity.fingerprint };
  const verifier = { verify: (b: Uint8Array, sig: Uint8Array, fp: string) => fp === identity.fingerprint && verifyTranscript(identity.spki, b, sig) };

  /** A server: the template's keys and server database (a new server), or an existing storage (a restart). */
  const start = async (id: string, tmpl: string, prefix: string, hub: PeerHub, extra: Partial<ClusterNodeOptions> = {}, existing?: Storage): Promise<Server> => {
    const dir = existing ? join(root, id) : newMemberFolder(tmpl, join(root, id));
    const options = { peers: hub.transport(id), logKeepEntries: 5, trimEveryMs: 150, publishEveryMs: 50, logger: logger(id), auditVerifier: () => verifier, ...extra };
    const s = await startNodeServer({ etcd, id, dir, index: live.length, prefix, options, ...(existing ? { storage: existing } : {}) });
    live.push(s);
    return s;
  };

  const stopAll = async () => {
    await stopNodeServers(live);
    live = [];
  };

  useEtcdAndFolder('cluster-trim', (e, r) => ((etcd = e), (root = r)), stopAll);

  const primaryOf = (club: string, among: Server[]) => among.find((s) => s.node.route(club).kind === 'serve');

  const write = async (s: Server, club: string, tag: string): Promise<void> => {
    const db = s.storage.openClub(club).db;
    createRecord(db, 'persons', { firstName: tag, lastName: 'T' }, { scope: { kind: 'all' }, audit: new AuditLog(db, club, { signer }), actor: { user: 'admin', ip: '127.0.0.1', session: null } });
    await s.node.commit(club);
  };

  /** Write through whichever server serves the club (a refusal while it moves is retried there). */
  const writeN = async (club: string, among: Server[], n: number, prefix: string, acked: string[]): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const tag = `${prefix}${i}`;
      await until(`write ${tag}`, async () => {
        const s = primaryOf(club, among);
        if (!s) return undefined;
        try {
          await write(s, club, tag);
          return true;
        } catch (e) {
          if (e instanceof ClusterError) return undefined;
          throw e;
        }
      });
      acked.push(tag);
    }
  };

  const newClub = async (s: Server, name: string): Promise<string> => {
    const { id } = await createClub(s.storage, { name, adminUser: 'admin', adminPassword: 'correct horse battery', materialize: false });
    await s.node.registerClub(id);
    return id;
  };

  /** Every user table of a store, rows by rowid (what a replica must equal). */
  const dump = (db: Db): Record<string, unknown[]> => {
    const out: Record<string, unknown[]> = {};
    const tables = db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cluster\\_%' ESCAPE '\\' ORDER BY name`).all() as Array<{ name: string }>;
    for (const { name } of tables) out[name] = db.prepare(`SELECT rowid AS _rowid_, * FROM "${name}" ORDER BY rowid`).all();
    return out;
  };
  const names = (db: Db) => (db.prepare(`SELECT firstName FROM persons WHERE lastName = 'T' ORDER BY id`).all() as Array<{ firstName: string }>).map((r) => r.firstName);
  const replicaSeq = (s: Server, club: string) => Number((s.storage.openClub(club, { allowSuspended: true }).db.prepare(`SELECT v FROM _cluster_state WHERE k = 'seq'`).get() as { v: string } | undefined)?.v ?? 0);

  test('a new standby starts from a snapshot of a trimmed log (with the document files its rows name), equals the primary, and serves after the others die', async () => {
    const hub = createPeerHub();
    const tmpl = await template();
    const a = await start('trim-a', tmpl, 'tr1/', hub, { standbys: 2 });
    const b = await start('trim-b', tmpl, 'tr1/', hub, { standbys: 2 });
    const club = await newClub(a, 'Verein Trim');
    await until('club served', () => primaryOf(club, [a, b]));
    // A document stored before the log is trimmed: the snapshot has its row, not its file.
    const content = randomBytes(100_000);
    const docId = await until('a document stored', async () => {
      const s = primaryOf(club, [a, b]);
      if (!s) return undefined;
      try {
        const info = await putDocument(s.storage, club, Readable.from([content]), { kind: 'other', name: 'Satzung.pdf' });
        await s.node.commit(club);
        return info.id;
      } catch (e) {
        if (e instanceof ClusterError) return undefined;
        throw e;
      }
    });
    const acked: string[] = [];
    await writeN(club, [a, b], 60, 'w', acked);
    // trimmed down to the margin behind the head (the standby keeps up)
    const gw = a.node.gw;
    await until('log trimmed', async () => {
      const [first, head] = [await firstLogSeq(gw, club), await readHead(gw, club)];
      return first !== undefined && first > 30 && head.seq - first < 20 ? true : undefined;
    });
    const c = await start('trim-c', tmpl, 'tr1/', hub, { standbys: 2 });
    await until('the new server is a caught-up standby', async () => {
      const head = await readHead(gw, club);
      return c.node.lagOf(club) === 0 && replicaSeq(c, club) === head.seq ? true : undefined;
    });
    assert.ok(installed('trim-c', club) >= 1, 'the new standby did not start from a snapshot');
    assert.ok(hub.pulls.some((p) => p.from === 'trim-c' && p.kind === 'snapshot' && p.served));
    // more writes reach it through the log's tail
    await writeN(club, [a, b, c], 10, 'x', acked);
    const p = await until('the club served', () => primaryOf(club, [a, b, c]));
    await until('the new standby follows the tail', () => (replicaSeq(c, club) === replicaSeq(p, club) && c.node.lagOf(club) === 0 ? true : undefined));
    if (p !== c) {
      assert.deepEqual(dump(c.storage.openClub(club, { allowSuspended: true }).db), dump(p.storage.openClub(club).db));
    }
    assert.equal(verifyAuditLog(c.storage.openClub(club, { allowSuspended: true }).db, club, verifier).ok, true);
    // every other server dies: the new one serves with nothing lost
    for (const s of [a, b]) await s.node.crash();
    await until('the new server serves the club', () => primaryOf(club, [c]), 60_000);
    const db = c.storage.openClub(club).db;
    assert.deepEqual(names(db), acked);
    assert.equal(verifyAuditLog(db, club, verifier).ok, true);
    await writeN(club, [c], 1, 'after', acked);
    assert.deepEqual(names(c.storage.openClub(club).db), acked);
    assert.deepEqual(await readDocumentBuffer(c.storage, club, docId), content, 'the document file came with the snapshot install (was DOC_NOT_FOUND)');
    await stopAll();
  });

  test("trimming keeps what a live standby still needs; a standby away while the log was trimmed past it returns through a snapshot", async () => {
    const hub = createPeerHub();
    const tmpl = await template();
    const a = await start('lag-a', tmpl, 'tr2/', hub);
    const b = await start('lag-b', tmpl, 'tr2/', hub);
    const club = await newClub(a, 'Verein Lag');
    await until('club served', () => primaryOf(club, [a, b]));
    const acked: string[] = [];
    await writeN(club, [a, b], 20, 'w', acked);
    const p = await until('the club served', () => primaryOf(club, [a, b]));
    const s = p === a ? b : a;
    const gw = p.node.gw;
    const published = async () => {
      const r = await gw.kv.get(posKey(club, s.id)).string();
      return r ? (JSON.parse(r) as { seq: number }).seq : undefined;
    };
    const head0 = await readHead(gw, club);
    await until('standby position published at the head', async () => ((await published()) === head0.seq ? true : undefined));
    // the standby stops applying (its store is locked) but stays a live member with its position
    const release = s.storage.cache.lock(club);
    const held = (await published())!;
    await writeN(club, [p], 40, 'x', acked);
    const rounds = p.node.upkeep.trimRounds;
    await until('three more trim rounds', () => (p.node.upkeep.trimRounds >= rounds + 3 ? true : undefined));
    const first = await firstLogSeq(gw, club);
    assert.ok(first !== undefined && first <= held + 1, `entry ${held + 1} the standby needs was trimmed (log starts at ${first})`);
    release();
    await until('the standby catches up from the log', async () => ((await published()) === (await readHead(gw, club)).seq && s.node.lagOf(club) === 0 ? true : undefined));
    assert.equal(installed(s.id, club), 0, 'the standby took a snapshot although the log still had its entries');
    assert.deepEqual(dump(s.storage.openClub(club, { allowSuspended: true }).db), dump(p.storage.openClub(club).db));
    await until('the log trimmed again', async () => ((await firstLogSeq(gw, club))! > held + 1 ? true : undefined));

    // the standby leaves; the log is trimmed past its position; it comes back through a snapshot
    const storage = s.storage;
    const away = replicaSeq(s, club);
    await s.node.stop();
    live = live.filter((x) => x !== s);
    await writeN(club, [p], 30, 'y', acked);
    await until('log trimmed past the departed standby', async () => ((await firstLogSeq(gw, club))! > away + 1 ? true : undefined));
    const back = await start(s.id, tmpl, 'tr2/', hub, {}, storage);
    await until('the returning standby catches up', async () => (back.node.lagOf(club) === 0 && replicaSeq(back, club) === (await readHead(gw, club)).seq ? true : undefined));
    assert.ok(installed(s.id, club) >= 1, 'the returning standby did not take a snapshot');
    const rdb = back.storage.openClub(club, { allowSuspended: true }).db;
    assert.deepEqual(names(rdb), acked);
    assert.deepEqual(dump(rdb), dump(p.storage.openClub(club).db));
    assert.equal(verifyAuditLog(rdb, club, verifier).ok, true);
    await stopAll();
  });

  test('a tampered snapshot is refused (bytes, hash, position, another club, a trigger of its own) and changes nothing', async () => {
    const hub = createPeerHub();
    const tmpl = await template();
    const a = await start('tam-a', tmpl, 'tr3/', hub);
    const b = await start('tam-b', tmpl, 'tr3/', hub);
    const club = await newClub(a, 'Verein Echt');
    const other = await newClub(a, 'Verein Anders');
    await until('clubs served', () => (primaryOf(club, [a, b]) && primaryOf(other, [a, b]) ? true : undefined));
    const acked: string[] = [];
    await writeN(club, [a, b], 12, 'w', acked);
    await writeN(other, [a, b], 3, 'o', []);
    const p = await until('the club served', () => primaryOf(club, [a, b]));
    const s = p === a ? b : a;
    await until('standby caught up', async () => (replicaSeq(s, club) === (await readHead(p.node.gw, club)).seq ? true : undefined));
    const genuine = (await serveSnapshot(p.storage, club))!;
    const bytes = await payloadBytes(genuine);
    const meta = genuine.meta!;
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    assert.equal(sha(bytes), genuine.sha256);
    const before = dump(s.storage.openClub(club, { allowSuspended: true }).db);
    const seqBefore = replicaSeq(s, club);
    const o = { storage: s.storage, gw: s.node.gw, club, logKey: logKeyOf(s.storage, club), logger: logger(s.id) };
    const refused = async (what: string, payload: ReturnType<typeof payloadOf>) =>
      assert.rejects(installSnapshot(o, payload), (e: unknown) => e instanceof ClusterError && e.code === 'SNAPSHOT_INVALID', what);

    const flipped = Buffer.from(bytes);
    flipped[Math.floor(flipped.length / 2)]! ^= 0x01;
    await refused('a changed byte under the declared hash', payloadOf(flipped, flipped.length, genuine.sha256, meta));
    await refused('a changed byte with a matching hash', payloadOf(flipped, flipped.length, sha(flipped), meta));
    await refused('a truncated file', payloadOf(bytes.subarray(0, bytes.length - 4096), bytes.length, genuine.sha256, meta));
    await refused('a declared position one lower', payloadOf(bytes, bytes.length, genuine.sha256, { ...meta, seq: (meta.seq as number) - 1 }));
    await refused('no position', payloadOf(bytes, bytes.length, genuine.sha256, {}));
    // a well-formed store whose recorded position is not in the log
    const forged = join(root, `forged-${randomBytes(4).toString('hex')}.db`);
    writeFileSync(forged, bytes);
    const keys = s.storage.clubKeys(s.storage.server.mustGetClub(club));
    const fdb = openEncrypted(forged, clubPageKey(keys[0]!.key), { journalMode: 'keep' });
    const fakeDigest = randomBytes(32).toString('hex');
    fdb.prepare(`UPDATE _cluster_state SET v = ? WHERE k = 'digest'`).run(fakeDigest);
    fdb.close();
    const fb = readFileSync(forged);
    await refused('a position that is not in the log', payloadOf(fb, fb.length, sha(fb), { ...meta, digest: fakeDigest }));
    // a genuine store with a trigger of the sender's own added (it would run on this server's writes)
    const planted = join(root, `planted-${randomBytes(4).toString('hex')}.db`);
    writeFileSync(planted, bytes);
    const pdb = openEncrypted(planted, clubPageKey(keys[0]!.key), { journalMode: 'keep' });
    pdb.exec('CREATE TRIGGER planted AFTER INSERT ON audit_log BEGIN DELETE FROM users; END');
    pdb.close();
    const pb = readFileSync(planted);
    // (with the change log's verifier, so the change log verifies and only the trigger is wrong)
    await assert.rejects(installSnapshot({ ...o, auditVerifier: verifier }, payloadOf(pb, pb.length, sha(pb), meta)), (e: unknown) => e instanceof ClusterError && e.code === 'SNAPSHOT_INVALID' && /trigger "planted"/.test(e.message), "a trigger of the sender's own");
    // another club's snapshot does not open under this club's key
    const foreign = (await serveSnapshot(primaryOf(other, [a, b])!.storage, other))!;
    const fbytes = await payloadBytes(foreign);
    await refused("another club's snapshot", payloadOf(fbytes, fbytes.length, foreign.sha256, foreign.meta));
    // nothing changed, nothing left behind
    assert.equal(replicaSeq(s, club), seqBefore);
    assert.deepEqual(dump(s.storage.openClub(club, { allowSuspended: true }).db), before);
    assert.deepEqual(readdirSync(clubDir(s.storage.dataDir, club)).filter((n) => n.startsWith('.snapshot-')), []);
    assert.deepEqual(readdirSync(clubDir(p.storage.dataDir, club)).filter((n) => n.startsWith('.snapshot-')), []);
    await stopAll();
  });

  test("a deleted club's records are gone from etcd's history; periodic compaction removes trimmed entries' history", async () => {
    const hub = createPeerHub();
    const tmpl = await template();
    const a = await start('cmp-a', tmpl, 'tr4/', hub, { compactAfterMs: 300, compactEveryMs: 100 });
    const club = await newClub(a, 'Verein Weg');
    await until('club served', () => primaryOf(club, [a]));
    const gw = a.node.gw;
    // entry 1 exists at this revision; trimming deletes it, compaction then removes that history
    const withEntry1 = await gw.revision();
    assert.ok((await gw.kv.get(logKey(club, 1)).revision(withEntry1).buffer()) !== null);
    await writeN(club, [a], 20, 'w', []);
    await until('log trimmed', async () => (((await firstLogSeq(gw, club)) ?? 0) > 1 ? true : undefined));
    const afterTrim = await gw.revision();
    await until('compacted past the trim', () => (BigInt(a.node.upkeep.compactor!.compactedAt) >= BigInt(afterTrim) ? true : undefined));
    await assert.rejects(gw.kv.get(logKey(club, 1)).revision(withEntry1).exec(), /compacted/);

    const other = await newClub(a, 'Verein Geloescht');
    await until('club served', () => primaryOf(other, [a]));
    await writeN(other, [a], 5, 'd', []);
    const rev = await gw.revision();
    const last = logKey(other, (await readHead(gw, other)).seq);
    for (const k of [registryKey(other), ownerKey(other), headKey(other), last]) {
      assert.ok((await gw.kv.get(k).revision(rev).buffer()) !== null, `${k} readable before the delete`);
    }
    await a.node.forgetClub(other);
    for (const k of [registryKey(other), ownerKey(other), headKey(other), last]) {
      await assert.rejects(gw.kv.get(k).revision(rev).exec(), /compacted/, `${k} still readable at revision ${rev}`);
      assert.equal(await gw.kv.get(k).buffer(), null);
    }
    await stopAll();
  });
});
