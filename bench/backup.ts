/**
 * Backup bench (issue 6 point 7, issue 13 point 4): a nightly run over many clubs of about 1 MB
 * each (rows plus one document) to a local destination, next to `cp -r` of the same club folders in
 * the same run; and the latency of `persons.get` over the socket while the run goes on, next to the
 * same without a run. The daemon (bench/backup-child.ts) runs in its own process with the backup
 * service on its event loop, as commusicd does; this process is the client: one connection, one
 * request at a time, a new one 1 ms after each answer. Club count: BENCH_BACKUP_CLUBS (default 200,
 * quick 40). Target (issue 13): p99 during the run at most 2x the quiet p99 of the same run.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { connect, type Connection } from '../client/connection.js';
import { hashPassword } from '../crypto/password.js';
import { putDocument } from '../storage/club/documents.js';
import { createClubsBulk } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import type { Row } from './row.js';

const PASSWORD = 'bench-password-123';

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
}

/** Sequential persons.get over one connection until `until()` (and at least minMs), latencies in ms. */
async function requestLatencies(c: Connection, until: () => boolean, minMs: number): Promise<number[]> {
  const out: number[] = [];
  const t0 = Date.now();
  let i = 0;
  while (!until() || Date.now() - t0 < minMs) {
    const start = process.hrtime.bigint();
    await c.request('persons.get', { id: 1 + (i++ % 100) });
    out.push(Number(process.hrtime.bigint() - start) / 1e6);
    await new Promise((r) => setTimeout(r, 1));
  }
  return out;
}

async function prepare(dir: string, n: number): Promise<{ clubs: string[]; clubsBytes: number }> {
  const st = await openStorage({ dataDir: join(dir, 'data'), create: true, scryptLog2N: 10 });
  try {
    const passwordHash = await hashPassword(PASSWORD, 10);
    const clubs = createClubsBulk(st, Array.from({ length: n }, (_, i) => ({ name: `Bench ${i}`, adminUser: 'admin', passwordHash })));
    const doc = randomBytes(640 * 1024);
    for (const c of clubs) {
      const db = st.openClub(c).db;
      const ins = db.prepare('INSERT INTO persons (firstName, lastName, street, city, photoConsent, blocked, notes) VALUES (?, ?, ?, ?, 0, 0, ?)');
      db.transaction(() => {
        db.prepare('UPDATE users SET mustChangePassword = 0').run(); // the bench logs in with the provisioned password
        for (let i = 0; i < 600; i++) ins.run(`First${i}`, `Last${i}`, `Street ${i}`, 'Town', 'x'.repeat(400));
      })();
      await putDocument(st, c, Readable.from([doc]), { kind: 'other', name: 'scan.pdf' });
    }
    return { clubs, clubsBytes: Number(execFileSync('du', ['-sb', join(dir, 'data', 'clubs')]).toString().split('\t')[0]) };
  } finally {
    st.close();
  }
}

function child(dir: string): { proc: ChildProcess; next: (type: string) => Promise<Record<string, unknown>> } {
  // BENCH_CPU_PROF=DIR: a V8 CPU profile of the daemon child in DIR.
  const prof = process.env['BENCH_CPU_PROF'];
  const execArgv = prof ? ['--cpu-prof', '--cpu-prof-dir', prof] : [];
  const proc = fork(fileURLToPath(new URL('./backup-child.js', import.meta.url)), [join(dir, 'data'), join(dir, 'backups')], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
  const waiting = new Map<string, (m: Record<string, unknown>) => void>();
  proc.on('message', (m: Record<string, unknown>) => {
    const w = waiting.get(m['type'] as string);
    waiting.delete(m['type'] as string);
    w?.(m);
  });
  const next = (type: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      waiting.set(type, resolve);
      proc.once('exit', (code) => reject(new Error(`backup-child exited with code ${code}`)));
    });
  return { proc, next };
}

export async function runBackupBench(o: { quick?: boolean; log?: (s: string) => void } = {}): Promise<Row[]> {
  const n = Number(process.env['BENCH_BACKUP_CLUBS'] ?? (o.quick ? 40 : 200));
  const log = o.log ?? (() => undefined);
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bench-backup-'));
  let c: Connection | undefined;
  let ch: ReturnType<typeof child> | undefined;
  try {
    log(`backup: preparing ${n} clubs`);
    const { clubs, clubsBytes } = await prepare(dir, n);
    ch = child(dir);
    const ready = await ch.next('ready');
    c = await connect({ host: '127.0.0.1', port: ready['port'] as number, fingerprint: ready['fingerprint'] as string });
    await c.request('auth.login', { club: clubs[0], user: 'admin', password: PASSWORD });
    await requestLatencies(c, () => true, 500); // warm-up
    const quiet = await requestLatencies(c, () => true, 3000);
    let running = true;
    const done = ch.next('backup-done');
    ch.proc.send({ type: 'backup' });
    const duringP = requestLatencies(c, () => !running, 0);
    const rep = await done;
    running = false;
    const busy = await duringP;
    const runMs = rep['ms'] as number;
    log(`backup: run ${Math.round(runMs)} ms, ${busy.length} requests during it, ${quiet.length} quiet`);
    const c0 = performance.now();
    execFileSync('cp', ['-r', join(dir, 'data', 'clubs'), join(dir, 'cp-copy')]);
    execFileSync('sync');
    const cpMs = performance.now() - c0;
    const note = `${n} clubs, ${(clubsBytes / n / 1024 / 1024).toFixed(2)} MB each on disk; ${rep['ok']} archived, ${rep['failed']} failed; backup = snapshot + decrypt + re-encrypt + fsync + read-back verify`;
    const p99 = pct(busy, 99);
    const quiet99 = pct(quiet, 99);
    const latNote = `persons.get over the socket, one connection, one at a time: ${quiet.length} quiet, ${busy.length} during the run; p99 during / quiet = ${(p99 / quiet99).toFixed(2)}`;
    return [
      { group: 'backup', name: `nightly run, ${n} clubs`, value: clubsBytes / 1024 / 1024 / (runMs / 1000), unit: 'MB/s', baseline: clubsBytes / 1024 / 1024 / (cpMs / 1000), baselineName: 'cp -r + sync', higherIsBetter: true, note },
      { group: 'backup', name: 'persons.get p50 during run (socket)', value: pct(busy, 50), unit: 'ms', baseline: pct(quiet, 50), baselineName: 'no run', higherIsBetter: false },
      { group: 'backup', name: 'persons.get p99 during run (socket)', value: p99, unit: 'ms', baseline: quiet99, baselineName: 'no run', higherIsBetter: false, target: '<= 2x quiet', met: p99 <= 2 * quiet99, note: latNote },
    ];
  } finally {
    await c?.close().catch(() => undefined);
    if (ch) {
      const exited = new Promise((r) => ch!.proc.once('exit', r));
      if (ch.proc.connected) ch.proc.disconnect();
      setTimeout(() => ch!.proc.kill('SIGKILL'), 10_000).unref();
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runBackupBench({ quick: process.argv.includes('--quick'), log: (m) => process.stderr.write(`${m}\n`) });
  for (const r of rows) process.stdout.write(`${r.name}: ${r.value.toFixed(2)} ${r.unit} vs ${r.baselineName} ${r.baseline.toFixed(2)} ${r.unit} (ratio ${(r.value / r.baseline).toFixed(2)})${r.note ? `\n  ${r.note}` : ''}\n`);
}
