/**
 * The server under test for bench/clubs.ts ("active clubs"), in its own process: the daemon with
 * the club commands on 127.0.0.1:0 over a data folder the parent provisioned, its store cache
 * sized by the same start-up check as commusicd (daemon/main/store-sizing.ts) from the `storeCache.maxOpen`
 * given as argv[3] ("auto" or a number). `node dist/bench/clubs-child.js DATA_DIR MAX_OPEN`.
 * IPC: sends `ready` {port, fingerprint, maxOpen} or `refused` {message}; answers `cpu` with the
 * process CPU time and the cache counters; exits on `exit` or when the parent goes away.
 */
import { loadConfig } from '../daemon/main/config.js';
import { nullLogger } from '../daemon/common/log.js';
import { planStoreCache, processOpenFileLimit, storeMemoryBudget } from '../daemon/main/store-sizing.js';
import { openStorage } from '../storage/server/storage.js';
import { startChildDaemon } from './child-daemon.js';

export const CLUBS_BENCH_PASSWORD = 'bench-password-123';
export const CLUBS_BENCH_ADMIN = 'bench';

async function main(): Promise<void> {
  const dataDir = process.argv[2]!;
  const setting = process.argv[3] === 'auto' ? 'auto' : Number(process.argv[3]);
  const config = loadConfig({ flags: { dataDir, listen: '127.0.0.1:0' }, env: {} });
  config.limits.maxPendingHandshakesPerIp = 10_000;
  const storage = await openStorage({ dataDir, logger: nullLogger() });
  const plan = planStoreCache({
    setting,
    clubs: storage.server.countClubs(),
    maxConnections: config.limits.maxConnections,
    openFileLimit: processOpenFileLimit(),
    memoryBudgetBytes: storeMemoryBudget(config.storeCache.memoryBudgetMiB),
  });
  if (!plan.ok) {
    process.send!({ type: 'refused', message: plan.message });
    storage.close();
    return;
  }
  storage.cache.setMaxOpen(plan.maxOpen);
  // Hashes in the bench folder use scrypt 2^10; keep them (no rehash at login).
  const { daemon, identity } = await startChildDaemon({ storage, config, passwordLog2N: 10 });
  process.on('message', (m: { type: string }) => {
    if (m.type === 'cpu') {
      const u = process.cpuUsage();
      process.send!({ type: 'cpu', micros: u.user + u.system, cache: { ...storage.cache.stats, open: storage.cache.size }, rss: process.memoryUsage().rss });
    }
  });
  process.send!({ type: 'ready', port: daemon.address().port, fingerprint: identity.fingerprint, maxOpen: plan.maxOpen });
}

if (process.send) void main();
