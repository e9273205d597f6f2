/**
 * `npm run bench` group "growth" (issue 21): the same club at 1,000 and at 50,000 persons, each
 * person with a membership, an active register assignment (10 registers) and three change-log
 * entries, measured in one run. Each size runs in its own server process (bench/growth-child.ts);
 * the figure is the server's CPU time per request (user + system from the child's
 * process.cpuUsage, so the load generator does not count), requests sent one after another.
 * Figures: a point read, a filtered list (`lastName startsWith`, sorted, 50 rows), a register
 * leader's list and get, the change log of one person (`log.query` by entity and record), a deep
 * page by cursor, a register leader's filtered list; and, without a target, a deep page by
 * offset and the newest 100 change-log entries. Target: at most 3x from 1,000 to 50,000.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connect, type Connection } from '../client/connection.js';
import { GROWTH_ADMIN } from './growth-child.js';
import type { Row } from './row.js';

interface Ready {
  port: number;
  fingerprint: string;
  club: string;
  persons: number[];
  registers: number[];
  maxPersonId: number;
}

class Child {
  private waiting: Array<(m: { micros: number; rss: number }) => void> = [];
  private constructor(readonly proc: ChildProcess, readonly ready: Ready) {
    proc.on('message', (m: { type: string; micros: number; rss: number }) => {
      if (m.type === 'cpu') this.waiting.shift()?.(m);
    });
  }
  static start(size: number): Promise<Child> {
    const proc = fork(fileURLToPath(new URL('./growth-child.js', import.meta.url)), [String(size)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: ['--expose-gc'] });
    return new Promise((resolve, reject) => {
      proc.once('exit', (code) => reject(new Error(`growth-child exited with code ${code} before it was ready`)));
      proc.on('message', (m: { type: string } & Ready) => {
        if (m.type === 'ready') {
          proc.removeAllListeners('exit');
          resolve(new Child(proc, m));
        }
      });
    });
  }
  cpu(gc = false): Promise<{ micros: number; rss: number }> {
    return new Promise((r) => {
      this.waiting.push(r);
      this.proc.send({ type: 'cpu', gc });
    });
  }
  stop(): Promise<void> {
    return new Promise((r) => {
      this.proc.once('exit', () => r());
      if (this.proc.connected) this.proc.disconnect();
      setTimeout(() => this.proc.kill('SIGKILL'), 5000).unref();
    });
  }
}

type Op = (i: number) => Promise<unknown>;

const cursorAt = (id: number) => Buffer.from(JSON.stringify({ v: [], id })).toString('base64url');

/** Server CPU microseconds per request of each figure at one size. */
interface ExportFigures {
  rows: number;
  baseline: number;
  peak: number;
  after: number;
  ms: number;
}

/**
 * A streamed `persons.export` of the whole club (issue 10's `stream: true`), with the server's
 * RSS sampled every 50 ms during it: baseline and after are taken after a full GC.
 */
