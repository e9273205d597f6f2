import assert from 'node:assert/strict';
import test from 'node:test';
import { memoryVerdict, runFuzz, type SegmentSample } from '../bench/fuzz-engine.js';
import type { TargetMem } from '../bench/fuzz-shared.js';

/**
 * The bounded fuzz stage of issue 18: a fixed seed and a few thousand frames of the socket-level
 * fuzzer (bench/fuzz-engine.ts) against a daemon in its own process, with every kind of case
 * (mutated hellos, mutated messages in valid records, payloads after a login, streams, record
 * tampering, ban checks). `npm run fuzz` is the long run with a random seed.
 */
test('fuzz stage: the daemon never exits, never answers INTERNAL, always answers or closes, and bans offenders', { timeout: 110_000 }, async () => {
  const lines: string[] = [];
  const r = await runFuzz({ frames: 3000, seed: 18, concurrency: 8, segmentFrames: 500, log: (l) => lines.push(l) });
  const why = (): string => `seed ${r.seed}\n${lines.slice(0, 60).join('\n')}`;
  assert.equal(r.daemonExited, false, why());
  assert.equal(r.errorCodes.INTERNAL ?? 0, 0, why());
  assert.deepEqual(r.failures, [], why());
  assert.ok(r.frames >= 3000, `${r.frames} frames`);
  for (const kind of ['hello', 'message', 'payload', 'stream', 'record', 'ban']) assert.ok((r.byKind[kind] ?? 0) > 0, `no ${kind} case ran: ${JSON.stringify(r.byKind)}`);
  assert.ok(r.banChecks > 0, 'offenders were checked for bans');
  assert.equal(r.bansMissed, 0);
  assert.ok((r.daemonStats?.bans ?? 0) > 0, 'the daemon banned offenders');
  assert.ok((r.errorCodes.BAD_REQUEST ?? 0) > 0, 'payloads reached the schemas');
  // Memory per segment (500 frames or a little more: running cases finish), taken once the
  // segment's connections are gone.
  assert.ok(r.segments.length >= 2, `${r.segments.length} segments`);
  for (const g of r.segments) {
    assert.ok(g.mem.rss > 0 && g.mem.heapUsed > 0 && g.peakRss >= g.mem.rss, JSON.stringify(g));
    assert.equal(g.mem.counts?.connections, 0, `connections left after a segment: ${JSON.stringify(g.mem.counts)}`);
    assert.ok((g.mem.counts?.storesOpen ?? 0) <= (g.mem.counts?.storesMax ?? 0));
  }
  assert.ok(r.memory, 'a memory verdict');
});

/** A segment sample with the given RSS and JS heap + external (MiB). */
function seg(frames: number, rssMiB: number, jsMiB = 30): SegmentSample {
  const mem: TargetMem = { rss: rssMiB * 1048576, heapUsed: jsMiB * 1048576, heapTotal: 0, external: 0, arrayBuffers: 0, rssAnon: 0, rssFile: 0, mallocArenaMax: '' };
  return { frames, peakRss: mem.rss, mem };
}

test('memory verdict: a plateau after the warm-up segment is flat', () => {
  // Segment 1 (warm-up) is far lower and left out; the rest wobble around 130 MiB.
  const v = memoryVerdict([seg(1e5, 90), seg(2e5, 128), seg(3e5, 135), seg(4e5, 126), seg(5e5, 131), seg(6e5, 133), seg(7e5, 129)]);
  assert.equal(v.verdict, 'flat', JSON.stringify(v));
});

test('memory verdict: RSS still climbing at the end is rising', () => {
  const v = memoryVerdict([seg(1e5, 90), seg(2e5, 120), seg(3e5, 140), seg(4e5, 160), seg(5e5, 180), seg(6e5, 200), seg(7e5, 230)]);
  assert.equal(v.verdict, 'rising', JSON.stringify(v));
  assert.ok(v.slopePer100k > 0);
});

test('memory verdict: a slow steady climb that stays inside the 10 % band is rising', () => {
  // +5 MiB per segment: the last is within 10 % of the later half's median, the line is not level.
  const v = memoryVerdict([seg(1e5, 90), seg(2e5, 200), seg(3e5, 205), seg(4e5, 210), seg(5e5, 215), seg(6e5, 220), seg(7e5, 225), seg(8e5, 230), seg(9e5, 235)]);
  assert.equal(v.verdict, 'rising', JSON.stringify(v));
});

test('memory verdict: a growing JS heap under a flat RSS is rising too', () => {
  const v = memoryVerdict([seg(1e5, 130, 20), seg(2e5, 130, 30), seg(3e5, 130, 40), seg(4e5, 130, 50), seg(5e5, 130, 60), seg(6e5, 130, 70)]);
  assert.equal(v.verdict, 'rising', JSON.stringify(v));
});

test('memory verdict: fewer than three segments after the warm-up cannot be judged', () => {
  assert.equal(memoryVerdict([seg(1e5, 90), seg(2e5, 100), seg(3e5, 100)]).verdict, 'insufficient');
});
