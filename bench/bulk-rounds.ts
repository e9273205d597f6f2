/**
 * The 1 MiB echo in interleaved rounds (issue 13 point 2: server CPU per MiB at least 0.9x the
 * raw TLS 1.3 echo). One figure per server, measured seconds apart, says little on a noisy
 * machine and in a garbage-collection regime that flips from run to run; here the servers take
 * turns, round after round, in alternating order, each echoing 1 MiB payloads over one
 * connection for MS milliseconds, and the median of the per-round ratios is printed.
 *
 * `node dist/bench/bulk-rounds.js [ROUNDS=8] [MS=1500] [--old DIR] [--gc]`
 * - servers: ours (this build), the TLS echo (bench/server-child.ts), and with `--old DIR` a
 *   second daemon started from another build's `DIR/bench/server-child.js` (e.g. a copy of
 *   dist/ made before a change) to compare old and new on the same client;
 * - `--gc`: each server child also runs with `--trace-gc`, and the scavenges and mark-compacts
 *   of each measured window are counted from its output;
 * - each child runs with the shipped runtime settings (server-child.ts) plus
 *   BENCH_SERVER_NODE_FLAGS, as in bench/channel.ts.
 * The figure is the server child's CPU time (all threads) per MiB echoed (1 MiB each way).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OursClient, TlsClient, type EchoClient } from './channel.js';
import { SERVER_ENV, SERVER_NODE_FLAGS, type FromChild } from './server-child.js';

interface Child {
  name: string;
  proc: ChildProcess;
  open(): Promise<EchoClient>;
  cpu(): Promise<number>;
  /** Scavenges and mark-compacts seen so far (with --gc). */
  gcs: { scavenge: number; markCompact: number };
}

async function start(name: string, script: string, kind: 'ours' | 'tls', traceGc: boolean): Promise<Child> {
  const extra = (process.env.BENCH_SERVER_NODE_FLAGS ?? '').split(' ').filter((f) => f !== '');
  const execArgv = ['--expose-gc', ...SERVER_NODE_FLAGS, ...extra, ...(traceGc ? ['--trace-gc'] : [])];
  const proc = fork(script, [kind], { execArgv, env: { ...process.env, ...SERVER_ENV }, stdio: ['ignore', traceGc ? 'pipe' : 'inherit', 'inherit', 'ipc'] });
  const gcs = { scavenge: 0, markCompact: 0 };
  let tail = '';
  proc.stdout?.setEncoding('utf8').on('data', (s: string) => {
    const lines = (tail + s).split('\n');
    tail = lines.pop()!;
    for (const l of lines) {
      if (l.includes(': Scavenge')) gcs.scavenge++;
      else if (l.includes(': Mark-Compact')) gcs.markCompact++;
    }
  });
  const ready = await new Promise<Extract<FromChild, { type: 'ready' }>>((res, rej) => {
    proc.once('exit', (code) => rej(new Error(`${name} child exited with ${code}`)));
    proc.on('message', (m: FromChild) => m.type === 'ready' && res(m));
  });
  let seq = 0;
  const waiting = new Map<number, (us: number) => void>();
  proc.on('message', (m: FromChild) => {
    if (m.type === 'reply') waiting.get(m.seq)?.(m.cpuMicros ?? 0);
  });
  const cpu = () =>
    new Promise<number>((res) => {
      const s = ++seq;
      waiting.set(s, res);
      proc.send({ type: 'cpu', seq: s });
    });
  const open = (): Promise<EchoClient> => (kind === 'ours' ? OursClient.open(ready.port, ready.fingerprint!) : TlsClient.open(ready.port, ready.certPem!));
  return { name, proc, open, cpu, gcs };
}

interface Window {
  cpuPerMiB: number;
  scavenge: number;
  markCompact: number;
}

async function measure(c: Child, body: Buffer, ms: number): Promise<Window> {
  const client = await c.open();
  try {
    for (let k = 0; k < 20; k++) await client.echo(body); // the connection's own warm-up
    const g0 = { ...c.gcs };
    const c0 = await c.cpu();
    const stopAt = performance.now() + ms;
    let n = 0;
    while (performance.now() < stopAt) {
      await client.echo(body);
      n++;
    }
    const used = (await c.cpu()) - c0;
    return { cpuPerMiB: used / n, scavenge: c.gcs.scavenge - g0.scavenge, markCompact: c.gcs.markCompact - g0.markCompact };
  } finally {
    await client.close();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const oldAt = argv.indexOf('--old');
  const oldDir = oldAt >= 0 ? argv[oldAt + 1] : undefined;
  const traceGc = argv.includes('--gc');
  const nums = argv.filter((a, i) => !a.startsWith('--') && !(oldAt >= 0 && i === oldAt + 1));
  const rounds = Number(nums[0] ?? 8);
  const ms = Number(nums[1] ?? 1500);
  const here = fileURLToPath(new URL('./server-child.js', import.meta.url));
  const children: Child[] = [await start('ours', here, 'ours', traceGc)];
  if (oldDir) children.push(await start('old', resolve(oldDir, 'bench/server-child.js'), 'ours', traceGc));
  children.push(await start('tls', here, 'tls', traceGc));
  const body = randomBytes(1024 * 1024);
  const runs: Record<string, Window[]> = Object.fromEntries(children.map((c) => [c.name, []]));
  try {
    for (const c of children) await measure(c, body, ms); // warm-up: V8 optimises the hot paths
    for (let r = 0; r < rounds; r++) {
      for (const c of r % 2 === 0 ? children : [...children].reverse()) runs[c.name]!.push(await measure(c, body, ms));
    }
  } finally {
    for (const c of children) c.proc.kill();
  }
  const out = (s: string) => process.stdout.write(`${s}\n`);
  for (const c of children) {
    const w = runs[c.name]!;
    const gc = traceGc ? `; mark-compacts per round ${w.map((x) => x.markCompact).join(' ')}, scavenges ${w.map((x) => x.scavenge).join(' ')}` : '';
    out(`${c.name.padEnd(4)} server CPU per MiB (us), per round: ${w.map((x) => x.cpuPerMiB.toFixed(0)).join(' ')}; median ${median(w.map((x) => x.cpuPerMiB)).toFixed(0)}${gc}`);
  }
  const ratio = (base: string, of: string) => median(runs[of]!.map((x, i) => runs[base]![i]!.cpuPerMiB / x.cpuPerMiB)).toFixed(2);
  out(`median of per-round ratios (TLS CPU / ours): ours ${ratio('tls', 'ours')}x${oldDir ? `, old ${ratio('tls', 'old')}x; old CPU / ours ${ratio('old', 'ours')}x` : ''}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
