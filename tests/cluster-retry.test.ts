/**
 * The cluster client's retry rule (PROTOCOL.md 6.5, client/retry-rule.ts) against scripted fake
 * servers on a fake clock: a slow takeover or drain longer than the quiet budget is ridden out
 * while the cluster shows progress; a dead cluster is given up after the quiet budget; endless
 * "progress" stops at the cap; a redirect circle is broken by pauses; pauses grow with jitter.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, type ServerAddress } from '../client/cluster-client.js';
import { ClientError, RemoteError } from '../client/errors.js';
import type { Connection } from '../client/connection.js';
import { RetryRule, showsProgress } from '../client/retry-rule.js';

type Answer = 'ok' | Error;
/** A server's behaviour at time t (ms on the fake clock): 'down' refuses connections. */
type Script = (t: number, command: string) => Answer | 'down';

const A: ServerAddress = { host: '127.0.0.2', port: 1000 };
const B: ServerAddress = { host: '127.0.0.3', port: 1000 };
const C: ServerAddress = { host: '127.0.0.4', port: 1000 };
const key = (s: ServerAddress) => `${s.host}:${s.port}`;
const moved = (s: ServerAddress) => new RemoteError('MOVED', `${key(s)} club served by another server`);
const takeover = () => new RemoteError('UNAVAILABLE', 'the club is not served right now (takeover under way); retry shortly');
const refused = () => new ClientError('CONNECT_FAILED', 'connection refused');

function fakeCluster(scripts: Map<string, Script>, o: { retryForMs?: number; retryCapMs?: number; random?: () => number } = {}) {
  let now = 0;
  const pauses: number[] = [];
  const seen: Array<{ t: number; server: string; rk: unknown }> = [];
  const client = new ClusterClient({
    servers: [A, B, C],
    fingerprint: '0'.repeat(64),
    ...o,
    clock: { now: () => now, sleep: async (ms) => void (pauses.push(ms), (now += ms)) },
    connector: async (c) => {
      now += 5; // a connection attempt takes time
      const script = scripts.get(`${c.host}:${c.port}`)!;
      if (script(now, 'connect') === 'down') throw refused();
      let closed = false;
      return {
        get closed() {
          return closed;
        },
        request: async (command: string, body: Record<string, unknown>) => {
          now += 2;
          const a = script(now, command);
          seen.push({ t: now, server: `${c.host}:${c.port}`, rk: body.rk });
          if (a === 'down') {
            closed = true;
            throw new ClientError('CONNECTION_CLOSED', 'closed');
          }
          if (a instanceof Error) throw a;
          return { payload: { ok: true, at: now } };
        },
        close: async () => void (closed = true),
      } as unknown as Connection;
    },
  });
  return { client, pauses, seen, now: () => now };
}

test('a takeover slower than the quiet budget is ridden out while the new owner says a takeover is under way', async () => {
  const scripts = new Map<string, Script>([
    [key(A), () => 'down'], // the old primary, killed
    [key(B), (t) => (t < 45_000 ? takeover() : 'ok')],
    [key(C), (t) => (t < 45_000 ? takeover() : moved(B))],
  ]);
  const f = fakeCluster(scripts);
  const r = await f.client.request('persons.create', { firstName: 'x' }, { mutating: true });
  assert.ok((r.payload as { at: number }).at >= 45_000, 'answered after the takeover');
  assert.equal(new Set(f.seen.map((s) => s.rk)).size, 1, 'one request key for every retry');
});

test('a slow drain (draining owner, then a takeover, then a new owner) longer than the quiet budget gets through with one request key', async () => {
  const scripts = new Map<string, Script>([
    [key(A), (t) => (t < 25_000 ? new RemoteError('SHUTTING_DOWN', 'draining') : t < 50_000 ? takeover() : moved(C))],
    [key(B), (t) => (t < 25_000 ? moved(A) : t < 50_000 ? takeover() : moved(C))],
    [key(C), (t) => (t < 25_000 ? moved(A) : t < 50_000 ? takeover() : 'ok')],
  ]);
  const f = fakeCluster(scripts);
  const r = await f.client.request('persons.update', { id: 1, firstName: 'y' }, { mutating: true });
  assert.ok((r.payload as { at: number }).at >= 50_000);
  assert.equal(new Set(f.seen.map((s) => s.rk)).size, 1);
});

test('with every server down the client gives up after the quiet budget, with the connection error', async () => {
  const scripts = new Map<string, Script>([[key(A), () => 'down'], [key(B), () => 'down'], [key(C), () => 'down']]);
  const f = fakeCluster(scripts, { retryForMs: 30_000 });
  await assert.rejects(f.client.request('persons.list', {}), (e: ClientError) => e.code === 'CONNECT_FAILED');
  assert.ok(f.now() >= 29_000 && f.now() <= 31_000, `gave up at ${f.now()} ms`);
});

test('"progress" that never ends stops at the absolute cap', async () => {
  const scripts = new Map<string, Script>([[key(A), () => takeover()], [key(B), () => takeover()], [key(C), () => takeover()]]);
  const f = fakeCluster(scripts, { retryForMs: 10_000, retryCapMs: 60_000 });
  await assert.rejects(f.client.request('persons.list', {}), (e: RemoteError) => e.code === 'UNAVAILABLE');
  assert.ok(f.now() >= 59_000 && f.now() <= 61_000, `gave up at ${f.now()} ms`);
});

test('a redirect circle is followed with pauses instead of failing after four redirects', async () => {
  const scripts = new Map<string, Script>([
    [key(A), (t, c) => (c === 'connect' ? 'ok' : t < 5_000 ? moved(B) : 'ok')],
    [key(B), (t, c) => (c === 'connect' ? 'ok' : moved(A))],
    [key(C), (t, c) => (c === 'connect' ? 'ok' : moved(A))],
  ]);
  const f = fakeCluster(scripts);
  const r = await f.client.request('persons.list', {});
  assert.ok((r.payload as { at: number }).at >= 5_000);
  assert.ok(f.pauses.length > 0, 'the circle was broken by pauses');
});

test('pauses grow from 50 ms to 1 s with jitter in [d/2, d), and restart after progress', () => {
  const low = new RetryRule(0, { random: () => 0 });
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((t) => low.next(t, false)), [25, 50, 100, 200, 400, 500, 500]);
  assert.equal(low.next(8, true), 25, 'progress restarts the pauses');
  const high = new RetryRule(0, { random: () => 0.999 });
  for (let i = 0; i < 10; i++) {
    const p = high.next(i, false)!;
    assert.ok(p < 1000 && p >= 49);
  }
  const quiet = new RetryRule(0, { quietMs: 1000, capMs: 5000, random: () => 0 });
  assert.equal(quiet.next(990, false), undefined, 'no pause past the quiet budget');
  const cap = new RetryRule(0, { quietMs: 1000, capMs: 2000, random: () => 0 });
  cap.progress(1500);
  assert.equal(cap.deadline(), 2000, 'progress never moves past the cap');
  assert.equal(showsProgress(moved(A), key(A), key(A)), false, 'the same owner again is no progress');
  assert.equal(showsProgress(moved(B), key(A), key(B)), true);
  assert.equal(showsProgress(refused(), undefined, undefined), false);
  assert.equal(showsProgress(new RemoteError('UNAVAILABLE', 'the club is not served right now; retry shortly'), undefined, undefined), false);
});
