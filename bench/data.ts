/**
 * `npm run bench` group "data" (issue 4, point 7): authenticated `persons.get` of one person and
 * `persons.update` of one person (with its change-log entry, committed durably: WAL with
 * synchronous=FULL) per second over 8 connections, next to Node's TLS 1.3 echo of a message of
 * the same size over 8 connections, measured in the same run. Each server runs in its own child
 * process (bench/data-child.ts, bench/server-child.ts `tls`); this process generates the load.
 * Target: get >= 0.7x the echo rate. Updates have no target (each one waits for an fsync).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { connect, type Connection } from '../client/connection.js';
import { BENCH_ADMIN } from './data-child.js';
import type { Row } from './row.js';

const CONNECTIONS = 8;

interface Child {
  proc: ChildProcess;
  ready: Record<string, unknown>;
}

/** BENCH_CPU_PROF=DIR: a V8 CPU profile of our server child in DIR (`--cpu-prof`). */
function start(script: string, args: string[], profile = false): Promise<Child> {
  const dir = process.env['BENCH_CPU_PROF'];
  const execArgv = profile && dir ? ['--cpu-prof', '--cpu-prof-dir', dir] : [];
  const proc = fork(fileURLToPath(new URL(script, import.meta.url)), args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv });
  return new Promise((resolve, reject) => {
    proc.once('exit', (code) => reject(new Error(`${script} exited with code ${code} before it was ready`)));
    proc.on('message', (m: { type: string }) => {
      if (m.type === 'ready') resolve({ proc, ready: m as Record<string, unknown> });
    });
  });
}

function stop(c: Child): Promise<void> {
  return new Promise((r) => {
    c.proc.once('exit', () => r());
    if (c.proc.connected) c.proc.disconnect();
    setTimeout(() => c.proc.kill('SIGKILL'), 5000).unref();
  });
}

/** The child's CPU time (user + system) so far, in microseconds. */
function cpuOf(c: Child): Promise<number> {
  return new Promise((resolve) => {
    const on = (m: { type: string; micros?: number }) => {
      if (m.type !== 'cpu') return;
      c.proc.off('message', on);
      resolve(m.micros!);
    };
    c.proc.on('message', on);
    c.proc.send({ type: 'cpu' });
  });
}

/** Run op on every worker for ms (after a warm-up), return completed ops per second. */
async function rate(workers: number, warmMs: number, ms: number, op: (w: number) => Promise<void>): Promise<number> {
  let counting = false;
  let done = 0;
  let stopAt = Date.now() + warmMs + ms;
  setTimeout(() => {
    counting = true;
    stopAt = Date.now() + ms;
  }, warmMs);
  const t = { start: 0 };
  await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      while (Date.now() < stopAt) {
        await op(w);
        if (counting) {
          if (t.start === 0) t.start = Date.now();
          done++;
        }
      }
    }),
  );
  return done / ((Date.now() - (t.start || Date.now() - ms)) / 1000);
}

class TlsEcho {
  private buf = Buffer.alloc(0);
  private waiting: (() => void) | undefined;
  private want = 0;
  private constructor(private readonly s: TLSSocket) {
    s.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      if (this.waiting && this.buf.length >= this.want) {
        this.buf = this.buf.subarray(this.want);
        const w = this.waiting;
        this.waiting = undefined;
        w();
      }
    });
  }
  static open(port: number, certPem: string): Promise<TlsEcho> {
    return new Promise((resolve, reject) => {
      const s = tlsConnect({ host: '127.0.0.1', port, ca: certPem, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined }, () => resolve(new TlsEcho(s)));
      s.setNoDelay(true);
      s.once('error', reject);
    });
  }
  echo(body: Buffer): Promise<void> {
    const frame = Buffer.alloc(4 + body.length);
    frame.writeUInt32BE(body.length, 0);
    body.copy(frame, 4);
    this.want = frame.length;
    return new Promise((r) => {
      this.waiting = r;
      this.s.write(frame);
    });
  }
  close(): void {
    this.s.destroy();
  }
}

