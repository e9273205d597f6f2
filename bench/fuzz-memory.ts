/**
 * The fuzzer's memory verdict: per-segment samples of the target's memory, and whether their
 * trend is flat (median slope against FLAT_RULE) or growing.
 */
import { type TargetMem } from './fuzz-shared.js';

/** The target's memory and counts at the end of one segment, after its cases finished and a forced GC. */
export interface SegmentSample {
  /** Frames sent so far. */
  frames: number;
  /** The highest RSS sampled (every 0.5 s, no GC) during this segment. */
  peakRss: number;
  mem: TargetMem;
}

/**
 * The memory verdict of a run (issue 18, "flat memory after the run"). Segment 1 holds the
 * warm-up and is left out; of the rest, the later half is the plateau. The run is `flat` when,
 * for RSS and for JS heap + external memory each (M: the later half's median):
 * (a) the last segment is within M + max(10 % of M, 2 MiB): the end does not stand above the
 *     plateau, and
 * (b) the least-squares line through the later half rises by at most max(5 % of M, 2 MiB) across
 *     it: a steady climb (a leak) fails even while each step is small.
 * `slopePer100k` is the least-squares slope of RSS over all segments after the first, in bytes
 * per 100,000 frames, for the report. With fewer than 4 segments there is no plateau to judge:
 * `insufficient`.
 */
export interface MemoryVerdict {
  verdict: 'flat' | 'rising' | 'insufficient';
  rssMedian: number;
  rssLast: number;
  jsMedian: number;
  jsLast: number;
  slopePer100k: number;
  rule: string;
}

const FLAT_RULE =
  "segments after the first; later half's median M; flat when, for RSS and for JS heap+external, the last segment <= M + max(10 % of M, 2 MiB) and the fitted rise across the later half <= max(5 % of M, 2 MiB)";

/** Least-squares slope of ys over xs (0 for fewer than two distinct xs). */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  const mx = xs.reduce((a, x) => a + x, 0) / n;
  const my = ys.reduce((a, y) => a + y, 0) / n;
  let sxx = 0;
  let sxy = 0;
  for (let i = 0; i < n; i++) {
    sxx += (xs[i]! - mx) ** 2;
    sxy += (xs[i]! - mx) * (ys[i]! - my);
  }
  return sxx > 0 ? sxy / sxx : 0;
}

function median(xs: number[]): number {
  const a = [...xs].sort((x, y) => x - y);
  const m = a.length >> 1;
  return a.length % 2 === 1 ? a[m]! : (a[m - 1]! + a[m]!) / 2;
}

/** Applies the rule of MemoryVerdict to the segment samples of one run. */
export function memoryVerdict(segments: readonly SegmentSample[]): MemoryVerdict {
  const after = segments.slice(1);
  const js = (x: SegmentSample): number => x.mem.heapUsed + x.mem.external;
  if (after.length < 3) return { verdict: 'insufficient', rssMedian: 0, rssLast: 0, jsMedian: 0, jsLast: 0, slopePer100k: 0, rule: FLAT_RULE };
  const later = after.slice(Math.floor(after.length / 2));
  const last = after[after.length - 1]!;
  const rssMedian = median(later.map((x) => x.mem.rss));
  const jsMedian = median(later.map(js));
  const within = (v: number, m: number): boolean => v <= m + Math.max(0.1 * m, 2 * 1048576);
  const xs = later.map((x) => x.frames);
  const span = xs[xs.length - 1]! - xs[0]!;
  const level = (ys: number[], m: number): boolean => slope(xs, ys) * span <= Math.max(0.05 * m, 2 * 1048576);
  const slopePer100k = slope(after.map((x) => x.frames), after.map((x) => x.mem.rss)) * 100_000;
  const flat =
    within(last.mem.rss, rssMedian) &&
    within(js(last), jsMedian) &&
    level(later.map((x) => x.mem.rss), rssMedian) &&
    level(later.map(js), jsMedian);
  return { verdict: flat ? 'flat' : 'rising', rssMedian, rssLast: last.mem.rss, jsMedian, jsLast: js(last), slopePer100k, rule: FLAT_RULE };
}