async function exportMemory(child: Child, admin: Connection): Promise<ExportFigures> {
  const baseline = (await child.cpu(true)).rss;
  let peak = baseline;
  let done = false;
  const sampler = (async () => {
    while (!done) {
      peak = Math.max(peak, (await child.cpu()).rss);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  const t0 = Date.now();
  const r = await admin.request('persons.export', { stream: true }, { timeoutMs: 300_000 });
  let rows = 0;
  for await (const c of r.download!) for (const b of Buffer.from(c)) if (b === 0x0a) rows++;
  const ms = Date.now() - t0;
  done = true;
  await sampler;
  const after = (await child.cpu(true)).rss;
  return { rows, baseline, peak, after, ms };
}

async function measure(size: number, reps: number, log: (s: string) => void): Promise<{ cpu: Map<string, number>; exp: ExportFigures }> {
  const t0 = Date.now();
  const child = await Child.start(size);
  log(`growth: ${size} persons seeded and serving in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const conns: Connection[] = [];
  try {
    const { port, fingerprint, club, persons, registers, maxPersonId } = child.ready;
    const open = async (user: string, password: string) => {
      const c = await connect({ host: '127.0.0.1', port, fingerprint });
      conns.push(c);
      await c.request('auth.login', { club, user, password });
      return c;
    };
    const admin = await open(GROWTH_ADMIN.user, GROWTH_ADMIN.password);
    await admin.request('users.create', { username: 'leader', password: 'leader-password-123', role: 'registerLeader', registers: [registers[0]] });
    const leader = await open('leader', 'leader-password-123');
    const filtered = { filters: [{ field: 'lastName', op: 'startsWith', value: 'M' }], sort: [{ field: 'lastName' }], limit: 50 };
    const ops: Array<[string, Op]> = [
      ['point read (persons.get)', (i) => admin.request('persons.get', { id: persons[i % persons.length]! })],
      ['filtered list (lastName startsWith, sorted, 50 rows)', () => admin.request('persons.list', filtered)],
      ["register leader's persons.list, 50 rows", () => leader.request('persons.list', { limit: 50 })],
      ["register leader's persons.get", (i) => leader.request('persons.get', { id: persons[i % persons.length]! })],
      ['change log of one person (log.query entity + record)', (i) => admin.request('log.query', { entity: 'persons', recordId: persons[i % persons.length]! })],
      ['deep page by cursor (50 rows near the end)', () => admin.request('persons.list', { cursor: cursorAt(maxPersonId - 60), limit: 50 })],
      ["register leader's filtered list", () => leader.request('persons.list', filtered)],
      ['deep page by offset (no target)', () => admin.request('persons.list', { offset: Math.max(0, size - 60), limit: 50 })],
      ['log.query newest 100 (no target)', () => admin.request('log.query', { descending: true, limit: 100 })],
    ];
    const out = new Map<string, number>();
    for (const [name, op] of ops) {
      for (let i = 0; i < 20; i++) await op(i);
      const a = await child.cpu();
      for (let i = 0; i < reps; i++) await op(i);
      const b = await child.cpu();
      out.set(name, (b.micros - a.micros) / reps);
    }
    const exp = await exportMemory(child, admin);
    log(`growth: persons.export of ${exp.rows} rows in ${exp.ms} ms; RSS ${(exp.baseline / 2 ** 20).toFixed(1)} -> peak ${(exp.peak / 2 ** 20).toFixed(1)} -> after ${(exp.after / 2 ** 20).toFixed(1)} MiB`);
    return { cpu: out, exp };
  } finally {
    for (const c of conns) await c.close().catch(() => undefined);
    await child.stop();
  }
}

export async function runGrowthBench(opts: { quick?: boolean; log?: (s: string) => void } = {}): Promise<Row[]> {
  const log = opts.log ?? ((s: string) => process.stderr.write(`${s}\n`));
  const reps = opts.quick ? 100 : 400;
  const small = 1000;
  const large = opts.quick ? 10_000 : 50_000;
  const { cpu: a, exp: ea } = await measure(small, reps, log);
  const { cpu: b, exp: eb } = await measure(large, reps, log);
  const rows: Row[] = [];
  for (const [name, base] of a) {
    const v = b.get(name)!;
    const noTarget = name.includes('no target');
    rows.push({
      group: 'growth',
      name: `${name}: server CPU per request at ${large.toLocaleString('en-US')} persons`,
      value: Math.round(v),
      unit: 'us',
      baseline: Math.round(base),
      baselineName: `${small.toLocaleString('en-US')} persons`,
      higherIsBetter: false,
      ...(noTarget ? {} : { target: '<= 3x growth', met: v <= 3 * base }),
    });
  }
  const mib = (x: number) => Math.round((x / 2 ** 20) * 10) / 10;
  const growth = eb.peak - eb.baseline;
  rows.push({
    group: 'growth',
    name: `persons.export stream of ${eb.rows.toLocaleString('en-US')} persons: server RSS growth during it`,
    value: mib(growth),
    unit: 'MiB',
    baseline: mib(ea.peak - ea.baseline),
    baselineName: `${ea.rows.toLocaleString('en-US')} persons`,
    higherIsBetter: false,
    target: '<= 64 MiB',
    met: growth <= 64 * 2 ** 20 && eb.rows === large,
    note: `export took ${eb.ms} ms (${ea.ms} ms at ${ea.rows} rows); RSS ${mib(eb.baseline)} MiB before, ${mib(eb.peak)} peak, ${mib(eb.after)} after (baseline and after measured after a full GC)`,
  });
  rows.push({
    group: 'growth',
    name: `RSS after the ${eb.rows.toLocaleString('en-US')}-person export vs before`,
    value: mib(eb.after),
    unit: 'MiB',
    baseline: mib(eb.baseline),
    baselineName: 'RSS before the export',
    higherIsBetter: false,
    target: 'within 10 %',
    met: Math.abs(eb.after - eb.baseline) <= 0.1 * eb.baseline,
  });
  return rows;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runGrowthBench({ quick: process.argv.includes('--quick') }).then((rows) => {
    for (const r of rows) process.stdout.write(`${r.name}: ${r.value} ${r.unit} vs ${r.baselineName}: ${r.baseline} (${(r.value / r.baseline).toFixed(2)}x growth)${r.target ? ` target ${r.target}: ${r.met ? 'met' : 'missed'}` : ''}\n`);
  });
}