export async function runDataBench(opts: { quick?: boolean; log?: (s: string) => void } = {}): Promise<Row[]> {
  const ms = opts.quick ? 1500 : 5000;
  const warm = opts.quick ? 300 : 1000;
  const log = opts.log ?? (() => undefined);
  const ours = await start('./data-child.js', [], true);
  const tls = await start('./server-child.js', ['tls']);
  const conns: Connection[] = [];
  const echoes: TlsEcho[] = [];
  try {
    const { port, fingerprint, club, persons } = ours.ready as { port: number; fingerprint: string; club: string; persons: number[] };
    for (let i = 0; i < CONNECTIONS; i++) {
      const c = await connect({ host: '127.0.0.1', port, fingerprint });
      await c.request('auth.login', { club, user: BENCH_ADMIN.user, password: BENCH_ADMIN.password });
      conns.push(c);
    }
    const sample = (await conns[0]!.request('persons.get', { id: persons[0] })).payload;
    const size = Buffer.byteLength(JSON.stringify(sample));
    const { port: tport, certPem } = tls.ready as { port: number; certPem: string };
    for (let i = 0; i < CONNECTIONS; i++) echoes.push(await TlsEcho.open(tport, certPem));
    const body = Buffer.alloc(size, 0x61);
    log(`data: TLS echo of ${size} bytes over ${CONNECTIONS} connections`);
    const echo = await rate(CONNECTIONS, warm, ms, (w) => echoes[w]!.echo(body));
    let pings = 0;
    const pcpu0 = await cpuOf(ours);
    const ping = await rate(CONNECTIONS, warm, ms, async (w) => {
      await conns[w]!.request('ping', {});
      pings++;
    });
    const pingCpu = ((await cpuOf(ours)) - pcpu0) / pings;
    log(`data: ping over the same connections ${Math.round(ping)} req/s (the channel alone)`);
    log(`data: persons.get over ${CONNECTIONS} connections`);
    let gets = 0;
    const cpu0 = await cpuOf(ours);
    const get = await rate(CONNECTIONS, warm, ms, async (w) => {
      await conns[w]!.request('persons.get', { id: persons[w]! });
      gets++;
    });
    const getCpu = ((await cpuOf(ours)) - cpu0) / gets;
    log(`data: server CPU per persons.get ${getCpu.toFixed(1)} us`);
    let n = 0;
    log(`data: persons.update over ${CONNECTIONS} connections`);
    const upd = await rate(CONNECTIONS, warm, ms, async (w) => {
      await conns[w]!.request('persons.update', { id: persons[w]!, notes: `n${n++}` });
    });
    const baselineName = `Node TLS 1.3 echo of ${size} B, ${CONNECTIONS} connections`;
    return [
      { group: 'data', name: `server CPU per persons.get, ${CONNECTIONS} connections`, value: getCpu, unit: 'us', baseline: (pingCpu), baselineName: 'ping over the same connections (the channel alone)', higherIsBetter: false, note: `server child's process.cpuUsage (user + system) over ${gets} requests, warm-up included` },
      { group: 'data', name: `authenticated persons.get, ${CONNECTIONS} connections`, value: Math.round(get), unit: 'req/s', baseline: Math.round(echo), baselineName, higherIsBetter: true, target: '>= 0.7x', met: get >= 0.7 * echo },
      {
        group: 'data',
        name: `persons.update + change-log entry, durable, ${CONNECTIONS} connections`,
        value: Math.round(upd),
        unit: 'req/s',
        baseline: Math.round(echo),
        baselineName,
        higherIsBetter: true,
        note: 'each update commits one transaction (row + hash-chained log entry) with synchronous=FULL: one fsync per update',
      },
    ];
  } finally {
    for (const c of conns) await c.close().catch(() => undefined);
    for (const e of echoes) e.close();
    await stop(ours);
    await stop(tls);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runDataBench({ quick: process.argv.includes('--quick'), log: (s) => process.stderr.write(`${s}\n`) }).then((rows) => {
    for (const r of rows) process.stdout.write(`${r.name}: ${r.value} ${r.unit} vs ${r.baselineName}: ${r.baseline} (${(r.value / r.baseline).toFixed(2)}x)${r.target ? ` target ${r.target}: ${r.met ? 'met' : 'missed'}` : ''}\n`);
  });
}
