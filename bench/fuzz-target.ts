/**
 * The daemon under fuzz (bench/fuzz-engine.ts), in its own process so that the fuzzer can tell
 * whether it ever exits and measure its memory. `node dist/bench/fuzz-target.js`: the full
 * server of `commusicd` (club commands, ban engine, alert mail to the outbox) on 127.0.0.1:0 in
 * a temporary data folder, with one club to log in to. Short bans (1 s, no growth) let the
 * fuzzer reuse its source addresses; `http` violations are banned for an hour, which the fuzzer's
 * ban checks rely on.
 *
 * IPC: `ready` once listening; then answers `mem` (memory figures and the daemon's own counts of
 * open stores, connections, bans and sessions, see TargetMem; after two full GCs when asked and
 * --expose-gc is given), `banned` (is this address banned now) and `stats`; exits on `exit` or
 * when the parent goes away. The parent may set MALLOC_ARENA_MAX in its environment (reported back).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../daemon/main/config.js';
import { createLogger } from '../daemon/common/log.js';
import { startServer } from '../daemon/main/main.js';
import { createClub, listClubs } from '../storage/server/provisioning.js';
import { FUZZ_ADMIN, FUZZ_PASSWORD, type FromTarget, type TargetCounts, type TargetMem, type ToTarget } from './fuzz-shared.js';

/** The `kB` lines of /proc/self/status (RssAnon, RssFile, ...) in bytes; empty where there is no /proc. */
function procStatus(): Record<string, number> {
  const out: Record<string, number> = {};
  try {
    for (const line of readFileSync('/proc/self/status', 'utf8').split('\n')) {
      const m = /^(\w+):\s+(\d+) kB$/.exec(line);
      if (m) out[m[1]!] = Number(m[2]) * 1024;
    }
  } catch {
    // Not Linux: the memoryUsage figures stand alone.
  }
  return out;
}


async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-fuzz-'));
  const dataDir = join(dir, 'data');
  const file = join(dir, 'config.json');
  writeFileSync(
    file,
    JSON.stringify({
      health: { enabled: false },
      bans: { banTime: 1000, banTimeFactor: 1, kinds: { http: { maxRetry: 1, findTime: '10m', banTime: '1h' } } },
    }),
  );
  // Errors only, to stderr: a fault the fuzzer finds shows in the parent's output.
  const logger = createLogger({ level: 'error' });
  const server = await startServer(loadConfig({ file, flags: { dataDir, listen: '127.0.0.1:0' } }), { logger, print: () => undefined });
  const club = (await createClub(server.storage, { name: 'MV Fuzz', adminUser: FUZZ_ADMIN, adminPassword: FUZZ_PASSWORD })).id;
  const details: Record<string, number> = {};
  server.daemon.violations.subscribe((e) => {
    const k = `${e.kind}:${e.detail.slice(0, 40)}`;
    details[k] = (details[k] ?? 0) + 1;
  });
  const sample = (): TargetMem => {
    const mu = process.memoryUsage();
    const status = procStatus();
    const d = server.daemon;
    const counts: TargetCounts = {
      storesOpen: server.storage.cache.size,
      storesMax: server.storage.cache.maxOpen,
      clubs: listClubs(server.storage).length,
      connections: d.connectionCount,
      pendingHandshakes: d.pendingHandshakes,
      preLoginSessions: d.preLoginSessions,
      bans: server.banSystem.table.size,
      trackedSources: server.banSystem.engine.trackedSources,
      outbox: server.banSystem.mailer.outboxLength,
      gathered: server.banSystem.mailer.gatheredLength,
      requestKeys: d.stats.requests.size,
      violationKeys: d.stats.violations.size,
      detailKeys: Object.keys(details).length,
    };
    return {
      rss: mu.rss,
      heapUsed: mu.heapUsed,
      heapTotal: mu.heapTotal,
      external: mu.external,
      arrayBuffers: mu.arrayBuffers,
      rssAnon: status.RssAnon ?? 0,
      rssFile: status.RssFile ?? 0,
      mallocArenaMax: process.env.MALLOC_ARENA_MAX ?? '',
      counts,
    };
  };
  const cleanup = (): void => {
    rmSync(dir, { recursive: true, force: true });
  };
  const stopAndExit = (code: number): void => {
    void server.stop().finally(() => {
      cleanup();
      process.exit(code);
    });
  };
  process.on('disconnect', () => stopAndExit(0));
  process.on('message', (m: ToTarget) => {
    const reply = (r: Omit<Extract<FromTarget, { type: 'reply' }>, 'type' | 'seq'>): void => {
      process.send!({ type: 'reply', seq: m.seq, ...r } satisfies FromTarget);
    };
    switch (m.type) {
      case 'mem': {
        void (async () => {
          const gc = (globalThis as { gc?: () => void }).gc;
          if (m.gc && gc) {
            // Twice, a turn apart: Buffers freed by the first collection's finalizers go in the second.
            gc();
            await new Promise((r) => setImmediate(r));
            gc();
          }
          const mem = sample();
          reply({ rss: mem.rss, heapUsed: mem.heapUsed, external: mem.external, mem });
        })();
        return;
      }
      case 'banned':
        reply({ banned: server.banSystem.table.check(m.ip, Date.now()) !== undefined });
        return;
      case 'stats': {
        const s = server.daemon.stats;
        const results: Record<string, number> = {};
        for (const [k, n] of s.requests) results[k.slice(k.lastIndexOf(':') + 1)] = (results[k.slice(k.lastIndexOf(':') + 1)] ?? 0) + n;
        reply({ stats: { violations: Object.fromEntries(s.violations), refusedBanned: s.refusedBanned, established: s.established, bans: server.banSystem.table.size, results, details } });
        return;
      }
      case 'exit':
        stopAndExit(0);
        return;
    }
  });
  const { port } = server.daemon.address();
  process.send!({ type: 'ready', port, fingerprint: server.identity.fingerprint, club } satisfies FromTarget);
}

main().catch((e: unknown) => {
  process.stderr.write(`fuzz target failed to start: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exit(2);
});
