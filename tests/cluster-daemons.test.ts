/**
 * Issue 14, must-show 1, 2, 3 and 4 at the daemon level: a 3-member etcd and three commusicd
 * processes on 127.0.0.2, .3 and .4 (one identity key: the keys/ folder copied), clubs created
 * through one member's control socket, clients that take the list of all three servers and follow
 * redirects. A primary is killed with SIGKILL: every write the clients saw acknowledged is
 * present afterwards (a document too, with equal content) (against the clients' own log), none twice, the change log verifies on the
 * new primary, and the clubs answer again within 30 s. A ban made on one server closes the
 * source's sessions on the other two and ends on all of them. A fourth server added under load
 * receives clubs; a drained server hands every club over and stops; the clients see nothing but
 * redirects and retries. The CLI with a server list gets through a dead server and a redirect.
 * Failed logins spread round-robin over three servers ban the source after the same total count
 * as on one server (the counts are shared), and the ban closes its sessions on all of them.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ClusterClient, parseServerList } from '../client/cluster-client.js';
import { connect } from '../client/connection.js';
import { generateIdentity, saveIdentity } from '../crypto/identity.js';
import { dataPaths } from '../daemon/main/config.js';
import { runOperation } from '../daemon/ops/offline.js';
import { openStorage } from '../storage/server/storage.js';
import { etcdMissing, freePort, startEtcdCluster, type EtcdCluster } from './helpers/etcd.js';
import { reapWithThisProcess } from './helpers/reaper.js';

const missing = etcdMissing();
const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'bin');
const PASSWORD = 'Admin-Password-123';

/**
 * Reads every test person of `club` back through `client` (100 per page: one record holds a page)
 * and asserts each acknowledged write is there exactly once.
 */
async function assertAckedOnce(client: ClusterClient, club: string, acked: string[]): Promise<void> {
  const names: string[] = [];
  let cursor: string | null | undefined;
  do {
    const r = await client.request('persons.list', { limit: 100, ...(cursor ? { cursor } : {}) });
    const page = r.payload as { items: Array<{ firstName: string; lastName: string }>; nextCursor: string | null };
    names.push(...page.items.filter((p) => p.lastName === 'T').map((p) => p.firstName));
    cursor = page.nextCursor;
  } while (cursor);
  assert.equal(new Set(names).size, names.length, `club ${club}: a write was applied twice`);
  for (const tag of acked) assert.ok(names.includes(tag), `club ${club}: acknowledged ${tag} missing`);
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}


interface Member {
  id: string;
  host: string;
  port: number;
  dir: string;
  child: ChildProcess;
  out: string[];
}

interface Status {
  members: Array<{ id: string; address: string; state: string }>;
  clubs: Array<{ id: string; primary: string | null; standbys: string[]; lag: number | null }>;
}

