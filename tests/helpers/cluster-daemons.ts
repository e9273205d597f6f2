/**
 * Three commusicd processes on one 3-member etcd (issue 14, tests/cluster-daemons.test.ts and
 * tests/cluster-drain.test.ts): 127.0.0.2, .3 and .4, one identity key (the keys/ folder copied).
 * Each test file starts its own, so each stays inside the runner's per-file time bound.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { ClusterClient } from '../../client/cluster-client.js';
import { generateIdentity, saveIdentity } from '../../crypto/identity.js';
import { dataPaths } from '../../daemon/main/config.js';
import { runOperation } from '../../daemon/ops/offline.js';
import { openStorage } from '../../storage/server/storage.js';
import { freePort, startEtcdCluster, type EtcdCluster } from './etcd.js';
import { reapWithThisProcess } from './reaper.js';
import { until as untilCondition } from './until.js';
import { newMemberFolder } from './cluster-nodes.js';

export { newMemberFolder };

export const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin');
export const PASSWORD = 'Admin-Password-123';

/**
 * Reads every test person of `club` back through `client` (100 per page: one record holds a page)
 * and asserts each acknowledged write is there exactly once.
 */
export async function assertAckedOnce(client: ClusterClient, club: string, acked: string[]): Promise<void> {
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

/** until() of tests/helpers/until.ts, its pause growing from 25 to 250 ms (status calls spawn nothing but cost a control-socket round trip each). */
export function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000): Promise<T> {
  return untilCondition(what, probe, timeoutMs, { pauseMs: 25, maxPauseMs: 250 });
}

export interface Member {
  id: string;
  host: string;
  port: number;
  dir: string;
  child: ChildProcess;
  out: string[];
}

export interface Status {
  members: Array<{ id: string; address: string; state: string }>;
  clubs: Array<{ id: string; primary: string | null; standbys: string[]; lag: number | null }>;
}

/**
 * Waits until the placement has nothing left to move: every club has a primary and the members
 * `m` sees as active hold primaries within one of each other (cluster/placement.ts moves a club
 * only while the difference is larger). Tests that hold a plain connection to a club's server call
 * this first: a balancing move closes the club's sessions there (a client follows; a test's bare
 * connection would see "normal close").
 */
export async function settled(status: (m: Member) => Promise<Status>, m: Member, timeoutMs = 60_000): Promise<Status> {
  return until('the placement settled (primaries balanced, every club served)', async () => {
    const s = await status(m);
    const active = s.members.filter((x) => x.state === 'active').map((x) => x.id);
    if (active.length === 0 || s.clubs.some((c) => !c.primary)) return undefined;
    const counts = active.map((id) => s.clubs.filter((c) => c.primary === id).length);
    return Math.max(...counts) - Math.min(...counts) <= 1 ? s : undefined;
  }, timeoutMs);
}

/** The running cluster of one test file. */
export interface DaemonCluster {
  etcd: EtcdCluster;
  root: string;
  fingerprint: string;
  members: Member[];
  spawnMember(m: Omit<Member, 'child' | 'out'>): Member;
  status(m: Member): Promise<Status>;
  stop(): Promise<void>;
}

/**
 * The set-up of a describe block that runs on one cluster: started in before() and handed to
 * `started` (which keeps what the tests use), stopped in after(). Returns the cluster's status()
 * and spawnMember(), usable once before() ran.
 */
export function useDaemonCluster(started: (cl: DaemonCluster) => void): Pick<DaemonCluster, 'status' | 'spawnMember'> {
  let cl: DaemonCluster | undefined;
  before(async () => {
    cl = await startDaemonCluster();
    started(cl);
  });
  after(async () => {
    await cl?.stop();
  });
  return { status: (m) => cl!.status(m), spawnMember: (m) => cl!.spawnMember(m) };
}

/** Starts etcd and three members, and waits until each sees all three. */
export async function startDaemonCluster(): Promise<DaemonCluster> {
  const etcd = await startEtcdCluster();
  const root = mkdtempSync(join(tmpdir(), 'commusic-cluster-daemons-'));
  reapWithThisProcess(root);
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
  const stop = async () => {
    for (const m of members) {
      if (m.child.exitCode === null && m.child.signalCode === null) {
        const exited = new Promise((r) => m.child.once('exit', r));
        m.child.kill('SIGTERM');
        await exited;
      }
    }
    await etcd.stop();
    rmSync(root, { recursive: true, force: true });
  };
  // One data folder made once; every member gets its keys/ folder (one master key, one identity).
  const tmpl = join(root, 'template');
  (await openStorage({ dataDir: tmpl, create: true, scryptLog2N: 10 })).close();
  const identity = generateIdentity();
  saveIdentity(dataPaths(tmpl).identityKey, identity);
  for (let i = 0; i < 3; i++) {
    const host = `127.0.0.${i + 2}`;
    const dir = newMemberFolder(tmpl, join(root, `m${i}`));
    members.push(spawnMember({ id: `n${i}`, host, port: await freePort(host), dir }));
  }
  const c: DaemonCluster = { etcd, root, fingerprint: identity.fingerprint, members, spawnMember, status, stop };
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
  assert.ok(members.length === 3);
  return c;
}
