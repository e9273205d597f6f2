/**
 * `npm run bench` group "clubs" (issue 22): many clubs active at once. 1,000 clubs are provisioned
 * once (each with its administrator and one person); then for each store cache setting a server
 * process (bench/clubs-child.ts) runs with 10, 200 and 1,000 clubs active at once: one logged-in
 * connection per club, `persons.get` spread round robin over all of them by 16 concurrent
 * workers. Figure: the server's CPU time per request (user + system, from the child's
 * process.cpuUsage), so the load generator's share of the 2 cores does not count.
 * Settings: the default (`auto`, which sizes the cache for the clubs hosted or refuses to start),
 * a sized value (1,100), and 256 (the old built-in limit) to show how the cache degrades past
 * its size. Targets: at the default 1,000 clubs <= 2x the CPU per request of 10; sized,
 * 1,000 clubs <= 1.5x of 200.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type Connection } from '../client/connection.js';
import { hashPassword } from '../crypto/password.js';
import { createClubsBulk } from '../storage/server/provisioning.js';
import { openStorage } from '../storage/server/storage.js';
import { CLUBS_BENCH_ADMIN, CLUBS_BENCH_PASSWORD } from './clubs-child.js';
import type { Row } from './row.js';

const SIZES = [10, 200, 1000] as const;
const WORKERS = 16;

interface Ready {
  port: number;
  fingerprint: string;
  maxOpen: number;
}

interface CpuReply {
  micros: number;
  cache: { hits: number; misses: number; opens: number; evictions: number; open: number };
  rss: number;
}

class Child {
  private seq: Array<(m: CpuReply) => void> = [];
  private constructor(readonly proc: ChildProcess, readonly ready: Ready) {
    proc.on('message', (m: { type: string } & CpuReply) => {
      if (m.type === 'cpu') this.seq.shift()?.(m);
    });
  }
  static start(dataDir: string, maxOpen: string): Promise<Child | { refused: string }> {
    const proc = fork(fileURLToPath(new URL('./clubs-child.js', import.meta.url)), [dataDir, maxOpen], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    return new Promise((resolve, reject) => {
      proc.once('exit', (code) => reject(new Error(`clubs-child exited with code ${code} before it was ready`)));
      proc.on('message', (m: { type: string; message?: string } & Ready) => {
        if (m.type === 'ready') resolve(new Child(proc, m));
        if (m.type === 'refused') {
          proc.removeAllListeners('exit');
          proc.disconnect();
          resolve({ refused: m.message! });
        }
      });
    });
  }
  cpu(): Promise<CpuReply> {
    return new Promise((r) => {
      this.seq.push(r);
      this.proc.send({ type: 'cpu' });
    });
  }
  stop(): Promise<void> {
    return new Promise((r) => {
      this.proc.removeAllListeners('exit');
      this.proc.once('exit', () => r());
      if (this.proc.connected) this.proc.disconnect();
      setTimeout(() => this.proc.kill('SIGKILL'), 5000).unref();
    });
  }
}

/** 1,000 clubs with their stores created, the administrator's password known and one person each. */
async function provision(dataDir: string, n: number): Promise<{ ids: string[]; persons: number[]; ms: number }> {
  const started = performance.now();
  const st = await openStorage({ dataDir, create: true, maxOpenStores: 16 });
  try {
    const hash = await hashPassword(CLUBS_BENCH_PASSWORD, 10);
    const ids = createClubsBulk(st, Array.from({ length: n }, (_, i) => ({ name: `Musikverein ${i}`, adminUser: CLUBS_BENCH_ADMIN, passwordHash: hash })));
    const persons: number[] = [];
    for (const id of ids) {
      const db = st.openClub(id).db;
      db.prepare('UPDATE users SET mustChangePassword = 0').run();
      persons.push((db.prepare("INSERT INTO persons (firstName, lastName, city, photoConsent, blocked) VALUES ('Vorname', 'Nachname', 'Graz', 0, 0) RETURNING id").get() as { id: number }).id);
    }
    return { ids, persons, ms: performance.now() - started };
  } finally {
    st.close();
  }
}

async function loginAll(r: Ready, ids: string[]): Promise<Connection[]> {
  const conns: Connection[] = new Array(ids.length);
  let next = 0;
  await Promise.all(
    // Each login worker from its own loopback address: the server queues at most a few password
    // checks per source address (crypto/hash-queue.ts, HASH_BUSY), as it should for one client.
    Array.from({ length: 8 }, async (_, w) => {
      while (next < ids.length) {
        const i = next++;
        const c = await connect({ host: '127.0.0.1', port: r.port, fingerprint: r.fingerprint, localAddress: `127.0.1.${w + 1}` });
        await c.request('auth.login', { club: ids[i]!, user: CLUBS_BENCH_ADMIN, password: CLUBS_BENCH_PASSWORD });
        conns[i] = c;
      }
    }),
  );
  return conns;
}

/** persons.get round robin over the first n connections by WORKERS workers for ms; returns requests done. */
async function spread(conns: Connection[], persons: number[], n: number, ms: number): Promise<number> {
  const stopAt = Date.now() + ms;
  let done = 0;
  let cursor = 0;
  await Promise.all(
    Array.from({ length: Math.min(WORKERS, n) }, async () => {
      while (Date.now() < stopAt) {
        const i = cursor++ % n;
        await conns[i]!.request('persons.get', { id: persons[i]! });
        done++;
      }
    }),
  );
  return done;
}

