// Must-show 7: with 5,000 clubs provisioned, opening the storage (what the daemon does at start)
// costs about the same time and the same open file descriptors as with 10 clubs; the store
// cache keeps the number of open stores (and fds) bounded however many clubs are used.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openStorage } from '../storage/server/storage.js';
import { createClubsBulk, listClubs } from '../storage/server/provisioning.js';
import { hashPassword } from '../crypto/password.js';
import { openFdCount, tmpDir } from './store-helpers.js';

async function provision(n: number): Promise<{ dir: string; cleanup(): void; ids: string[]; ms: number }> {
  const t = tmpDir('commusic-scale-');
  const st = await openStorage({ dataDir: t.dir, create: true });
  const hash = await hashPassword('a shared bulk password', 12);
  const start = performance.now();
  const ids = createClubsBulk(st, Array.from({ length: n }, (_, i) => ({ name: `Musikverein ${i}`, adminUser: 'admin', passwordHash: hash })));
  const ms = performance.now() - start;
  st.close();
  return { ...t, ids, ms };
}

async function measureStart(dir: string): Promise<{ ms: number; fds: number; storesOpened: number }> {
  const before = openFdCount();
  const start = performance.now();
  const st = await openStorage({ dataDir: dir, maxOpenStores: 64 });
  const ms = performance.now() - start;
  const fds = openFdCount() - before;
  const storesOpened = st.cache.size + st.cache.closingCount + st.cache.stats.misses;
  st.close();
  return { ms, fds, storesOpened };
}

test('start cost and open fds are flat from 10 to 5,000 clubs; the cache bounds open stores', async (t) => {
  const small = await provision(10);
  t.after(small.cleanup);
  const big = await provision(5000);
  t.after(big.cleanup);
  await measureStart(small.dir); // warm-up (module loading, first SQLite open)
  const s: Array<{ ms: number; fds: number; storesOpened: number }> = [];
  const b: Array<{ ms: number; fds: number; storesOpened: number }> = [];
  for (let i = 0; i < 3; i++) {
    s.push(await measureStart(small.dir));
    b.push(await measureStart(big.dir));
  }
  const med = (xs: number[]) => xs.sort((x, y) => x - y)[1]!;
  const sMs = med(s.map((x) => x.ms));
  const bMs = med(b.map((x) => x.ms));
  t.diagnostic(`provisioning 5,000 clubs: ${big.ms.toFixed(0)} ms; start with 10 clubs: ${sMs.toFixed(1)} ms, ${s[0]!.fds} fds; with 5,000: ${bMs.toFixed(1)} ms, ${b[0]!.fds} fds`);
  assert.equal(b[0]!.fds, s[0]!.fds, 'open fds at start do not depend on the number of clubs');
  // Structural, not timed (the times above are diagnostics only): start opens no club store.
  assert.deepEqual([...s, ...b].map((x) => x.storesOpened), [0, 0, 0, 0, 0, 0], 'start opens no club store');

  // Use 300 of the 5,000 clubs through a cache of 40: at most 40 stores (and their fds) open.
  const st = await openStorage({ dataDir: big.dir, maxOpenStores: 40 });
  t.after(() => st.close());
  assert.equal(listClubs(st).length, 5000);
  const base = openFdCount();
  let peak = 0;
  for (const id of big.ids.slice(0, 300)) {
    const store = st.openClub(id);
    assert.equal((store.db.prepare('SELECT count(*) AS n FROM users WHERE isAdmin = 1').get() as { n: number }).n, 1);
    peak = Math.max(peak, openFdCount() - base);
  }
  assert.equal(st.cache.size, 40);
  t.diagnostic(`300 clubs used through a cache of 40: peak ${peak} extra fds`);
  assert.ok(peak <= 40 * 4, `peak fds ${peak}`);
});
