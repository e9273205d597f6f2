/**
 * `npm run fuzz [-- --frames N] [-- --seed S] [-- --concurrency C] [-- --only hello,message,...]
 * [-- --segment F] [-- --malloc-arena-max N]`: the long fuzz run of issue 18 against a daemon in a
 * child process (bench/fuzz-engine.ts). Defaults: 1,000,000 frames, a random seed, segments of a
 * tenth of the frames. Prints the seed first (rerun with --seed to get the same inputs), every
 * failing input as hex as it is found, one memory line per segment (after a forced GC in the
 * target: RSS, JS heap, external, arrayBuffers and the daemon's counts of stores, connections,
 * bans, sessions), and at the end a segment table, RSS start/peak/end and the memory verdict
 * (MemoryVerdict in bench/fuzz-engine.ts). `--malloc-arena-max N` sets MALLOC_ARENA_MAX in the
 * target's environment (glibc malloc arenas). Exits 1 when anything failed or memory is rising.
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
  const segmentFrames = intArg('segment', Math.max(1000, Math.ceil(frames / 10)));
  const arenas = arg('malloc-arena-max');
  if (arenas !== undefined && !/^[1-9][0-9]{0,2}$/.test(arenas)) {
    process.stderr.write('--malloc-arena-max must be an integer from 1 to 999\n');
    process.exit(2);
  }
  if (arenas !== undefined) log(`target environment: MALLOC_ARENA_MAX=${arenas}`);
  const r = await runFuzz({
    frames,
    seed,
    concurrency,
    log,
    segmentFrames,
    progressEvery: Math.max(1000, Math.floor(frames / 50)),
    ...(only ? { only } : {}),
    ...(arenas !== undefined ? { targetEnv: { MALLOC_ARENA_MAX: arenas } } : {}),
  });
  log('');
  log(`seed ${r.seed}: ${r.frames} frames in ${r.cases} cases, ${(r.elapsedMs / 1000).toFixed(1)} s`);
  log(`frames by kind: ${JSON.stringify(r.byKind)}`);
  log(`ERROR codes answered: ${JSON.stringify(r.errorCodes)}`);
  log(`ban checks: ${r.banChecks}, missed: ${r.bansMissed}; connections refused at accept: ${r.refusedAtAccept}`);
  if (r.daemonStats) log(`daemon: ${JSON.stringify(r.daemonStats)}`);
  log(`daemon RSS: start ${mib(r.rss.start)}, after warm-up ${mib(r.rss.warm)}, peak ${mib(r.rss.peak)}, end ${mib(r.rss.end)} (after GC)`);
  log(`daemon JS heap in use: start ${mib(r.heap.startUsed)}, end ${mib(r.heap.endUsed)}; external (buffers): start ${mib(r.heap.startExternal)}, end ${mib(r.heap.endExternal)} (after GC)`);
  log('');
  log('| segment | frames | RSS after GC | segment peak | RSS anon | JS heap used | external | arrayBuffers | stores open | clubs | connections | bans | tracked sources |');
  log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  r.segments.forEach((g, i) => {
    const c = g.mem.counts;
    log(
      `| ${i + 1} | ${g.frames.toLocaleString('en')} | ${mib(g.mem.rss)} | ${mib(g.peakRss)} | ${mib(g.mem.rssAnon)} | ${mib(g.mem.heapUsed)} | ${mib(g.mem.external)} | ${mib(g.mem.arrayBuffers)} | ` +
        `${c?.storesOpen ?? '?'} | ${c?.clubs ?? '?'} | ${c?.connections ?? '?'} | ${c?.bans ?? '?'} | ${c?.trackedSources ?? '?'} |`,
    );
  });
  if (r.startMem) log(`target MALLOC_ARENA_MAX: ${r.startMem.mallocArenaMax === '' ? 'unset (glibc default: 8 per core)' : r.startMem.mallocArenaMax}`);
  const v = r.memory;
  if (v) {
    log(`memory verdict: ${v.verdict.toUpperCase()} (rule: ${v.rule})`);
    if (v.verdict !== 'insufficient') {
      log(`  RSS: last ${mib(v.rssLast)}, later-half median ${mib(v.rssMedian)}; JS heap+external: last ${mib(v.jsLast)}, median ${mib(v.jsMedian)}; RSS slope ${(v.slopePer100k / 1048576).toFixed(2)} MiB per 100,000 frames`);
    }
  }
  log(`daemon exited: ${r.daemonExited ? 'YES' : 'no'}; INTERNAL answers: ${r.errorCodes.INTERNAL ?? 0}; failures: ${r.failures.length}`);
  process.exitCode = r.failures.length > 0 || v?.verdict === 'rising' ? 1 : 0;
}

main().catch((e: unknown) => {
  process.stderr.write(`fuzz failed: ${(e as Error)?.stack ?? String(e)}\n`);
  process.exit(2);
});
