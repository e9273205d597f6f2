/**
 * Issue 14, "Backups are made once per club (by its primary), not by every server": three cluster
 * nodes on real stores and a real 3-member etcd, each with its backup service narrowed by
 * ClusterBackups (daemon/backup/cluster-backups.ts) and one destination they share (a folder, as a
 * network mount or SFTP host would be). A scheduled run on all three makes exactly one archive
 * per club, by its primary; a second run at the same time makes none; after a drain moves a
 * primary, the next scheduled time's archive is made by the new primary and not earlier; an
 * archive made on one member verifies and restores on another that started with nothing but a
 * copy of keys/; a manual run on a member that is not the primary is refused naming the primary.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { ClusterNode } from '../cluster/node.js';
import { generateIdentity, loadIdentity, saveIdentity } from '../crypto/identity.js';
import { openDestination, type BackupDestination } from '../daemon/backup/backup-destinations.js';
import { BackupService } from '../daemon/backup/backup-service.js';
import { ClusterBackups } from '../daemon/backup/cluster-backups.js';
import { nullLogger } from '../daemon/common/log.js';
import { dataPaths } from '../daemon/main/config.js';
import { archiveKeyFor, archiveKeyIds, forgetRetiredArchiveKeys, rotateArchiveKey, serverOpenKey } from '../storage/backup/archive-keys.js';
import { archiveTrust, restoreClubArchive, verifyArchive, type OpenKey } from '../storage/backup/backup-archive.js';
import { BackupError } from '../storage/backup/backup-errors.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage, type Storage } from '../storage/server/storage.js';
import { etcdMissing, type EtcdCluster } from './helpers/etcd.js';
import { makeTemplate, newMemberFolder, startNodeServer, stopNodeServers, useEtcdAndFolder } from './helpers/cluster-nodes.js';
import { until } from './helpers/until.js';

const missing = etcdMissing();

interface Server {
  id: string;
  storage: Storage;
  node: ClusterNode;
  svc: BackupService;
  backups: ClusterBackups;
}

/** Every archive put, by which server: (server id, archive name). */
const puts: Array<{ server: string; name: string }> = [];

/** The shared destination, recording each put with the server that made it. */
function recording(server: string, inner: BackupDestination): BackupDestination {
  return {
    name: inner.name,
    kind: inner.kind,
    put: async (name, file, sha) => {
      await inner.put(name, file, sha);
      puts.push({ server, name });
    },
    list: (c) => inner.list(c),
    get: (n) => inner.get(n),
    delete: (n) => inner.delete(n),
    close: () => inner.close(),
  };
}

