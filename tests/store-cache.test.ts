// Issue 22: many clubs active at once. The open-store limit as a setting with a start-up check,
// a scan-resistant cache (W-TinyLFU) that still hits under round robin past its size, deferred
// closes without a log line per eviction, and the cache figures in /metrics and `status`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, configSchema, dataPaths, loadConfig } from '../daemon/main/config.js';
import { callControl } from '../daemon/ops/control-socket.js';
import { nullLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { formatStatus, type StatusReport } from '../daemon/monitoring/status-ops.js';
import { FD_RESERVE, STORE_FDS, STORE_MEMORY_BYTES, parseOpenFileLimit, planStoreCache, processOpenFileLimit } from '../daemon/main/store-sizing.js';
import { FrequencySketch } from '../storage/club/store-cache.js';
import { createClubsBulk } from '../storage/server/provisioning.js';
import { openStorage, type Storage } from '../storage/server/storage.js';
import { httpsGet, parsePrometheus } from './helpers/health.js';
import { tmpDir } from './store-helpers.js';
import { Reloader } from '../daemon/main/reload.js';
import { writeFileSync } from 'node:fs';

const HASH = 'scrypt$1$10$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';
const MiB = 1024 * 1024;

async function storageWith(n: number, maxOpenStores: number, logger?: { info(m: string): void; warn(m: string): void }): Promise<{ st: Storage; ids: string[]; cleanup(): void }> {
  const t = tmpDir('commusic-cache-');
  const st = await openStorage({ dataDir: t.dir, create: true, maxOpenStores, ...(logger ? { logger } : {}) });
  const ids = createClubsBulk(st, Array.from({ length: n }, (_, i) => ({ name: `Verein ${i}`, adminUser: 'admin', passwordHash: HASH })));
  return {
    st,
    ids,
    cleanup() {
      st.close();
      t.cleanup();
    },
  };
}

function use(st: Storage, id: string): void {
  st.openClub(id).db.prepare('SELECT count(*) FROM persons').get();
}

test('the open-store limit is a setting: default auto, a number, or refused', () => {
  assert.equal(loadConfig({ env: {} }).storeCache.maxOpen, 'auto');
  assert.equal(loadConfig({ env: { COMMUSIC_STORE_CACHE_MAX_OPEN: '1200' } }).storeCache.maxOpen, 1200);
  assert.throws(() => loadConfig({ env: { COMMUSIC_STORE_CACHE_MAX_OPEN: 'many' } }), (e: unknown) => e instanceof ConfigError && /storeCache\.maxOpen/.test(e.message));
  assert.throws(() => configSchema.parse({ storeCache: { maxOpen: 0 } }));
});

test('start-up sizing: auto holds every club or says what to set; a number that does not fit is refused', () => {
  const base = { clubs: 1000, maxConnections: 10_000, memoryBudgetBytes: 4096 * MiB };
  const ok = planStoreCache({ ...base, setting: 'auto', openFileLimit: 20_000 });
  assert.ok(ok.ok && ok.maxOpen >= 1000, JSON.stringify(ok));
  // ulimit -n 1024: half for connections, 256 reserved: (1024-256-512)/3 = 85 stores, far below 1,000 clubs.
  const low = planStoreCache({ ...base, setting: 'auto', openFileLimit: 1024 });
  assert.equal(low.ok, false);
  if (!low.ok) {
    assert.match(low.message, /1000 clubs are hosted but only 85 stores/);
    assert.match(low.message, new RegExp(`LimitNOFILE=${FD_RESERVE + STORE_FDS * 1000 + 10_000}`));
    assert.match(low.message, /storeCache\.maxOpen/);
  }
  const mem = planStoreCache({ ...base, setting: 'auto', openFileLimit: 1_000_000, memoryBudgetBytes: 100 * MiB });
  assert.ok(!mem.ok && /storeCache\.memoryBudgetMiB to at least 400/.test(mem.message), JSON.stringify(mem));
  const tooMany = planStoreCache({ ...base, setting: 5000, openFileLimit: 4096 });
  assert.ok(!tooMany.ok && /needs 15256 open files/.test(tooMany.message) && /lower storeCache\.maxOpen to 1280/.test(tooMany.message), JSON.stringify(tooMany));
  const below = planStoreCache({ ...base, setting: 256, openFileLimit: 20_000 });
  assert.ok(below.ok && below.maxOpen === 256 && below.warnings.some((w) => /below the 1000 clubs/.test(w)));
  assert.equal(below.ok && below.memoryBytes, 256 * STORE_MEMORY_BYTES);
});

test('the open-file limit is read from /proc/self/limits', () => {
  const text = 'Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 524288               files     \n';
  assert.equal(parseOpenFileLimit(text), 1024);
  assert.equal(parseOpenFileLimit(text.replace('1024 ', 'unlimited')), Infinity);
  assert.equal(parseOpenFileLimit('nothing here'), undefined);
  const own = processOpenFileLimit();
  assert.ok(own === Infinity || (Number.isInteger(own) && own > 0));
});

test('the daemon refuses to start when its store cache cannot hold the clubs, and says what to set', { timeout: 30_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-cache-refuse-'));
  try {
    const st = await openStorage({ dataDir, create: true });
    createClubsBulk(st, Array.from({ length: 5 }, (_, i) => ({ name: `V${i}`, adminUser: 'admin', passwordHash: HASH })));
    st.close();
    // 1 MiB holds 2 stores of 0.4 MiB: fewer than the 5 clubs.
    const config = configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { enabled: false }, storeCache: { memoryBudgetMiB: 1 } });
    await assert.rejects(startServer(config, { logger: nullLogger() }), (e: unknown) => e instanceof ConfigError && /5 clubs are hosted but only 2 stores/.test(e.message) && /memoryBudgetMiB to at least 2/.test(e.message));
    const fixed = configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { enabled: false }, storeCache: { maxOpen: 2, memoryBudgetMiB: 1 } });
    const server = await startServer(fixed, { logger: nullLogger() });
    assert.equal(server.storage.cache.maxOpen, 2);
    await server.stop();
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('round robin over more clubs than the cache holds still hits (plain LRU: never)', { timeout: 60_000 }, async () => {
  const { st, ids, cleanup } = await storageWith(40, 10);
  try {
    for (let round = 0; round < 6; round++) {
      for (const id of ids) use(st, id);
      st.cache.flushClosing();
    }
    const s = st.cache.stats;
    const ratio = s.hits / (s.hits + s.misses);
    // The main segment (9 of 10) stays put: about 9/40 = 22% after the first round.
    assert.ok(ratio >= 0.15, `hit ratio ${ratio.toFixed(3)} (${JSON.stringify(s)})`);
    assert.ok(st.cache.size <= 10);
    assert.equal(s.opens, s.misses);
    assert.ok(s.rejected > 0, 'newcomers that were used no more often than the victim were refused');
  } finally {
    cleanup();
  }
});

