/**
 * Issue 14, must-show 3 at the daemon level (tests/helpers/cluster-daemons.ts: three commusicd
 * processes on one 3-member etcd): a fourth server added under client load receives clubs; a
 * drained server hands every club over and stops; the clients see nothing but redirects and
 * retries (client/retry-rule.ts rides out a slow drain), and every acknowledged write is there
 * once. Every wait ends on a condition; the bounds are for a loaded machine.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ClusterClient, parseServerList } from '../client/cluster-client.js';
import { runOperation } from '../daemon/ops/offline.js';
import { etcdMissing, freePort } from './helpers/etcd.js';
import { PASSWORD, assertAckedOnce, newMemberFolder, until, useDaemonCluster, type Member } from './helpers/cluster-daemons.js';

const missing = etcdMissing();

describe('adding and draining commusicd processes', { skip: missing }, () => {
  let members: Member[];
  let fingerprint: string;
  let root: string;
  const { status, spawnMember } = useDaemonCluster((cl) => ({ members, fingerprint, root } = cl));

  // Its waits end on conditions; the runner's per-file bound (npm test: 120 s) applies as well.
  test('a server added under load receives clubs; a drained server hands every club over and stops; clients see only redirects', async () => {
    const clubs: string[] = [];
    for (let i = 0; i < 4; i++) clubs.push(((await runOperation(members[0]!.dir, 'club.create', { name: `Orchester ${i}`, admin: 'admin', password: PASSWORD })).result as { id: string }).id);
    await until('the new clubs served', async () => {
      const s = await status(members[0]!);
      return clubs.every((c) => s.clubs.find((x) => x.id === c)?.primary) ? true : undefined;
    });
    const servers = () => parseServerList(members.filter((m) => m.child.exitCode === null && m.child.signalCode === null).map((m) => `${m.host}:${m.port}`).join(','));
    const clients = clubs.map(
      (club) => new ClusterClient({ servers: servers(), fingerprint, login: async (conn) => void (await conn.request('auth.login', { club, user: 'admin', password: PASSWORD })) }),
    );
    const acked = new Map<string, string[]>(clubs.map((c) => [c, []]));
    const failures: string[] = [];
    let stop = false;
    const writers = clubs.map(async (club, i) => {
      for (let n = 0; !stop; n++) {
        try {
          await clients[i]!.request('persons.create', { firstName: `x${n}`, lastName: 'T' }, { mutating: true });
          acked.get(club)!.push(`x${n}`);
        } catch (e) {
          failures.push(`${club}: ${(e as Error).message}`);
          return;
        }
      }
    });
    // a fourth server joins with a copy of the keys/ folder
    const host = '127.0.0.5';
    const dir = newMemberFolder(join(root, 'template'), join(root, 'm3'));
    const added = spawnMember({ id: 'n3', host, port: await freePort(host), dir });
    members.push(added);
    // Bounds below are generous (a loaded machine moves one club a round); each wait ends on its condition.
    await until('the added server is primary of some club', async () => ((await status(members[0]!)).clubs.some((c) => c.primary === 'n3') ? true : undefined), 120_000);
    // drain n1: its clubs move away, then it stops
    // The drain mark is one etcd write with a 5 s budget: on a loaded machine it may need another try.
    await until('the drain recorded', async () => {
      try {
        await runOperation(members[0]!.dir, 'cluster.drain', { id: 'n1', drained: true });
        return true;
      } catch (e) {
        // idempotent: a try that timed out is simply made again
        if (['ETCD_UNAVAILABLE', 'CONTROL_TIMEOUT'].includes((e as { code?: string }).code ?? '')) return undefined;
        throw e;
      }
    }, 120_000);
    await until('n1 holds no club', async () => ((await status(members[0]!)).clubs.every((c) => c.primary !== 'n1' && !c.standbys.includes('n1')) ? true : undefined), 120_000);
    const n1 = members.find((m) => m.id === 'n1')!;
    const exited = new Promise((r) => n1.child.once('exit', r));
    n1.child.kill('SIGTERM');
    await exited;
    const counts = new Map(clubs.map((c) => [c, acked.get(c)!.length]));
    await until(
      'writes go on after the drain',
      () => {
        // A writer stops at its first error other than a followed redirect: say which, not only "timed out".
        assert.deepEqual(failures, [], 'clients saw errors beyond redirects');
        return clubs.every((c) => acked.get(c)!.length >= counts.get(c)! + 3) ? true : undefined;
      },
      120_000,
    );
    stop = true;
    await Promise.all(writers);
    assert.deepEqual(failures, [], 'a client saw more than redirects and retries');
    const st = await status(members[0]!);
    assert.ok(!st.members.some((m) => m.id === 'n1'));
    for (const [i, club] of clubs.entries()) {
      await assertAckedOnce(clients[i]!, club, acked.get(club)!);
    }
    for (const c of clients) await c.close();
  });
});