describe('three commusicd processes on one etcd', { skip: missing }, () => {
  let etcd: EtcdCluster;
  let root: string;
  let fingerprint: string;
  const members: Member[] = [];

  const spawnMember = (m: Omit<Member, 'child' | 'out'>): Member => {
    const out: string[] = [];
    const child = spawn(
      process.execPath,
      [join(BIN, 'commusicd.js'), '--data', m.dir, '--listen', `${m.host}:${m.port}`, '--health-listen', `${m.host}:0`, '--log-level', 'warn', '--cluster-etcd', etcd.endpoints.join(','), '--node-id', m.id],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child.stdout!.on('data', (b: Buffer) => out.push(b.toString()));
    child.stderr!.on('data', (b: Buffer) => out.push(b.toString()));
    return { ...m, child, out };
  };

  const status = async (m: Member): Promise<Status> => (await runOperation(m.dir, 'cluster.status', {})).result as Status;

  before(async () => {
    etcd = await startEtcdCluster();
    root = mkdtempSync(join(tmpdir(), 'commusic-cluster-daemons-'));
    reapWithThisProcess(root);
    // One data folder made once; every member gets its keys/ folder (one master key, one identity).
    const tmpl = join(root, 'template');
    (await openStorage({ dataDir: tmpl, create: true, scryptLog2N: 10 })).close();
    const identity = generateIdentity();
    saveIdentity(dataPaths(tmpl).identityKey, identity);
    fingerprint = identity.fingerprint;
    for (let i = 0; i < 3; i++) {
      const host = `127.0.0.${i + 2}`;
      const dir = join(root, `m${i}`);
      mkdirSync(dir, { mode: 0o700 });
      cpSync(join(tmpl, 'keys'), join(dir, 'keys'), { recursive: true });
      cpSync(join(tmpl, 'server.db'), join(dir, 'server.db'));
      members.push(spawnMember({ id: `n${i}`, host, port: await freePort(host), dir }));
    }
    for (const m of members) {
      await until(`member ${m.id} joined`, async () => {
        if (m.child.exitCode !== null) throw new Error(`member ${m.id} exited: ${m.out.join('')}`);
        try {
          return (await status(m)).members.length === 3 ? true : undefined;
        } catch {
          return undefined;
        }
      });
    }
  });

  after(async () => {
    for (const m of members) {
      if (m.child.exitCode === null && m.child.signalCode === null) {
        const exited = new Promise((r) => m.child.once('exit', r));
        m.child.kill('SIGTERM');
        await exited;
      }
    }
    await etcd?.stop();
    if (root) rmSync(root, { recursive: true, force: true });
  });

  test('kill -9 of a primary: every acknowledged write present once, change log verifies, clubs answer again within 30 s', async (t) => {
    const clubs: string[] = [];
    for (let i = 0; i < 4; i++) {
      const { result } = await runOperation(members[0]!.dir, 'club.create', { name: `Musikverein ${i}`, admin: 'admin', password: PASSWORD });
      clubs.push((result as { id: string }).id);
    }
    await until('every club placed and served', async () => {
      const s = await status(members[0]!);
      return clubs.every((c) => s.clubs.find((x) => x.id === c)?.primary) ? s : undefined;
    });
    const servers = parseServerList(members.map((m) => `${m.host}:${m.port}`).join(','));
    // each club's client starts at a different server: requests reach all three and get redirected
    const clients = clubs.map(
      (club, i) =>
        new ClusterClient({
          servers: [...servers.slice(i % 3), ...servers.slice(0, i % 3)],
          fingerprint,
          retryForMs: 30_000,
          login: async (conn) => void (await conn.request('auth.login', { club, user: 'admin', password: PASSWORD })),
        }),
    );
    const acked = new Map<string, string[]>(clubs.map((c) => [c, []]));
    let stop = false;
    let killedAt = 0;
    const answeredAfterKill = new Map<string, number>();
    const failures: string[] = [];
    const writers = clubs.map(async (club, i) => {
      const c = clients[i]!;
      for (let n = 0; !stop; n++) {
        const tag = `w${n}`;
        try {
          await c.request('persons.create', { firstName: tag, lastName: 'T' }, { mutating: true });
          acked.get(club)!.push(tag);
          if (killedAt > 0 && !answeredAfterKill.has(club)) answeredAfterKill.set(club, Date.now() - killedAt);
        } catch (e) {
          failures.push(`${club}: ${(e as Error).message}`);
          return;
        }
      }
    });
    await until('writes on every club', () => (clubs.every((c) => acked.get(c)!.length >= 5) ? true : undefined));
    // A document of the club whose primary is killed next: acknowledged only once its standby
    // holds the file (the peer channel), so it reads back equal from the new primary.
    const docBytes = randomBytes(400_000);
    const up = await clients[0]!.request('documents.upload', { kind: 'other', name: 'Satzung.pdf' }, { upload: docBytes, mutating: true });
    const docId = (up.payload as { document: { id: number } }).document.id;
    const s = await status(members[0]!);
    const victimId = s.clubs.find((x) => x.id === clubs[0])!.primary!;
    const victim = members.find((m) => m.id === victimId)!;
    const victimClubs = s.clubs.filter((x) => x.primary === victimId).map((x) => x.id);
    const exited = new Promise((r) => victim.child.once('exit', r));
    killedAt = Date.now();
    victim.child.kill('SIGKILL');
    await exited;
    await until('every club answered after the kill', () => (clubs.every((c) => answeredAfterKill.has(c)) ? true : undefined), 30_000);
    const countsAtKill = new Map(clubs.map((c) => [c, acked.get(c)!.length]));
    await until('more writes after the takeover', () => (clubs.every((c) => acked.get(c)!.length >= countsAtKill.get(c)! + 5) ? true : undefined), 30_000);
    stop = true;
    await Promise.all(writers);
    assert.deepEqual(failures, []);
    t.diagnostic(`killed ${victimId} (primary of ${victimClubs.length} clubs); first answer after the kill: ${victimClubs.map((c) => answeredAfterKill.get(c)).join(', ')} ms`);
    for (const c of victimClubs) assert.ok(answeredAfterKill.get(c)! < 30_000);
    // every acknowledged write is there once, read back through a client (it lands on the new primary)
    const after = await status(members.find((m) => m !== victim)!);
    for (const [i, club] of clubs.entries()) {
      await assertAckedOnce(clients[i]!, club, acked.get(club)!);
      const primary = members.find((m) => m.id === after.clubs.find((x) => x.id === club)!.primary)!;
      assert.notEqual(primary, victim);
      const v = (await runOperation(primary.dir, 'log.verify', { club })).result as { ok: boolean };
      assert.equal(v.ok, true, `change log of ${club} does not verify on ${primary.id}: ${JSON.stringify(v)}`);
    }
    const down = await clients[0]!.request('documents.download', { id: docId });
    const parts: Buffer[] = [];
    for await (const c of down.download!) parts.push(Buffer.from(c));
    assert.ok(Buffer.concat(parts).equals(docBytes), 'the document reads back equal on the new primary');
    for (const c of clients) await c.close();
  });

  test('a ban made on one server closes the source on the other two within 2 s and ends on all', async (t) => {
    // the killed server comes back (same data folder) and joins again
    for (const [i, m] of members.entries()) {
      if (m.child.exitCode === null && m.child.signalCode === null) continue;
      members[i] = spawnMember({ id: m.id, host: m.host, port: m.port, dir: m.dir });
    }
    for (const m of members) {
      await until(`member ${m.id} back`, async () => {
        try {
          return (await status(m)).members.length === 3 ? true : undefined;
        } catch {
          return undefined;
        }
      });
    }
    const alive = members;
    const source = '127.0.0.77';
    const conns = await Promise.all(alive.map((m) => connect({ host: m.host, port: m.port, fingerprint, localAddress: source })));
    const t0 = Date.now();
    await runOperation(alive[0]!.dir, 'bans.add', { address: source, duration: '4s', reason: 'cluster test' });
    await until('the source is cut off everywhere', () => (conns.every((c) => c.closed) ? true : undefined), 10_000);
    t.diagnostic(`ban made on ${alive[0]!.id}: the source's sessions on all ${alive.length} servers closed after ${Date.now() - t0} ms`);
    // the ban is listed on every member, and ends on all of them
    for (const m of alive) await until(`ban listed on ${m.id}`, async () => (((await runOperation(m.dir, 'bans.list', {})).result as Array<{ address: string }>).some((b) => b.address === source) ? true : undefined), 5000);
    for (const m of alive) {
      await until(`ban ended on ${m.id}`, async () => {
        try {
          const c = await connect({ host: m.host, port: m.port, fingerprint, localAddress: source });
          await c.close();
          return true;
        } catch {
          return undefined;
        }
      }, 15_000);
    }
  });

  test('commusic --server A,B,C tries the servers in turn and follows the redirect to the club\'s server', async () => {
    const { result } = await runOperation(members[0]!.dir, 'club.create', { name: 'Chor CLI', admin: 'admin', password: PASSWORD });
    const club = (result as { id: string }).id;
    const st = await until('the club served', async () => {
      const s = await status(members[0]!);
      return s.clubs.find((x) => x.id === club)?.primary ?? undefined;
    });
    const other = members.find((m) => m.id !== st)!;
    const dead = `127.0.0.9:${await freePort('127.0.0.9')}`;
    // a dead server first, then one that does not serve the club: the CLI must get through
    const list = [dead, `${other.host}:${other.port}`].join(',');
    const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, [join(BIN, 'commusic.js'), '--server', list, '--fingerprint', fingerprint, '--club', club, '--user', 'admin', '--password-stdin', 'call', 'auth.whoami'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      c.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
      c.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
      c.on('exit', (code) => resolve({ code, stdout, stderr }));
      c.stdin!.end(`${PASSWORD}\n`);
    });
    assert.equal(out.code, 0, out.stderr);
    assert.equal((JSON.parse(out.stdout) as { club: string }).club, club);
  });

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
    const dir = join(root, 'm3');
    mkdirSync(dir, { mode: 0o700 });
    cpSync(join(root, 'template', 'keys'), join(dir, 'keys'), { recursive: true });
    cpSync(join(root, 'template', 'server.db'), join(dir, 'server.db'));
    const added = spawnMember({ id: 'n3', host, port: await freePort(host), dir });
    members.push(added);
    await until('the added server is primary of some club', async () => ((await status(members[0]!)).clubs.some((c) => c.primary === 'n3') ? true : undefined), 60_000);
    // drain n1: its clubs move away, then it stops
    await runOperation(members[0]!.dir, 'cluster.drain', { id: 'n1', drained: true });
    await until('n1 holds no club', async () => ((await status(members[0]!)).clubs.every((c) => c.primary !== 'n1' && !c.standbys.includes('n1')) ? true : undefined), 60_000);
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
      60_000,
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

  test('a login to a club no member knows answers as a wrong password does (no club enumeration)', async () => {
    const m = members.find((x) => x.child.exitCode === null && x.child.signalCode === null)!;
    const c = await connect({ host: m.host, port: m.port, fingerprint, localAddress: '127.0.0.79' });
    try {
      const known = await until('a club this member serves', async () => (await status(m)).clubs.find((x) => x.primary === m.id)?.id, 30_000);
      const codeOf = (club: string) => c.request('auth.login', { club, user: 'admin', password: 'wrong-password-1' }).then(() => 'ok', (e: { code?: string; message?: string }) => `${e.code}: ${e.message}`);
      const unknown = await codeOf('cffffffffffffffff');
      assert.match(unknown, /^UNAUTHENTICATED/, 'was UNAVAILABLE: the answer told which club ids exist');
      // The same text as a wrong password for a club that exists (wherever it is served).
      const wrong = await until('a wrong-password answer for a known club', async () => {
        const r = await codeOf(known);
        return r.startsWith('MOVED') || r.startsWith('UNAVAILABLE') ? undefined : r;
      }, 30_000);
      assert.equal(unknown, wrong);
    } finally {
      await c.close().catch(() => undefined);
    }
  });

  test('failed logins spread round-robin over the three servers ban the source at the same total as on one (± N-1), closing its sessions on all', async (t) => {
    // A failed login counts where the club is served (elsewhere it is redirected first): one club
    // per server, so the attempts really are spread over all three.
    // (last in this file: the three servers alive after the drain test, and the clubs it adds)
    const alive = members.filter((m) => m.child.exitCode === null && m.child.signalCode === null);
    assert.equal(alive.length, 3);
    for (let i = 0; i < 6; i++) await runOperation(alive[0]!.dir, 'club.create', { name: `Spielmannszug ${i}`, admin: 'admin', password: PASSWORD });
    await until(
      'a club served by each server',
      async () => {
        const s = await status(alive[0]!);
        return alive.every((m) => s.clubs.some((c) => c.primary === m.id)) ? true : undefined;
      },
      60_000,
    );
    const source = '127.0.0.78';
    const held = await Promise.all(alive.map((m) => connect({ host: m.host, port: m.port, fingerprint, localAddress: source })));
    const MAX_RETRY = 5; // the default policy's login rule
    /** One failed login at `m` for a club it serves; a club that moved meanwhile (MOVED, UNAVAILABLE) is looked up again. */
    const attempt = (m: Member, i: number): Promise<string> =>
      until(`a login answered by ${m.id}`, async () => {
        const club = (await status(m)).clubs.find((c) => c.primary === m.id)?.id;
        if (!club) return undefined;
        let code: string;
        try {
          const c = await connect({ host: m.host, port: m.port, fingerprint, localAddress: source });
          code = await c.request('auth.login', { club, user: 'admin', password: `wrong-${i}` }).then(
            () => 'ok',
            (e: { code?: string }) => e.code ?? String(e),
          );
          await c.close().catch(() => undefined);
        } catch {
          code = 'refused';
        }
        return code === 'MOVED' || code === 'UNAVAILABLE' ? undefined : code;
      }, 60_000);
    let answered = 0;
    for (let i = 0; i < 3 * MAX_RETRY; i++) {
      const m = alive[i % 3]!;
      const code = await attempt(m, i);
      if (code !== 'UNAUTHENTICATED') break;
      answered++;
      // One attempt at a time. The violation is judged before the answer leaves, so the server
      // that answered has the ban in its table now if this attempt made it.
      const verdict = ((await runOperation(m.dir, 'bans.check', { address: source })).result as { verdict: string }).verdict;
      if (verdict === 'banned') break;
    }
    await until('the source cut off on all three servers', () => (held.every((c) => c.closed) ? true : undefined), 5_000);
    t.diagnostic(`failed logins spread over 3 servers before the ban: ${answered} (one server: ${MAX_RETRY}; counted apart: ${3 * MAX_RETRY - 2})`);
    assert.ok(answered >= MAX_RETRY, `banned after ${answered} failed logins, before the policy's ${MAX_RETRY}`);
    assert.ok(answered <= MAX_RETRY + 2, `${answered} failed logins spread over 3 servers before the ban (one server: ${MAX_RETRY})`);
    // the ban is on every server: a new connection from the source is refused everywhere
    for (const m of alive) {
      await until(`the source refused by ${m.id}`, async () => {
        try {
          const c = await connect({ host: m.host, port: m.port, fingerprint, localAddress: source });
          await c.close();
          return undefined;
        } catch {
          return true;
        }
      }, 5_000);
    }
  });
});
