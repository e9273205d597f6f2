/**
 * `npm run bench` group "data" (issue 4, point 7; issue 13): authenticated `persons.get` of one
 * person and `persons.update` of one person (with its change-log entry, committed durably: WAL
 * with synchronous=FULL) over 8 connections, next to (a) an HTTP/2-over-TLS 1.3 server with
 * JSON bodies doing the same reads and writes through the same storage layer (bench/h2-child.ts)
 * and (b) Node's TLS 1.3 echo of a message of the same size, measured in the same run. Each
 * figure gives the rate and the server child's CPU time per request. Each server runs in its own
 * child process; this process generates the load. Targets: >= 2x HTTP/2 (issue 13), get >= 0.7x
 * the echo (issue 4).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { connect, type Connection } from '../client/connection.js';
import { H2Client } from './channel.js';
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

/** Asks a child for its CPU time (user + system, µs); data-child and the echo/HTTP/2 children answer in their own shapes. */
function cpuOf(c: Child): Promise<number> {
  return new Promise((resolve) => {
    const seq = Math.floor(Math.random() * 1e9);
    const on = (m: { type: string; seq?: number; micros?: number; cpuMicros?: number }) => {
      if (m.type === 'cpu' || (m.type === 'reply' && m.seq === seq)) {
        c.proc.off('message', on);
        resolve(m.micros ?? m.cpuMicros ?? 0);
      }
    };
    c.proc.on('message', on);
    c.proc.send({ type: 'cpu', seq });
  });
}

/** The group-commit counters of our server child's club store. */
function writesOf(c: Child): Promise<{ groups: number; committed: number; failed: number; largest: number }> {
  return new Promise((resolve) => {
    const on = (m: { type: string; stats?: { groups: number; committed: number; failed: number; largest: number } }) => {
      if (m.type !== 'writes') return;
      c.proc.off('message', on);
      resolve(m.stats!);
    };
    c.proc.on('message', on);
    c.proc.send({ type: 'writes' });
  });
}

interface Measured {
  rate: number;
  /** The server child's CPU time per completed operation, µs. */
  cpuPerOp: number;
}

