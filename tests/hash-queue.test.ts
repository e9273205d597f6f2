import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HashQueue } from '../crypto/hash-queue.js';
import { CryptoError } from '../crypto/errors.js';
import { passwordHashQueue, verifyPassword, hashPassword } from '../crypto/password.js';

/** A fake hasher: each job records that it started and finishes when the test says so. */
function fakeHasher() {
  const started: string[] = [];
  const finish = new Map<string, () => void>();
  return {
    started,
    job(name: string) {
      return () =>
        new Promise<string>((resolve) => {
          started.push(name);
          finish.set(name, () => resolve(name));
        });
    },
    finish(name: string) {
      const f = finish.get(name);
      assert.ok(f, `${name} has not started`);
      finish.delete(name);
      f();
    },
  };
}

const flush = () => new Promise<void>((r) => setImmediate(r));
const code = (c: string) => (e: unknown) => e instanceof CryptoError && e.code === c;

test('hash queue: round-robin between sources, not first come first served', async () => {
  const q = new HashQueue(1, 100);
  const h = fakeHasher();
  const done: Promise<string>[] = [];
  // The flood: 10 jobs of one source queued first, then one job each of two other sources.
  for (let i = 0; i < 10; i++) done.push(q.run(h.job(`a${i}`), { source: '127.0.0.32' }));
  done.push(q.run(h.job('b0'), { source: '127.0.0.33' }));
  done.push(q.run(h.job('c0'), { source: '127.0.0.34' }));
  assert.deepEqual(h.started, ['a0']);
  assert.equal(q.queued(), 11);
  assert.equal(q.queued('127.0.0.32'), 9);
  for (let i = 0; i < 4; i++) {
    h.finish(h.started.at(-1)!);
    await flush();
  }
  // After the running a0: one job per source in turn. b0 and c0 do not wait for a1..a9.
  assert.deepEqual(h.started, ['a0', 'a1', 'b0', 'c0', 'a2']);
  while (h.started.length < 12 || q.active > 0) {
    h.finish(h.started.at(-1)!);
    await flush();
  }
  assert.deepEqual(await Promise.all(done), ['a0', 'a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7', 'a8', 'a9', 'b0', 'c0']);
  assert.equal(q.queued(), 0);
});

test('hash queue: a source may have perSourceQueued jobs waiting; one more is HASH_BUSY, others are not affected', async () => {
  const q = new HashQueue(0, 4);
  const h = fakeHasher();
  const waiting = [0, 1, 2, 3].map((i) => q.run(h.job(`a${i}`), { source: 'A' }));
  await assert.rejects(q.run(h.job('a4'), { source: 'A' }), code('HASH_BUSY'));
  const b = q.run(h.job('b0'), { source: 'B' });
  assert.equal(q.queued('A'), 4);
  assert.equal(q.queued('B'), 1);
  // Work without a source (operator, provisioning of many clubs) is one share, not capped.
  const own = [0, 1, 2, 3, 4, 5].map((i) => q.run(h.job(`o${i}`)));
  assert.equal(q.queued(''), 6);
  q.setConcurrency(11);
  await flush();
  const all = ['a0', 'a1', 'a2', 'a3', 'b0', 'o0', 'o1', 'o2', 'o3', 'o4', 'o5'];
  assert.deepEqual([...h.started].sort(), [...all].sort());
  for (const n of all) h.finish(n);
  await Promise.all([...waiting, b, ...own]);
});

test('hash queue: an aborted waiting job leaves the queue unhashed; a running one finishes but its result is discarded', async () => {
  const q = new HashQueue(1, 100);
  const h = fakeHasher();
  const running = new AbortController();
  const queued = new AbortController();
  const first = q.run(h.job('first'), { source: 'A', signal: running.signal });
  const dropped = q.run(h.job('dropped'), { source: 'A', signal: queued.signal });
  const other = q.run(h.job('other'), { source: 'B' });
  assert.equal(q.queued(), 2);
  queued.abort();
  await assert.rejects(dropped, code('HASH_CANCELLED'));
  assert.equal(q.queued(), 1);
  running.abort();
  await flush();
  assert.equal(q.active, 1, 'a running hash cannot be stopped: it keeps its slot until it ends');
  h.finish('first');
  await assert.rejects(first, code('HASH_CANCELLED'));
  await flush();
  h.finish('other');
  assert.equal(await other, 'other');
  assert.deepEqual(h.started, ['first', 'other'], 'the dropped job was never hashed');
  // Already aborted: refused before it queues.
  await assert.rejects(q.run(h.job('late'), { signal: running.signal }), code('HASH_CANCELLED'));
  assert.deepEqual(h.started, ['first', 'other']);
});

test('verifyPassword and hashPassword wait in the shared fair queue and honour the signal', async () => {
  const encoded = await hashPassword('ein-Passwort-123', 10);
  passwordHashQueue.setConcurrency(0);
  try {
    const ac = new AbortController();
    const p = verifyPassword('ein-Passwort-123', encoded, { source: '127.0.0.40', signal: ac.signal });
    const ok = verifyPassword('ein-Passwort-123', encoded, { source: '127.0.0.41' });
    assert.equal(passwordHashQueue.queued('127.0.0.40'), 1);
    ac.abort();
    await assert.rejects(p, code('HASH_CANCELLED'));
    assert.equal(passwordHashQueue.queued('127.0.0.40'), 0);
    passwordHashQueue.setConcurrency(2);
    assert.equal(await ok, true);
  } finally {
    passwordHashQueue.setConcurrency(2);
  }
});

test('the daemon queues an IPv6 client under its /64, an IPv4 client under its address', async () => {
  const { hashSourceOf } = await import('../daemon/club/password-work.js');
  assert.equal(hashSourceOf('2001:db8:1:2::5'), hashSourceOf('2001:db8:1:2:ffff::9'));
  assert.notEqual(hashSourceOf('2001:db8:1:2::5'), hashSourceOf('2001:db8:1:3::5'));
  assert.equal(hashSourceOf('127.0.0.32'), '127.0.0.32');
  assert.notEqual(hashSourceOf('127.0.0.32'), hashSourceOf('127.0.0.33'));
});

test('limits.passwordHashConcurrency and limits.passwordHashQueuedPerSource size the queue of a started server', { timeout: 60_000 }, async () => {
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { loadConfig } = await import('../daemon/main/config.js');
  const { startServer } = await import('../daemon/main/main.js');
  const { nullLogger } = await import('../daemon/common/log.js');
  const dir = mkdtempSync(join(tmpdir(), 'commusic-hashcfg-'));
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify({ health: { enabled: false }, logLevel: 'error', limits: { passwordHashConcurrency: 3, passwordHashQueuedPerSource: 7 } }));
  const server = await startServer(loadConfig({ file, flags: { dataDir: join(dir, 'data'), listen: '127.0.0.1:0' } }), { logger: nullLogger() });
  try {
    assert.equal(passwordHashQueue.concurrencyLimit, 3);
    assert.equal(passwordHashQueue.perSourceQueued, 7);
  } finally {
    await server.stop();
    passwordHashQueue.setConcurrency(2);
    passwordHashQueue.setPerSourceQueued(4);
    rmSync(dir, { recursive: true, force: true });
  }
});