test('scan resistance: one pass over every club does not flush the busy clubs', { timeout: 60_000 }, async () => {
  const { st, ids, cleanup } = await storageWith(60, 10);
  try {
    const hot = ids.slice(0, 5);
    for (let i = 0; i < 20; i++) for (const id of hot) use(st, id);
    for (const id of ids.slice(5)) use(st, id); // a backup, a report: every other club once
    st.cache.flushClosing();
    const before = { ...st.cache.stats };
    for (const id of hot) use(st, id);
    assert.equal(st.cache.stats.misses, before.misses, 'every busy club is still open after the scan');
    assert.equal(st.cache.stats.hits, before.hits + hot.length);
  } finally {
    cleanup();
  }
});

test('evicted stores are closed off the request path, with no log line per eviction', { timeout: 60_000 }, async () => {
  const lines: string[] = [];
  const logger = { info: (m: string) => lines.push(m), warn: (m: string) => lines.push(m) };
  const { st, ids, cleanup } = await storageWith(12, 8, logger);
  try {
    const stores = ids.map((id) => st.openClub(id));
    // The last store handed out was refused by the admission filter or pushed another out:
    // either way it and the evicted ones waiting for their close are usable in this run.
    assert.equal((stores[11]!.db.prepare('SELECT 1 AS one').get() as { one: number }).one, 1);
    assert.ok(st.cache.closingCount > 0 && st.cache.closingCount <= 2, `waiting ${st.cache.closingCount}`);
    // A store waiting for its close is taken back by the next get(): a hit, not a reopen.
    const held = ids.filter((id) => st.cache.isOpen(id));
    assert.equal(held.length, st.cache.size + st.cache.closingCount);
    const opens = st.cache.stats.opens;
    for (const id of held.reverse()) use(st, id);
    assert.equal(st.cache.stats.opens, opens, 'no store reopened');
    await new Promise<void>((r) => setImmediate(r));
    assert.equal(st.cache.closingCount, 0, 'the deferred close ran');
    assert.equal(stores.filter((s) => s.isOpen).length, st.cache.size);
    assert.ok(st.cache.stats.evictions >= 4);
    assert.deepEqual(lines.filter((l) => /closed|evict/i.test(l)), []);
  } finally {
    cleanup();
  }
});

