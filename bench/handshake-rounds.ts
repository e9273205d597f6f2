/**
 * Full handshakes in interleaved rounds (issue 13): on a noisy machine one figure per server,
 * measured minutes apart, says little; here the servers take turns, round after round, in
 * alternating order, and the median of the per-round ratios is printed. Servers: ours offering
 * version 3 (the SDK's default) and, against the same daemon, only version 2; Node's TLS 1.3
 * server; HTTP/2 over TLS 1.3. Each server child runs with the shipped runtime settings
 * (server-child.ts). No session resumption anywhere. The figure is the server child's CPU time
 * (all threads) per completed handshake.
 * `node dist/bench/handshake-rounds.js [ROUNDS=8] [MS=1500] [--node-keys]` (--node-keys: a fifth
 * server, ours with COMMUSIC_HANDSHAKE_KEYS=node, the node:crypto fallback of the handshake keys).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { connect as h2Connect } from 'node:http2';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { connect } from '../client/connection.js';
import { SERVER_ENV, SERVER_NODE_FLAGS, type FromChild } from './server-child.js';

type Kind = 'ours' | 'tls' | 'h2';
interface Child {
  proc: ChildProcess;
  port: number;
  fingerprint?: string;
  certPem?: string;
  cpu(): Promise<number>;
}

async function start(kind: Kind, extraEnv: Record<string, string> = {}): Promise<Child> {
  const script = fileURLToPath(new URL(kind === 'h2' ? './h2-child.js' : './server-child.js', import.meta.url));
  const proc = fork(script, kind === 'h2' ? [] : [kind], { execArgv: ['--expose-gc', ...SERVER_NODE_FLAGS], env: { ...process.env, ...SERVER_ENV, ...extraEnv }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = await new Promise<Extract<FromChild, { type: 'ready' }>>((resolve, reject) => {
    proc.once('exit', (code) => reject(new Error(`${kind} child exited with ${code}`)));
    proc.on('message', (m: FromChild) => m.type === 'ready' && resolve(m));
  });
  let seq = 0;
  const waiting = new Map<number, (us: number) => void>();
  proc.on('message', (m: FromChild) => {
    if (m.type === 'reply') waiting.get(m.seq)?.(m.cpuMicros ?? 0);
  });
  const cpu = () => new Promise<number>((resolve) => {
    const s = ++seq;
    waiting.set(s, resolve);
    proc.send({ type: 'cpu', seq: s });
  });
  return { proc, port: ready.port, ...(ready.fingerprint ? { fingerprint: ready.fingerprint } : {}), ...(ready.certPem ? { certPem: ready.certPem } : {}), cpu };
}

const HOST = '127.0.0.1';
const handshake: Record<string, (c: Child) => Promise<void>> = {
  'ours v3': (c) => connect({ host: HOST, port: c.port, fingerprint: c.fingerprint! }).then((x) => x.close()),
  'ours v2': (c) => connect({ host: HOST, port: c.port, fingerprint: c.fingerprint!, maxVersion: 2 }).then((x) => x.close()),
  'v3 node': (c) => connect({ host: HOST, port: c.port, fingerprint: c.fingerprint! }).then((x) => x.close()),
  tls: (c) =>
    new Promise((resolve, reject) => {
      const s = tlsConnect({ host: HOST, port: c.port, ca: c.certPem!, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' }, () => {
        if (s.isSessionReused()) reject(new Error('resumed'));
        s.end();
        s.once('close', () => resolve());
      });
      s.on('error', reject);
    }),
  h2: (c) =>
    new Promise((resolve, reject) => {
      const s = h2Connect(`https://${HOST}:${c.port}`, { ca: c.certPem! });
      s.once('connect', () => s.close(() => resolve()));
      s.on('error', reject);
    }),
};

async function measure(c: Child, op: (c: Child) => Promise<void>, ms: number): Promise<number> {
  let stop = false;
  let n = 0;
  const c0 = await c.cpu();
  const loops = Array.from({ length: 16 }, async () => {
    while (!stop) {
      await op(c);
      n++;
    }
  });
  await new Promise((r) => setTimeout(r, ms));
  stop = true;
  await Promise.all(loops);
  return ((await c.cpu()) - c0) / n;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
  const rounds = Number(args[0] ?? 8);
  const ms = Number(args[1] ?? 1500);
  const ours = await start('ours');
  const children: Record<string, Child> = { 'ours v3': ours, 'ours v2': ours, tls: await start('tls'), h2: await start('h2') };
  // --node-keys: also a daemon whose handshake keys and hashes go through node:crypto (the
  // fallback; crypto/handshake-keys.ts), to show what the native addon saves.
  if (process.argv.includes('--node-keys')) children['v3 node'] = await start('ours', { COMMUSIC_HANDSHAKE_KEYS: 'node' });
  const names = Object.keys(children);
  const cpu: Record<string, number[]> = Object.fromEntries(names.map((k) => [k, []]));
  try {
    for (const k of names) await measure(children[k]!, handshake[k]!, ms); // warm-up
    for (let r = 0; r < rounds; r++) {
      for (const k of r % 2 === 0 ? names : [...names].reverse()) cpu[k]!.push(await measure(children[k]!, handshake[k]!, ms));
    }
  } finally {
    for (const c of new Set(Object.values(children))) c.proc.kill();
  }
  for (const k of names) process.stdout.write(`${k.padEnd(8)} server CPU per handshake (us), per round: ${cpu[k]!.map((x) => x.toFixed(0)).join(' ')}; median ${median(cpu[k]!).toFixed(0)}\n`);
  const ratio = (base: string, of: string) => median(cpu[of]!.map((x, i) => cpu[base]![i]! / x)).toFixed(2);
  process.stdout.write(`median of per-round ratios (baseline CPU / ours): v3 vs TLS ${ratio('tls', 'ours v3')}x, vs HTTP/2 ${ratio('h2', 'ours v3')}x; v2 vs TLS ${ratio('tls', 'ours v2')}x, vs HTTP/2 ${ratio('h2', 'ours v2')}x; v2 / v3 ${ratio('ours v2', 'ours v3')}x\n`);
  if (children['v3 node']) process.stdout.write(`v3 with node:crypto keys: vs TLS ${ratio('tls', 'v3 node')}x, vs HTTP/2 ${ratio('h2', 'v3 node')}x; node:crypto keys / native ${ratio('v3 node', 'ours v3')}x\n`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