interface Measured {
  setting: string;
  maxOpen: number;
  perSize: Map<number, { cpuPerReq: number; reqPerSec: number; opensPerReq: number; hitRatio: number }>;
  refused?: string;
}

async function measureSetting(dataDir: string, setting: string, ids: string[], persons: number[], ms: number, log: (s: string) => void): Promise<Measured> {
  const child = await Child.start(dataDir, setting);
  if (!(child instanceof Child)) return { setting, maxOpen: 0, perSize: new Map(), refused: child.refused };
  const out: Measured = { setting, maxOpen: child.ready.maxOpen, perSize: new Map() };
  let conns: Connection[] = [];
  try {
    conns = await loginAll(child.ready, ids);
    for (const n of SIZES) {
      await spread(conns, persons, n, Math.max(300, ms / 4)); // warm-up: every active club at least once
      const a = await child.cpu();
      const t0 = performance.now();
      const done = await spread(conns, persons, n, ms);
      const secs = (performance.now() - t0) / 1000;
      const b = await child.cpu();
      const lookups = b.cache.hits + b.cache.misses - (a.cache.hits + a.cache.misses);
      const m = { cpuPerReq: (b.micros - a.micros) / done, reqPerSec: done / secs, opensPerReq: (b.cache.opens - a.cache.opens) / done, hitRatio: lookups ? (b.cache.hits - a.cache.hits) / lookups : 1 };
      out.perSize.set(n, m);
      log(`clubs: maxOpen ${setting} (${out.maxOpen}), ${n} active: ${m.reqPerSec.toFixed(0)} req/s, ${m.cpuPerReq.toFixed(0)} us server CPU/request, ${m.opensPerReq.toFixed(2)} opens/request, hit ratio ${m.hitRatio.toFixed(3)}, rss ${(b.rss / 2 ** 20).toFixed(0)} MiB`);
    }
  } finally {
    await Promise.all(conns.map((c) => c?.close().catch(() => undefined)));
    await child.stop();
  }
  return out;
}

export async function runClubsBench(opts: { quick?: boolean; log?: (s: string) => void } = {}): Promise<Row[]> {
  const ms = opts.quick ? 1500 : 4000;
  const log = opts.log ?? ((s: string) => process.stderr.write(`${s}\n`));
  const dir = mkdtempSync(join(tmpdir(), 'commusic-bench-clubs-'));
  try {
    const dataDir = join(dir, 'data');
    const { ids, persons, ms: provMs } = await provision(dataDir, 1000);
    log(`clubs: provisioned ${ids.length} clubs with their stores in ${(provMs / 1000).toFixed(1)} s`);
    const rows: Row[] = [];
    const settings: Array<{ setting: string; label: string }> = [
      { setting: 'auto', label: 'default (auto)' },
      { setting: '1100', label: 'sized (1,100)' },
      { setting: '256', label: 'old limit 256' },
    ];
    for (const s of settings) {
      const m = await measureSetting(dataDir, s.setting, ids, persons, ms, log);
      if (m.refused) {
        rows.push({ group: 'clubs', name: `maxOpen ${s.label}: refused at start-up`, value: 0, unit: '', baseline: 0, baselineName: '-', higherIsBetter: false, note: m.refused, ...(s.setting === 'auto' ? { target: 'refuse and say what to set', met: true } : {}) });
        continue;
      }
      const base10 = m.perSize.get(10)!;
      const base200 = m.perSize.get(200)!;
      for (const n of [200, 1000]) {
        const v = m.perSize.get(n)!;
        const vs = s.setting === '1100' && n === 1000 ? { b: base200, name: '200 active clubs' } : { b: base10, name: '10 active clubs' };
        const target = s.setting === 'auto' && n === 1000 ? '<= 2x' : s.setting === '1100' && n === 1000 ? '<= 1.5x' : undefined;
        const ratio = v.cpuPerReq / vs.b.cpuPerReq;
        rows.push({
          group: 'clubs',
          name: `maxOpen ${s.label} = ${m.maxOpen}: server CPU/request, ${n} active clubs`,
          value: Math.round(v.cpuPerReq),
          unit: 'us',
          baseline: Math.round(vs.b.cpuPerReq),
          baselineName: `${vs.name}, same setting`,
          higherIsBetter: false,
          ...(target ? { target: `${target} (cost ratio ${ratio.toFixed(2)})`, met: target === '<= 2x' ? ratio <= 2 : ratio <= 1.5 } : {}),
          note: `${n} active: ${Math.round(v.reqPerSec)} req/s, ${v.opensPerReq.toFixed(2)} store opens/request, hit ratio ${v.hitRatio.toFixed(3)}; ${vs.name}: ${Math.round(vs.b.reqPerSec)} req/s`,
        });
      }
    }
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runClubsBench({ quick: process.argv.includes('--quick') }).then((rows) => {
    for (const r of rows) process.stdout.write(`${r.name}: ${r.value} ${r.unit} vs ${r.baselineName}: ${r.baseline}${r.target ? ` target ${r.target}: ${r.met ? 'met' : 'missed'}` : ''}${r.note ? `\n  ${r.note}` : ''}\n`);
  });
}