test('frequency sketch: counts age by halving after the sample size', () => {
  const s = new FrequencySketch(16);
  for (let i = 0; i < 6; i++) s.increment('a');
  assert.equal(s.frequency('a'), 6);
  for (let i = 0; i < 10; i++) s.increment(`k${i}`); // 16th access: reset
  assert.equal(s.frequency('a'), 3);
  assert.equal(s.frequency('k0'), 0, 'single accesses are forgotten at the reset');
  assert.ok(s.size <= 1);
});

test('opens, evictions and hit rate in /metrics and commusicctl status', { timeout: 60_000 }, async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'commusic-cache-metrics-'));
  const config = configSchema.parse({ dataDir, listen: '127.0.0.1:0', logLevel: 'error', health: { listen: '127.0.0.1:0' }, storeCache: { maxOpen: 4 } });
  const server = await startServer(config, { logger: nullLogger() });
  try {
    const created = (await callControl(dataPaths(dataDir).controlSocket, 'club.create-bulk', { clubs: Array.from({ length: 8 }, (_, i) => ({ name: `M${i}`, admin: 'admin' })) }))!.result as Array<{ id: string }>;
    for (const c of created) server.storage.openClub(c.id);
    for (let i = 0; i < 3; i++) server.storage.openClub(created[7]!.id);
    const s = server.storage.cache.stats;
    assert.equal(s.opens, 8);
    assert.equal(s.hits, 3);
    const r = (await callControl(dataPaths(dataDir).controlSocket, 'status', {}))!.result as StatusReport;
    assert.deepEqual({ ...r.storeCache, hitRatio: undefined }, { open: server.storage.cache.size, limit: 4, hitRatio: undefined, hits: 3, misses: 8, opens: 8, evictions: s.evictions, rejected: s.rejected });
    assert.ok(s.evictions >= 4);
    assert.equal(r.storeCache!.hitRatio, 3 / 11);
    assert.match(formatStatus(r), new RegExp(`^store cache: +${server.storage.cache.size} open of 4, hit rate 27\\.3% \\(3 hits, 8 opens, ${s.evictions} evictions\\)$`, 'm'));
    const port = server.health!.server.address().port;
    const m = parsePrometheus((await httpsGet(port, '/metrics')).body);
    assert.equal(m.get('commusic_store_cache_limit'), 4);
    assert.equal(m.get('commusic_store_opens_total'), 8);
    assert.equal(m.get('commusic_store_cache_lookups_total{result="hit"}'), 3);
    assert.equal(m.get('commusic_store_cache_lookups_total{result="miss"}'), 8);
    assert.equal(m.get('commusic_store_evictions_total{reason="victim"}')! + m.get('commusic_store_evictions_total{reason="refused"}')!, s.evictions);
    assert.ok(Math.abs(m.get('commusic_store_cache_hit_ratio')! - 3 / 11) < 1e-9);
  } finally {
    await server.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('a changed storeCache setting is reported as needing a restart on SIGHUP', async (t) => {
  const d = tmpDir('commusic-cache-reload-');
  t.after(d.cleanup);
  const file = join(d.dir, 'config.json');
  writeFileSync(file, JSON.stringify({ dataDir: d.dir, storeCache: { maxOpen: 100 } }));
  const config = loadConfig({ file, env: {} });
  const reloader = new Reloader({ sources: { file, env: {} }, config, logger: nullLogger() });
  writeFileSync(file, JSON.stringify({ dataDir: d.dir, storeCache: { maxOpen: 200 } }));
  const r = await reloader.reload();
  assert.ok(r.ok);
  assert.deepEqual(r.restartNeeded, ['storeCache']);
  assert.equal(reloader.config.storeCache.maxOpen, 100, 'the running value stays until a restart');
});
