/**
 * `npm run fuzz [-- --frames N] [-- --seed S] [-- --concurrency C] [-- --only hello,message,...]`: the long fuzz run of
 * issue 18 against a daemon in a child process (bench/fuzz-engine.ts). Defaults: 1,000,000
 * frames, a random seed. Prints the seed first (rerun with --seed to get the same inputs),
 * every failing input as hex as it is found, and at the end the daemon's RSS at the start, its
 * peak and at the end (after a GC). Exits 1 when anything failed.
 */
import { randomInt } from 'node:crypto';
import { runFuzz } from './fuzz-engine.js';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`--${name}=`));
  return eq?.slice(name.length + 3);
}

function intArg(name: string, fallback: number): number {
  const v = arg(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) {
    process.stderr.write(`--${name} must be a non-negative integer\n`);
    process.exit(2);
  }
  return n;
}

const mib = (b: number): string => `${(b / 1048576).toFixed(1)} MiB`;

async function main(): Promise<void> {
  const frames = intArg('frames', 1_000_000);
  const seed = intArg('seed', randomInt(0, 2 ** 32));
  const concurrency = intArg('concurrency', 16);
  const log = (l: string): void => void process.stdout.write(`${l}\n`);
  log(`fuzz: seed ${seed}, ${frames} frames, ${concurrency} connections at once`);
  const only = arg('only')?.split(',').filter((k) => k.length > 0);
  const r = await runFuzz({ frames, seed, concurrency, log, progressEvery: Math.max(1000, Math.floor(frames / 50)), ...(only ? { only } : {}) });
  log('');
  log(`seed ${r.seed}: ${r.frames} frames in ${r.cases} cases, ${(r.elapsedMs / 1000).toFixed(1)} s`);
  log(`frames by kind: ${JSON.stringify(r.byKind)}`);
  log(`ERROR codes answered: ${JSON.stringify(r.errorCodes)}`);
  log(`ban checks: ${r.banChecks}, missed: ${r.bansMissed}; connections refused at accept: ${r.refusedAtAccept}`);
  if (r.daemonStats) log(`daemon: ${JSON.stringify(r.daemonStats)}`);
  log(`daemon RSS: start ${mib(r.rss.start)}, after warm-up ${mib(r.rss.warm)}, peak ${mib(r.rss.peak)}, end ${mib(r.rss.end)} (after GC)`);
  log(`daemon JS heap in use: start ${mib(r.heap.startUsed)}, end ${mib(r.heap.endUsed)}; external (buffers): start ${mib(r.heap.startExternal)}, end ${mib(r.heap.endExternal)} (after GC)`);
  log(`daemon exited: ${r.daemonExited ? 'YES' : 'no'}; INTERNAL answers: ${r.errorCodes.INTERNAL ?? 0}; failures: ${r.failures.length}`);
  process.exitCode = r.failures.length > 0 ? 1 : 0;
}

main().catch((e: unknown) => {
  process.stderr.write(`fuzz failed: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exit(2);
});
