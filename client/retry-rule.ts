/**
 * When a cluster client retries and when it gives up (PROTOCOL.md 6.5, "Retries"): a quiet
 * budget that starts again whenever the cluster shows progress, an absolute cap over the whole
 * request, and pauses that grow with jitter. Pure: the caller passes the time and the randomness.
 *
 * Progress is what a client can see of a takeover or a drain moving on:
 * - a redirect (MOVED) to an owner other than the last one this request was sent to;
 * - UNAVAILABLE saying a takeover is under way (the club is between owners);
 * - SHUTTING_DOWN (a server is draining: its clubs are being handed over).
 * A refused or lost connection is no progress: a dead server alone runs the quiet budget out.
 */
import { RemoteError } from './errors.js';

export interface RetryRuleOptions {
  /** Give up after this long without progress (ms; default 30,000: the takeover bound). */
  quietMs?: number;
  /** Give up after this long in all, progress or not (ms; default 120,000). */
  capMs?: number;
  /** First pause (ms; default 50); each later one doubles, up to maxDelayMs. */
  baseDelayMs?: number;
  /** Longest pause (ms; default 1,000). */
  maxDelayMs?: number;
  /** Uniform in [0, 1) (default Math.random): the jitter. */
  random?: () => number;
}

export const DEFAULT_QUIET_MS = 30_000;
export const DEFAULT_CAP_MS = 120_000;

const TAKEOVER = /takeover|taken over|not placed yet|joining the cluster/i;

/** Does this error show the cluster moving on (see the file comment)? `lastOwner` is the owner last redirected to. */
export function showsProgress(e: unknown, lastOwner: string | undefined, moved: string | undefined): boolean {
  if (moved !== undefined) return moved !== lastOwner;
  if (!(e instanceof RemoteError)) return false;
  if (e.code === 'SHUTTING_DOWN') return true;
  return e.code === 'UNAVAILABLE' && TAKEOVER.test(e.message);
}

/** The retry state of one request; see the file comment. */
export class RetryRule {
  private readonly quietMs: number;
  private readonly capMs: number;
  private readonly base: number;
  private readonly max: number;
  private readonly random: () => number;
  private readonly startedAt: number;
  private lastProgress: number;
  private step = 0;

  constructor(now: number, o: RetryRuleOptions = {}) {
    this.quietMs = o.quietMs ?? DEFAULT_QUIET_MS;
    this.capMs = Math.max(o.capMs ?? DEFAULT_CAP_MS, this.quietMs);
    this.base = o.baseDelayMs ?? 50;
    this.max = o.maxDelayMs ?? 1000;
    this.random = o.random ?? Math.random;
    this.startedAt = now;
    this.lastProgress = now;
  }

  /** The cluster moved on at `now`: the quiet budget and the pauses start again (the cap does not). */
  progress(now: number): void {
    this.lastProgress = Math.min(now, this.startedAt + this.capMs);
    this.step = 0;
  }

  /** The time (ms) after which no new attempt starts: the quiet budget or the cap, whichever is first. */
  deadline(): number {
    return Math.min(this.lastProgress + this.quietMs, this.startedAt + this.capMs);
  }

  /**
   * After a failed attempt at `now`: the pause (ms) before the next one, or undefined to give up.
   * Progress restarts the quiet budget and the pauses (the next owner is likely ready soon);
   * otherwise the pause doubles up to the longest. Each pause is drawn from [d/2, d) ("equal
   * jitter"), so clients that failed together do not come back together.
   */
  next(now: number, progressed: boolean): number | undefined {
    if (progressed) this.progress(now);
    const d = Math.min(this.max, this.base * 2 ** this.step);
    this.step = Math.min(this.step + 1, 30);
    const pause = Math.floor(d / 2 + (this.random() * d) / 2);
    if (now + pause > this.deadline()) return undefined;
    return pause;
  }
}
