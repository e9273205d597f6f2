// Group commit over the wire (issue 13, point 1: durable persons.update): updates of one club from
// many connections at once are all acknowledged, durable and in the change log's chain; a request
// failing inside a group affects only itself; a daemon killed with SIGKILL during grouped writes
// loses no acknowledged write, and its change log verifies afterwards.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { clubEnv, ADMIN_PASSWORD } from './helpers/club-server.js';
import { connect, type Connection } from '../client/connection.js';
import { RemoteError } from '../client/errors.js';
import { queryAuditLog, verifyAuditLog, type AuditVerifier } from '../storage/club/audit-log.js';
import type { Db } from '../storage/engine/sqlcipher.js';
import { openStorage } from '../storage/server/storage.js';
import { createClub } from '../storage/server/provisioning.js';
import { verifyTranscript } from '../crypto/identity.js';
import { testIdentity } from './helpers/pair.js';
import { tmpDir } from './store-helpers.js';

const verifier: AuditVerifier = { verify: (b, s, fp) => fp === testIdentity().fingerprint && verifyTranscript(testIdentity().spki, b, s) };
const CHILD = join(dirname(fileURLToPath(import.meta.url)), 'group-crash-child.js');

function addPersons(db: Db, n: number): number[] {
  const ins = db.prepare(`INSERT INTO persons ("firstName", "lastName", "photoConsent", "blocked") VALUES (?, 'Muster', 0, 0) RETURNING id`);
  return Array.from({ length: n }, (_, i) => (ins.get(`P${i}`) as { id: number }).id);
}

/** The notes value of every update entry in the log, in order, with its person. */
function loggedUpdates(db: Db): Array<{ recordId: number; value: string }> {
  const out: Array<{ recordId: number; value: string }> = [];
  let after = 0;
  for (;;) {
    const page = queryAuditLog(db, { afterSeq: after, limit: 1000 }).entries;
    if (page.length === 0) return out;
    for (const e of page) if (e.action === 'update') out.push({ recordId: e.recordId!, value: (e.changes as { notes: { new: string } }).notes.new });
    after = page[page.length - 1]!.seq;
  }
}

test('updates from many connections at once: all acknowledged, durable, logged once each in a valid chain; a failing request in a group fails alone', async (t) => {
  const env = await clubEnv();
  t.after(() => env.close());
  const club = await env.newClub();
  const db = env.storage.openClub(club).db;
  const ids = addPersons(db, 6);
  const { connect: open } = await env.listen();
  const conns: Connection[] = [];
  for (let k = 0; k < 6; k++) {
    const c = await open();
    await c.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    conns.push(c);
  }
  t.after(async () => {
    for (const c of conns) await c.close();
  });
  const acked: string[] = [];
  const failures: string[] = [];
  const ROUNDS = 8;
  await Promise.all(conns.map(async (c, k) => {
    for (let r = 0; r < ROUNDS; r++) {
      // Five requests sent in one write: they arrive together and share a group with the other
      // connections' requests; the third names a person that does not exist.
      const batch = [0, 1, 2, 3, 4].map((j) => {
        const value = `c${k}-r${r}-${j}`;
        const id = j === 2 ? 999_999 : ids[k]!;
        return c.request('persons.update', { id, notes: value }).then(
          () => acked.push(value),
          (e: unknown) => failures.push(e instanceof RemoteError ? `${e.code} ${value}` : `other ${String(e)}`),
        );
      });
      await Promise.all(batch);
    }
  }));
  assert.equal(failures.length, 6 * ROUNDS);
  assert.ok(failures.every((f) => f.startsWith('NOT_FOUND ') && f.endsWith('-2')), failures.find((f) => !f.startsWith('NOT_FOUND')));
  assert.equal(acked.length, 6 * ROUNDS * 4);
  const stats = env.storage.openClub(club).writes.stats;
  assert.ok(stats.largest >= 2, `requests were grouped (largest group ${stats.largest})`);
  assert.ok(stats.groups < stats.committed + stats.failed, 'fewer transactions than writes');
  const logged = loggedUpdates(env.storage.openClub(club).db);
  assert.deepEqual(logged.map((l) => l.value).sort(), [...acked].sort(), 'exactly the acknowledged updates are logged, once each');
  for (let k = 0; k < 6; k++) {
    const mine = logged.filter((l) => l.recordId === ids[k]).map((l) => l.value);
    assert.deepEqual(mine, [...mine].sort((a, b) => a.localeCompare(b, 'en', { numeric: true })), 'one connection\'s updates apply in the order sent');
    const row = env.storage.openClub(club).db.prepare('SELECT notes FROM persons WHERE id = ?').get(ids[k]) as { notes: string };
    assert.equal(row.notes, `c${k}-r${ROUNDS - 1}-4`);
  }
  const v = verifyAuditLog(env.storage.openClub(club).db, club, verifier, env.storage.listAnchors(club));
  assert.equal(v.ok, true, JSON.stringify(v.firstBad));
});

