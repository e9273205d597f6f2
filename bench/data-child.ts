/**
 * The data server under test for bench/data.ts, in its own process: a fresh data folder with one
 * club, its administrator and 8 persons, and the daemon with the club commands on 127.0.0.1:0.
 * Sends {type: 'ready', port, fingerprint, club, persons} over IPC, answers {type: 'cpu'} and
 * {type: 'writes'} (group-commit counters); removes the folder and exits
 * when the parent disconnects. (The TLS echo baseline is bench/server-child.ts `tls`.)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../daemon/main/config.js';
import { createClub } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import { startChildDaemon } from './child-daemon.js';

export const BENCH_ADMIN = { user: 'bench', password: 'bench-password-123' };

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bench-data-'));
  const storage = await openStorage({ dataDir: join(dir, 'data'), create: true, scryptLog2N: 10 });
  const { id: club } = await createClub(storage, { name: 'MV Bench', adminUser: BENCH_ADMIN.user, adminPassword: BENCH_ADMIN.password });
  const db = storage.openClub(club).db;
  const ins = db.prepare('INSERT INTO persons (firstName, lastName, city, photoConsent, blocked) VALUES (?, ?, ?, 0, 0) RETURNING id');
  const persons = Array.from({ length: 8 }, (_, i) => (ins.get(`Vorname${i}`, `Nachname${i}`, 'Graz') as { id: number }).id);
  const config = loadConfig({ flags: { dataDir: join(dir, 'data'), listen: '127.0.0.1:0' } });
  const { daemon, identity } = await startChildDaemon({ storage, config, cleanup: () => rmSync(dir, { recursive: true, force: true }) });
  process.on('message', (m: { type: string }) => {
    if (m.type === 'cpu') {
      const u = process.cpuUsage();
      process.send!({ type: 'cpu', micros: u.user + u.system });
    }
    // The club store's group-commit counters (storage/club/write-group.ts).
    if (m.type === 'writes') process.send!({ type: 'writes', stats: storage.openClub(club).writes.stats });
  });
  process.send!({ type: 'ready', port: daemon.address().port, fingerprint: identity.fingerprint, club, persons });
}

// Only as a forked child of its own (bench/data.ts and bench/h2-child.ts import BENCH_ADMIN).
if (process.send && process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) void main();
