/**
 * A socket-level protocol fuzzer (issue 18). It speaks CMSP from the spec against a daemon in a
 * child process (bench/fuzz-target.ts) and sends "frames": mutated ClientHellos, mutated
 * messages inside valid records, random command payloads after a login, stream messages, and
 * tampered records. It checks that the daemon process never exits, never answers INTERNAL,
 * always answers or closes (a sentinel ping closes every batch), and bans offenders (an HTTP
 * request from a fresh address must make the next connection from it be refused at accept).
 *
 * Deterministic per seed: the same seed gives the same inputs (the interleaving of concurrent
 * connections, and so the daemon's reactions, may differ). Every failing input is reported as
 * hex: the raw bytes for handshake cases, the record plaintexts for cases after the handshake.
 *
 * Each connection uses its own source address from 127.1.0.0/16 (bans last 1 s in the target,
 * so addresses can be reused); ban checks use 127.2.0.0/16, each address once.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { encodeMessage } from '../protocol/messages.js';
import { type FromTarget, type TargetMem, type TargetStats, type ToTarget } from './fuzz-shared.js';
import { MemoryVerdict, SegmentSample, memoryVerdict } from './fuzz-memory.js';
import { Rng } from './fuzz-inputs.js';
import { flushAndSettle, handshake, sealData } from './fuzz-wire.js';
import { CaseKind, CaseResult, Ctx, FuzzFailure, caseBan, caseHello, caseSession } from './fuzz-cases.js';

export { type FuzzFailure } from './fuzz-cases.js';
export { memoryVerdict, type SegmentSample, type MemoryVerdict } from './fuzz-memory.js';
export { Rng, mutate, randomValue, randomMap } from './fuzz-inputs.js';

export interface FuzzOptions {
  frames: number;
  seed: number;
  /** Connections driven at once. */
  concurrency?: number;
  /** Progress and failure lines. */
  log?: (line: string) => void;
  /** Print a progress line every this many frames (0: never). */
  progressEvery?: number;
  /** Run only these case kinds (default: all). */
  only?: string[];
  /**
   * Frames per memory segment (default: a tenth of the frames, at least 1,000). At the end of each
   * segment the fuzzer lets the running cases finish, waits for the daemon to drop their
   * connections, forces a GC in the target and records a SegmentSample.
   */
  segmentFrames?: number;
  /** Extra environment for the target process, e.g. `{ MALLOC_ARENA_MAX: '2' }`. */
  targetEnv?: Record<string, string>;
}

export interface FuzzReport {
  seed: number;
  frames: number;
  cases: number;
  byKind: Record<string, number>;
  /** ERROR codes the daemon answered, with counts. */
  errorCodes: Record<string, number>;
  failures: FuzzFailure[];
  daemonExited: boolean;
  banChecks: number;
  bansMissed: number;
  refusedAtAccept: number;
  /** Daemon RSS in bytes: idle at the start, after the warm-up (a tenth of the frames, at most 20,000), the peak, and at the end after a GC. */
  rss: { start: number; warm: number; peak: number; end: number };
  /** The daemon's JS heap in use and external (Buffer) memory at the start and at the end, both after a GC. */
  heap: { startUsed: number; startExternal: number; endUsed: number; endExternal: number };
  elapsedMs: number;
  daemonStats?: TargetStats;
  /** One sample per segment (see FuzzOptions.segmentFrames), and the verdict over them. */
  segments: SegmentSample[];
  memory?: MemoryVerdict;
  /** The target's idle sample before the first frame and its final one (after a GC). */
  startMem?: TargetMem;
  endMem?: TargetMem;
}

// ---- the run --------------------------------------------------------------------------------

/** Daemon log lines (it logs errors only) that mean a fault: the connection guard fired, or a command failed (INTERNAL). */
const FAULT_LINE = /"message":"(connection handler failed|command failed|accepting a connection failed)"/;

function startTarget(onFault: (line: string) => void, env: Record<string, string> = {}): Promise<{ child: ChildProcess; ready: Extract<FromTarget, { type: 'ready' }>; stderr: string[] }> {
  const child = fork(new URL('./fuzz-target.js', import.meta.url), [], { execArgv: ['--expose-gc'], env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  const stderr: string[] = [];
  let partial = '';
  child.stderr!.on('data', (d: Buffer) => {
    const text = partial + d.toString('utf8');
    const lines = text.split('\n');
    partial = lines.pop()!;
    for (const l of lines) {
      stderr.push(l);
      if (stderr.length > 200) stderr.shift();
      if (FAULT_LINE.test(l)) onFault(l);
    }
  });
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`fuzz target exited during start (${code}): ${stderr.join('\n')}`)));
    child.on('message', (m: FromTarget) => {
      if (m.type === 'ready') resolve({ child, ready: m, stderr });
    });
  });
}