describe('cluster backups: once per club, by its primary', { skip: missing }, () => {
  let etcd: EtcdCluster;
  let root: string;
  let shared: string;
  const servers: Server[] = [];
  /** The test's clock for the backup services (the schedule is 02:30 UTC). */
  let clock = new Date();

  useEtcdAndFolder(
    'cluster-backups',
    (e, r) => {
      etcd = e;
      root = r;
      shared = join(root, 'archives');
      mkdirSync(shared, { mode: 0o700 });
    },
    async () => {
      for (const s of servers) {
        await s.svc.close().catch(() => undefined);
        await s.backups.stop().catch(() => undefined);
      }
      await stopNodeServers(servers);
    },
  );

  const start = async (id: string, template: string): Promise<Server> => {
    // A new member: the keys/ folder copied (master key, identity key) and an empty server database.
    const dir = newMemberFolder(template, join(root, id));
    const { storage, node } = await startNodeServer({ etcd, id, dir, index: servers.length, prefix: 'bk/', prepare: (st) => void (st.identity = loadIdentity(dataPaths(dir).identityKey)) });
    const dest = recording(id, openDestination({ name: 'shared', kind: 'local', path: shared }, dir));
    const svc = new BackupService({ storage, config: { time: '02:30', timezone: 'UTC', destinations: [{ name: 'shared', kind: 'local', path: shared }] }, destinations: [dest], now: () => clock });
    const backups = await ClusterBackups.start({ node, storage, service: svc, logger: nullLogger(), checkEveryMs: 3_600_000 });
    const s = { id, storage, node, svc, backups };
    servers.push(s);
    return s;
  };

  const primaryOf = (club: string) => servers.find((s) => s.node.route(club).kind === 'serve');
  const scheduledRunEverywhere = () => Promise.all(servers.map((s) => s.svc.runNightly({ scheduled: true })));
  const openKeyOf = (st: Storage): OpenKey => ({ ...serverOpenKey(st), serverKeyring: (id, club) => archiveKeyFor(st, id, club), trust: archiveTrust(st) });

  test('one archive per club by its primary; not repeated; after a move the new primary makes the next one; it opens on another member', async () => {
    const tmpl = await makeTemplate(root);
    saveIdentity(dataPaths(tmpl).identityKey, generateIdentity());
    const [a, b, c] = [await start('bk-a', tmpl), await start('bk-b', tmpl), await start('bk-c', tmpl)];
    const clubs: string[] = [];
    for (let i = 0; i < 4; i++) {
      const { id } = await createClub(a!.storage, { name: `Kapelle ${i}`, adminUser: 'admin', adminPassword: 'correct horse battery', materialize: false });
      await a!.node.registerClub(id);
      clubs.push(id);
    }
    // every club served at one moment (a club may still move while the placement balances)
    const primaries = await until('every club served', () => {
      const now = clubs.map((club) => [club, primaryOf(club)?.id] as const);
      return now.every(([, id]) => id !== undefined) ? new Map(now as Array<readonly [string, string]>) : undefined;
    });
    // the next day, after the 02:30 run time: every club is due once
    const day = new Date();
    clock = new Date(Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate() + 1, 3, 0, 0));
    await scheduledRunEverywhere();
    for (const club of clubs) {
      const made = puts.filter((p) => p.name.startsWith(`${club}/`));
      assert.equal(made.length, 1, `club ${club}: ${made.length} archives (${made.map((m) => m.server).join(', ')})`);
      assert.equal(made[0]!.server, primaries.get(club), `club ${club} archived by ${made[0]!.server}, its primary is ${primaries.get(club)}`);
    }
    assert.equal(puts.length, clubs.length);

    // the same time again: nothing is due, nothing is repeated
    clock = new Date(clock.getTime() + 10 * 60_000);
    await scheduledRunEverywhere();
    assert.equal(puts.length, clubs.length, 'a backup was repeated before the next scheduled time');

    // a manual run of a club on a member that is not its primary is refused, naming the primary
    const club = clubs[0]!;
    const other = servers.find((s) => s.id !== primaries.get(club))!;
    await assert.rejects(other.svc.runNightly({ clubs: [club] }), (e: unknown) => e instanceof BackupError && e.code === 'NOT_PRIMARY' && e.message.includes(primaries.get(club)!));

    // the archive made by the primary verifies and restores on another member (keys/ copied, shared keyring and club key adopted)
    const name = puts.find((p) => p.name.startsWith(`${club}/`))!.name;
    other.backups.syncKeys();
    const dest = other.svc.destination('shared');
    const report = await verifyArchive(await dest.get(name), openKeyOf(other.storage));
    assert.equal(report.origin.trustedAs, 'this-server');
    const target = await openStorage({ dataDir: join(root, 'restore-target'), create: true, scryptLog2N: 10 });
    try {
      const r = await restoreClubArchive(target, club, await dest.get(name), openKeyOf(other.storage), { actor: 'operator:test' });
      assert.equal(r.clubId, club);
      assert.ok((r.tables['users'] ?? 0) >= 1, `restored users: ${JSON.stringify(r.tables)}`);
    } finally {
      target.close();
    }
    // `keys rotate-archive` on one member: every member takes the new current key, and the
    // archive written under the old one still opens (the old key is kept for reading everywhere)
    const rotated = rotateArchiveKey(other.storage);
    await other.svc.scope!.keysRotated();
    for (const s of servers) await until(`${s.id} uses the rotated archive key`, () => (archiveKeyIds(s.storage).current === rotated.newKeyId ? true : undefined));
    const third = servers.find((s) => s !== other && s.id !== primaries.get(club))!;
    third.backups.syncKeys();
    assert.equal((await verifyArchive(await dest.get(name), openKeyOf(third.storage))).origin.trustedAs, 'this-server');
    // forgetting the old key on one member forgets it on all: the archive then opens nowhere
    forgetRetiredArchiveKeys(other.storage, [rotated.oldKeyId]);
    await other.svc.scope!.keysForgotten();
    for (const s of servers) await until(`${s.id} forgot the old archive key`, () => (archiveKeyIds(s.storage).retired.some((r) => r.id === rotated.oldKeyId) ? undefined : true));
    await assert.rejects(verifyArchive(await dest.get(name), openKeyOf(third.storage)), (e: unknown) => e instanceof BackupError);
    // in place, a replicated club is not restored (the standbys would not follow)
    assert.throws(() => primaryOf(club)!.svc.scope!.check(club, 'restore'), (e: unknown) => e instanceof BackupError && e.code === 'UNSUPPORTED_IN_CLUSTER');

    // the primary of `club` is drained: its clubs move; the next run at the same time repeats nothing
    const moved = servers.find((s) => s.id === primaries.get(club))!;
    const movedClubs = clubs.filter((x) => primaries.get(x) === moved.id);
    await moved.node.drain(moved.id, true);
    await until(`${moved.id} serves no club`, () => (moved.node.served().length === 0 ? true : undefined));
    const newPrimaries = await until('every club served after the drain', () => {
      const now = clubs.map((x) => [x, primaryOf(x)?.id] as const);
      return now.every(([, id]) => id !== undefined) ? new Map(now as Array<readonly [string, string]>) : undefined;
    });
    for (const x of movedClubs) assert.notEqual(newPrimaries.get(x), moved.id);
    clock = new Date(clock.getTime() + 60 * 60_000);
    await scheduledRunEverywhere();
    assert.equal(puts.length, clubs.length, 'the new primary repeated a backup made earlier the same night');

    // the next night: each club once more, by its primary now (the moved ones by their new primary)
    clock = new Date(clock.getTime() + 24 * 3600_000);
    await scheduledRunEverywhere();
    const second = puts.slice(clubs.length);
    assert.equal(second.length, clubs.length, `second night: ${second.map((p) => `${p.server}:${p.name}`).join(', ')}`);
    for (const x of clubs) {
      const made = second.filter((p) => p.name.startsWith(`${x}/`));
      assert.equal(made.length, 1, `club ${x}: ${made.length} archives the second night`);
      assert.equal(made[0]!.server, newPrimaries.get(x));
    }
    void b;
    void c;
  });
});