test('a write whose request ends (CANCEL, timeout, connection closed) while it waits for its group is not applied', async (t) => {
  const env = await clubEnv();
  t.after(() => env.close());
  const club = await env.newClub();
  const [id] = addPersons(env.storage.openClub(club).db, 1) as [number];
  const session = new Map<string, unknown>();
  const conn = { id: 77, ip: '127.0.0.1', port: 40001 };
  const call = (command: string, payload: unknown, signal = new AbortController().signal) => {
    const p = env.dispatcher.prepare(command, payload, false);
    return Promise.resolve(p.spec.handler(p.payload, { conn, session, signal }));
  };
  await call('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
  const before = queryAuditLog(env.storage.openClub(club).db, { limit: 100 }).entries.length;
  const cancelled = new AbortController();
  const dropped = call('persons.update', { id, notes: 'never' }, cancelled.signal);
  const kept = call('persons.update', { id, notes: 'kept' });
  // The edge aborts the request's signal when a CANCEL arrives in the same read.
  cancelled.abort(new Error('cancel'));
  await assert.rejects(dropped, (e: Error & { code?: string }) => e.code === 'CANCELLED');
  await kept;
  const db = env.storage.openClub(club).db;
  assert.equal((db.prepare('SELECT notes FROM persons WHERE id = ?').get(id) as { notes: string }).notes, 'kept');
  const entries = queryAuditLog(db, { limit: 100 }).entries.slice(before);
  assert.deepEqual(entries.map((e) => (e.changes as { notes?: { new: string } }).notes?.new), ['kept']);
});

test('a daemon killed with SIGKILL during grouped writes keeps every acknowledged write; the change log verifies', async (t) => {
  const { dir, cleanup } = tmpDir();
  t.after(cleanup);
  let storage = await openStorage({ dataDir: dir, create: true, scryptLog2N: 10 });
  const { id: club } = await createClub(storage, { name: 'MV Absturz', adminUser: 'admin', adminPassword: ADMIN_PASSWORD });
  const ids = addPersons(storage.openClub(club).db, 6);
  storage.close();

  const child = spawn(process.execPath, [CHILD, dir, club], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  t.after(() => {
    child.kill('SIGKILL');
    return exited;
  });
  let largest = 0;
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const ready = await new Promise<{ port: number; fingerprint: string; spki: Buffer }>((resolve, reject) => {
    let buf = '';
    child.once('exit', (code) => reject(new Error(`child exited (${code}) before it was ready: ${err}`)));
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) {
        const [kind, a, b, c] = l.split(' ');
        if (kind === 'ready') resolve({ port: Number(a), fingerprint: b!, spki: Buffer.from(c!, 'base64') });
        if (kind === 'stats') largest = Math.max(largest, (JSON.parse(a!) as { largest: number }).largest);
      }
    });
  });
  const conns: Connection[] = [];
  for (let k = 0; k < 6; k++) {
    const c = await connect({ host: '127.0.0.1', port: ready.port, fingerprint: ready.fingerprint });
    await c.request('auth.login', { club, user: 'admin', password: ADMIN_PASSWORD });
    conns.push(c);
  }
  const acked: string[] = [];
  const KILL_AFTER = 150;
  let killed = false;
  const writer = async (c: Connection, k: number, lane: number) => {
    for (let i = 0; !killed; i++) {
      const value = `c${k}-l${lane}-${i}`;
      try {
        await c.request('persons.update', { id: ids[k]!, notes: value });
      } catch {
        return; // the daemon is gone: this one was not acknowledged
      }
      acked.push(value);
      if (acked.length >= KILL_AFTER && !killed) {
        killed = true;
        child.kill('SIGKILL');
      }
    }
  };
  // Four requests in flight per connection, 24 in all.
  await Promise.race([
    Promise.all(conns.flatMap((c, k) => [0, 1, 2, 3].map((lane) => writer(c, k, lane)))),
    new Promise((_, reject) => setTimeout(() => reject(new Error(`no kill within 60 s (${acked.length} acknowledged)`)), 60_000).unref()),
  ]);
  await exited;
  for (const c of conns) await c.close().catch(() => undefined);
  assert.ok(acked.length >= KILL_AFTER);
  assert.ok(largest >= 2, `writes were grouped before the kill (largest group ${largest})`);

  storage = await openStorage({ dataDir: dir });
  try {
    const db = storage.openClub(club).db;
    assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
    const logged = loggedUpdates(db);
    const values = new Set(logged.map((l) => l.value));
    const lost = acked.filter((v) => !values.has(v));
    assert.deepEqual(lost, [], 'no acknowledged write is lost');
    for (let k = 0; k < 6; k++) {
      // The row holds what the last logged update of it wrote: data and log committed together.
      const mine = logged.filter((l) => l.recordId === ids[k]);
      const row = db.prepare('SELECT notes FROM persons WHERE id = ?').get(ids[k]) as { notes: string };
      assert.equal(row.notes, mine[mine.length - 1]!.value);
    }
    const childKey: AuditVerifier = { verify: (m, sig, fp) => fp === ready.fingerprint && verifyTranscript(ready.spki, m, sig) };
    const v = verifyAuditLog(db, club, childKey, storage.listAnchors(club));
    assert.equal(v.ok, true, JSON.stringify(v.firstBad));
    assert.ok(v.signedHeads >= 2, 'heads were signed during the run');
  } finally {
    storage.close();
  }
});