/** Runs the fuzzer; resolves with a report (it does not throw for findings). */
export async function runFuzz(opts: FuzzOptions): Promise<FuzzReport> {
  const log = opts.log ?? (() => undefined);
  const started = Date.now();
  const faults: string[] = [];
  const { child, ready, stderr } = await startTarget((line) => {
    faults.push(line);
    log(`FAILURE fault: ${line}`);
  }, opts.targetEnv);
  let exited = false;
  let seq = 1;
  const waiting = new Map<number, (r: Extract<FromTarget, { type: 'reply' }>) => void>();
  child.on('message', (m: FromTarget) => {
    if (m.type !== 'reply') return;
    waiting.get(m.seq)?.(m);
    waiting.delete(m.seq);
  });
  const exitPromise = new Promise<void>((r) =>
    child.once('exit', () => {
      exited = true;
      for (const w of waiting.values()) w({ type: 'reply', seq: 0 });
      waiting.clear();
      r();
    }),
  );
  const askTarget = (m: ToTarget): Promise<Extract<FromTarget, { type: 'reply' }>> => {
    if (exited) return Promise.resolve({ type: 'reply', seq: 0 });
    const s = seq++;
    return new Promise((resolve) => {
      waiting.set(s, resolve);
      child.send({ ...m, seq: s });
    });
  };
  const report: FuzzReport = {
    seed: opts.seed,
    frames: 0,
    cases: 0,
    byKind: {},
    errorCodes: {},
    failures: [],
    daemonExited: false,
    banChecks: 0,
    bansMissed: 0,
    refusedAtAccept: 0,
    rss: { start: 0, warm: 0, peak: 0, end: 0 },
    heap: { startUsed: 0, startExternal: 0, endUsed: 0, endExternal: 0 },
    elapsedMs: 0,
    segments: [],
  };
  const m0 = await askTarget({ type: 'mem', seq: 0, gc: true });
  report.rss.start = m0.rss ?? 0;
  report.heap.startUsed = m0.heapUsed ?? 0;
  report.heap.startExternal = m0.external ?? 0;
  if (m0.mem) report.startMem = m0.mem;
  report.rss.peak = report.rss.start;
  let currentRss = report.rss.start;
  let segmentPeak = report.rss.start;
  const sampler = setInterval(() => {
    void askTarget({ type: 'mem', seq: 0 }).then((r) => {
      if (r.rss) currentRss = r.rss;
      if (r.rss && r.rss > report.rss.peak) report.rss.peak = r.rss;
      if (r.rss && r.rss > segmentPeak) segmentPeak = r.rss;
    });
  }, 500);

  // The command list, once, from server.info.
  let commands = ['ping', 'server.info', 'diag.echoStream'];
  {
    const s = await handshake(ready.port, ready.fingerprint, '127.3.0.1');
    if (s !== 'refused') {
      sealData(s, encodeMessage({ kind: 'request', id: 1, command: 'server.info', payload: {}, stream: false }));
      const o = await flushAndSettle(s, 2);
      const info = o.answers.find((a) => a.kind === 'response' && a.id === 1) as { payload?: { commands?: string[] } } | undefined;
      if (info?.payload?.commands) commands = info.payload.commands;
      s.wire.destroy();
    }
  }
  const ctx: Ctx = { port: ready.port, fingerprint: ready.fingerprint, club: ready.club, commands, askTarget };
  const master = new Rng(opts.seed);
  let nextIp = 0;
  let nextBanIp = 0;
  const poolIp = (): string => {
    const n = (nextIp++ % 65534) + 1;
    return `127.1.${n >> 8}.${n & 0xff}`;
  };
  const banIp = (): string => {
    const n = (nextBanIp++ % 65534) + 1;
    return `127.2.${n >> 8}.${n & 0xff}`;
  };
  const allKinds: [CaseKind, number][] = [
    ['hello', 20],
    ['message', 38],
    ['payload', 4],
    ['stream', 20],
    ['record', 16],
    ['ban', 2],
  ];
  const kinds = opts.only && opts.only.length > 0 ? allKinds.filter(([k]) => opts.only!.includes(k)) : allKinds;
  if (kinds.length === 0) throw new Error(`no such case kind; the kinds are ${allKinds.map(([k]) => k).join(', ')}`);
  const total = kinds.reduce((a, [, w]) => a + w, 0);
  let stop = false;
  let lastProgress = 0;
  const warmAt = Math.min(20_000, Math.floor(opts.frames / 10));
  let warmAsked = false;
  const progressEvery = opts.progressEvery ?? 0;
  let limit = 0;
  const worker = async (): Promise<void> => {
    while (!stop && report.frames < limit && !exited) {
      // Each case gets its own generator, seeded from the master: its inputs do not depend on
      // how the concurrent cases interleave.
      const caseRng = new Rng(master.u32());
      let w = caseRng.int(total);
      let kind: CaseKind = 'hello';
      for (const [k, weight] of kinds) {
        if (w < weight) {
          kind = k;
          break;
        }
        w -= weight;
      }
      let r: CaseResult;
      try {
        r =
          kind === 'hello'
            ? await caseHello(caseRng, ctx, poolIp())
            : kind === 'ban'
              ? await caseBan(ctx, banIp())
              : await caseSession(kind, caseRng, ctx, poolIp());
      } catch (e) {
        if (exited) break;
        // A handshake the daemon did not complete (it was busy or refused): not a finding by itself.
        r = { frames: 0, failures: [], errorCodes: [], refused: true };
        log(`case ${kind} could not run: ${(e as Error).message}`);
      }
      report.cases++;
      report.frames += r.frames;
      report.byKind[kind] = (report.byKind[kind] ?? 0) + r.frames;
      if (r.refused) report.refusedAtAccept++;
      if (r.banCheck) report.banChecks++;
      for (const c of r.errorCodes) report.errorCodes[c] = (report.errorCodes[c] ?? 0) + 1;
      for (const f of r.failures) {
        if (f.kind === 'not-banned') report.bansMissed++;
        report.failures.push(f);
        log(`FAILURE ${f.kind} (${f.caseKind}): ${f.note}`);
        for (const i of f.inputs) log(`  input ${i}`);
      }
      if (!warmAsked && report.frames >= warmAt) {
        warmAsked = true;
        void askTarget({ type: 'mem', seq: 0, gc: true }).then((m) => (report.rss.warm = m.rss ?? 0));
      }
      if (progressEvery > 0 && report.frames - lastProgress >= progressEvery) {
        lastProgress = report.frames;
        log(`${report.frames} frames, ${report.cases} cases, ${report.failures.length} failures, daemon RSS ${(currentRss / 1048576).toFixed(1)} MiB (peak ${(report.rss.peak / 1048576).toFixed(1)} MiB)`);
      }
    }
  };
  const concurrency = opts.concurrency ?? 16;
  const segmentFrames = Math.max(1, opts.segmentFrames ?? Math.max(1000, Math.ceil(opts.frames / 10)));
  const mib = (b: number): string => (b / 1048576).toFixed(1);
  while (!exited && report.frames < opts.frames) {
    limit = Math.min(opts.frames, report.frames + segmentFrames);
    await Promise.race([Promise.all(Array.from({ length: concurrency }, worker)), exitPromise]);
    if (exited) break;
    // The segment's cases have finished; let the daemon drop their connections (bounded wait),
    // then measure after a forced GC.
    let m = await askTarget({ type: 'mem', seq: 0 });
    for (let i = 0; i < 50 && !exited && (m.mem?.counts?.connections ?? 0) > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      m = await askTarget({ type: 'mem', seq: 0 });
    }
    m = await askTarget({ type: 'mem', seq: 0, gc: true });
    if (!m.mem) break;
    const sample: SegmentSample = { frames: report.frames, peakRss: Math.max(segmentPeak, m.mem.rss), mem: m.mem };
    report.segments.push(sample);
    segmentPeak = m.mem.rss;
    const c = m.mem.counts;
    log(
      `segment ${report.segments.length}: ${report.frames} frames; after GC: RSS ${mib(m.mem.rss)} MiB (anon ${mib(m.mem.rssAnon)}, file ${mib(m.mem.rssFile)}), segment peak ${mib(sample.peakRss)} MiB, ` +
        `heap ${mib(m.mem.heapUsed)}/${mib(m.mem.heapTotal)} MiB, external ${mib(m.mem.external)} MiB, arrayBuffers ${mib(m.mem.arrayBuffers)} MiB` +
        (c ? `; stores ${c.storesOpen}/${c.storesMax}, clubs ${c.clubs}, connections ${c.connections}, pending ${c.pendingHandshakes}, pre-login ${c.preLoginSessions}, bans ${c.bans}, tracked ${c.trackedSources}, outbox ${c.outbox}, gathered ${c.gathered}, request keys ${c.requestKeys}, violation keys ${c.violationKeys}, detail keys ${c.detailKeys}` : ''),
    );
  }
  stop = true;
  clearInterval(sampler);
  if (exited) {
    report.daemonExited = true;
    report.failures.push({ kind: 'exit', caseKind: 'any', note: `the daemon process exited; its last output: ${stderr.join('\n').slice(-4000)}`, inputs: [] });
    log('FAILURE: the daemon process exited');
  } else {
    report.daemonStats = (await askTarget({ type: 'stats', seq: 0 })).stats;
    const m1 = await askTarget({ type: 'mem', seq: 0, gc: true });
    report.rss.end = m1.rss ?? 0;
    if (m1.mem) report.endMem = m1.mem;
    report.memory = memoryVerdict(report.segments);
    report.heap.endUsed = m1.heapUsed ?? 0;
    report.heap.endExternal = m1.external ?? 0;
    child.send({ type: 'exit', seq: 0 } satisfies ToTarget);
    await exitPromise;
  }
  // A fault is logged by the daemon without the input; the case that caused it is among those
  // running at that moment, whose inputs the other failure kinds print.
  for (const f of faults) report.failures.push({ kind: 'fault', caseKind: 'any', note: f.slice(0, 500), inputs: [] });
  const tail = stderr.join('\n');
  if (tail.length > 0) log(`daemon error log (tail):\n${tail.slice(-4000)}`);
  report.elapsedMs = Date.now() - started;
  return report;
}