/** Runs op on every worker for a warm-up and then `ms`; ops completed in the window per second, and server CPU per op. */
async function measure(server: Child, workers: number, warmMs: number, ms: number, op: (w: number) => Promise<void>): Promise<Measured> {
  let counting = false;
  let done = 0;
  let stopAt = Infinity;
  const loops = Array.from({ length: workers }, async (_, w) => {
    while (performance.now() < stopAt) {
      await op(w);
      if (counting && performance.now() <= stopAt) done++;
    }
  });
  await new Promise((r) => setTimeout(r, warmMs));
  const c0 = await cpuOf(server);
  const t0 = performance.now();
  counting = true;
  stopAt = t0 + ms;
  await new Promise((r) => setTimeout(r, ms));
  const t1 = performance.now();
  const c1 = await cpuOf(server);
  await Promise.all(loops);
  return { rate: (done * 1000) / (t1 - t0), cpuPerOp: done > 0 ? (c1 - c0) / done : Number.NaN };
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
  const ms = opts.quick ? 1500 : 4000;
  const warm = opts.quick ? 300 : 1000;
  const log = opts.log ?? (() => undefined);
  const ours = await start('./data-child.js', [], true);
  const tls = await start('./server-child.js', ['tls']);
  const h2 = await start('./h2-child.js', []);
  const conns: Connection[] = [];
  const echoes: TlsEcho[] = [];
  const h2s: H2Client[] = [];
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
    const hr = h2.ready as { port: number; certPem: string; club: string; persons: number[] };
    const tokens: string[] = [];
    for (let i = 0; i < CONNECTIONS; i++) {
      const c = await H2Client.open(hr.port, hr.certPem);
      // One login per connection, as ours logs in on each connection.
      tokens.push(((await c.call('/auth.login', { club: hr.club, user: BENCH_ADMIN.user, password: BENCH_ADMIN.password })) as { token: string }).token);
      h2s.push(c);
    }
    const tok = (w: number) => tokens[w]!;
    const body = Buffer.alloc(size, 0x61);
    log(`data: TLS echo of ${size} bytes over ${CONNECTIONS} connections`);
    const echo = await measure(tls, CONNECTIONS, warm, ms, (w) => echoes[w]!.echo(body));
    const ping = await measure(ours, CONNECTIONS, warm, ms, async (w) => {
      await conns[w]!.request('ping', {});
    });
    log(`data: ping over the same connections ${Math.round(ping.rate)} req/s, ${ping.cpuPerOp.toFixed(1)} us CPU/req (the channel alone)`);
    log(`data: persons.get over ${CONNECTIONS} connections`);
    const get = await measure(ours, CONNECTIONS, warm, ms, async (w) => {
      await conns[w]!.request('persons.get', { id: persons[w]! });
    });
    const h2get = await measure(h2, CONNECTIONS, warm, ms, async (w) => {
      const r = (await h2s[w]!.call('/persons.get', { id: hr.persons[w]! }, tok(w))) as { record?: unknown };
      if (!r.record) throw new Error('HTTP/2 persons.get failed');
    });
    let n = 0;
    log(`data: persons.update over ${CONNECTIONS} connections`);
    const w0 = await writesOf(ours);
    const upd = await measure(ours, CONNECTIONS, warm, ms, async (w) => {
      await conns[w]!.request('persons.update', { id: persons[w]!, notes: `n${n++}` });
    });
    const w1 = await writesOf(ours);
    const perCommit = (w1.committed - w0.committed) / Math.max(1, w1.groups - w0.groups);
    const h2upd = await measure(h2, CONNECTIONS, warm, ms, async (w) => {
      const r = (await h2s[w]!.call('/persons.update', { id: hr.persons[w]!, notes: `n${n++}` }, tok(w))) as { record?: unknown };
      if (!r.record) throw new Error('HTTP/2 persons.update failed');
    });
    log(`data: get ours ${Math.round(get.rate)}/s ${get.cpuPerOp.toFixed(0)} us, h2 ${Math.round(h2get.rate)}/s ${h2get.cpuPerOp.toFixed(0)} us; update ours ${Math.round(upd.rate)}/s ${upd.cpuPerOp.toFixed(0)} us, h2 ${Math.round(h2upd.rate)}/s ${h2upd.cpuPerOp.toFixed(0)} us`);
    const echoName = `Node TLS 1.3 echo of ${size} B, ${CONNECTIONS} connections`;
    const h2Name = `HTTP/2 over TLS 1.3, JSON, same store, ${CONNECTIONS} connections`;
    const rows: Row[] = [];
    const add = (name: string, o: Measured, b: Measured, baselineName: string, target: number | undefined, note?: string) => {
      rows.push({ group: 'data', name: `${name}: rate`, value: Math.round(o.rate), unit: 'req/s', baseline: Math.round(b.rate), baselineName, higherIsBetter: true,
        ...(target ? { target: `>= ${target}x`, met: o.rate / b.rate >= target } : {}), ...(note ? { note } : {}) });
      rows.push({ group: 'data', name: `${name}: server CPU/req`, value: o.cpuPerOp, unit: 'us', baseline: b.cpuPerOp, baselineName, higherIsBetter: false,
        ...(target ? { target: `>= ${target}x`, met: b.cpuPerOp / o.cpuPerOp >= target } : {}) });
    };
    rows.push({ group: 'data', name: `server CPU per persons.get, ${CONNECTIONS} connections`, value: get.cpuPerOp, unit: 'us', baseline: ping.cpuPerOp, baselineName: 'ping over the same connections (the channel alone)', higherIsBetter: false,
      note: "server child's process.cpuUsage (user + system) over the measured window, divided by the requests completed in it" });
    add(`authenticated persons.get, ${CONNECTIONS} connections`, get, h2get, h2Name, 2);
    add(`authenticated persons.get, ${CONNECTIONS} connections`, get, echo, echoName, 0.7);
    add(`persons.update + change-log entry, durable, ${CONNECTIONS} connections`, upd, h2upd, h2Name, 2,
      `each update: row + signed, hash-chained log entry, synchronous=FULL; HTTP/2 commits each in its own transaction (one fsync per update); ours groups concurrent updates (storage/club/write-group.ts): ${perCommit.toFixed(1)} updates per commit on average (largest ${w1.largest}), warm-up included`);
    add(`persons.update + change-log entry, durable, ${CONNECTIONS} connections`, upd, echo, echoName, undefined);
    return rows;
  } finally {
    for (const c of conns) await c.close().catch(() => undefined);
    for (const e of echoes) e.close();
    for (const c of h2s) await c.close().catch(() => undefined);
    await stop(ours);
    await stop(tls);
    await stop(h2);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runDataBench({ quick: process.argv.includes('--quick'), log: (s) => process.stderr.write(`${s}\n`) }).then((rows) => {
    for (const r of rows) process.stdout.write(`${r.name}: ${r.value.toFixed(1)} ${r.unit} vs ${r.baselineName}: ${r.baseline.toFixed(1)}${r.target ? ` target ${r.target}: ${r.met ? 'met' : 'missed'}` : ''}\n`);
  });
}
