/**
 * Backup bench (issue 6, point 7): a nightly run over many clubs of about 1 MB each (rows plus
 * one document) to a local destination, next to `cp -r` of the same club folders in the same
 * run; and the latency of request-like work (a point read of a club store, scheduled every 2 ms
 * on the same event loop, as the daemon's handlers run) while the run goes on, next to the same
 * without a run. Club count: BENCH_BACKUP_CLUBS (default 200, quick 40): 1,000 clubs take about
 * 5x as long on a 2-core machine and the ratios do not change with the count.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { BackupService } from '../daemon/backup/backup-service.js';
import { hashPassword } from '../crypto/password.js';
import { putDocument } from '../storage/club/documents.js';
import { createClubsBulk } from '../storage/server/provisioning.js';
import { openStorage, type Storage } from '../storage/server/storage.js';
import type { Row } from './row.js';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

async function requestLatencies(st: Storage, clubs: string[], until: () => boolean, minMs: number): Promise<number[]> {
  const out: number[] = [];
  const t0 = Date.now();
  let i = 0;
  while (!until() || Date.now() - t0 < minMs) {
    const start = process.hrtime.bigint();
    await new Promise((r) => setTimeout(r, 2));
    const c = clubs[i++ % clubs.length]!;
    st.openClub(c).db.prepare('SELECT id, firstName, lastName FROM persons WHERE id = ?').get(1 + (i % 100));
    out.push(Number(process.hrtime.bigint() - start) / 1e6 - 2);
  }
  return out;
}

export async function runBackupBench(o: { quick?: boolean } = {}): Promise<Row[]> {
  const n = Number(process.env['BENCH_BACKUP_CLUBS'] ?? (o.quick ? 40 : 200));
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bench-backup-'));
  try {
    const st = await openStorage({ dataDir: join(dir, 'data'), create: true, scryptLog2N: 10 });
    const passwordHash = await hashPassword('bench-password-123', 10);
    const clubs = createClubsBulk(st, Array.from({ length: n }, (_, i) => ({ name: `Bench ${i}`, adminUser: 'admin', passwordHash })));
    const doc = randomBytes(640 * 1024);
    for (const c of clubs) {
      const db = st.openClub(c).db;
      const ins = db.prepare('INSERT INTO persons (firstName, lastName, street, city, photoConsent, blocked, notes) VALUES (?, ?, ?, ?, 0, 0, ?)');
      db.transaction(() => {
        for (let i = 0; i < 600; i++) ins.run(`First${i}`, `Last${i}`, `Street ${i}`, 'Town', 'x'.repeat(400));
      })();
      await putDocument(st, c, Readable.from([doc]), { kind: 'other', name: 'scan.pdf' });
    }
    const clubsBytes = Number(execFileSync('du', ['-sb', join(dir, 'data', 'clubs')]).toString().split('\t')[0]);
    const svc = new BackupService({ storage: st, config: { destinations: [{ name: 'local', kind: 'local', path: join(dir, 'backups') }], parallelism: 2 } });
    // Baseline latency: no run.
    const idle = await requestLatencies(st, clubs, () => true, 3000);
    let running = true;
    const t0 = performance.now();
    const during = requestLatencies(st, clubs, () => !running, 0);
    const rep = await svc.runNightly({ mail: false, retention: false });
    const runMs = performance.now() - t0;
    running = false;
    const busy = await during;
    await svc.close();
    const c0 = performance.now();
    execFileSync('cp', ['-r', join(dir, 'data', 'clubs'), join(dir, 'cp-copy')]);
    execFileSync('sync');
    const cpMs = performance.now() - c0;
    st.close();
    const note = `${n} clubs, ${(clubsBytes / n / 1024 / 1024).toFixed(2)} MB each on disk; ${rep.ok} archived; backup = snapshot + decrypt + re-encrypt + fsync + read-back verify`;
    return [
      { group: 'backup', name: `nightly run, ${n} clubs`, value: (clubsBytes / 1024 / 1024) / (runMs / 1000), unit: 'MB/s', baseline: (clubsBytes / 1024 / 1024) / (cpMs / 1000), baselineName: 'cp -r + sync', higherIsBetter: true, note },
      { group: 'backup', name: 'request latency p50 during run', value: pct(busy, 50), unit: 'ms', baseline: pct(idle, 50), baselineName: 'no run', higherIsBetter: false },
      { group: 'backup', name: 'request latency p99 during run', value: pct(busy, 99), unit: 'ms', baseline: pct(idle, 99), baselineName: 'no run', higherIsBetter: false },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runBackupBench({ quick: process.argv.includes('--quick') });
  for (const r of rows) process.stdout.write(`${r.name}: ${r.value.toFixed(2)} ${r.unit} vs ${r.baselineName} ${r.baseline.toFixed(2)} ${r.unit} (ratio ${(r.value / r.baseline).toFixed(2)})${r.note ? `\n  ${r.note}` : ''}\n`);
}
