/**
 * The nightly schedule's arithmetic (croner patterns in the configured time zone) and the small
 * worker pool of a run. Used by backup-service.ts and, in a cluster, by cluster-backups.ts to tell
 * whether a club's backup is due.
 */
import { Cron } from 'croner';

/** The cron pattern of a daily run at `time` (HH:MM). */
export function dailyPattern(time: string): string {
  const [h, m] = time.split(':');
  return `${Number(m)} ${Number(h)} * * *`;
}

/** The next scheduled time strictly after `after`, or null. */
export function nextScheduled(pattern: string, timezone: string | undefined, after: Date): Date | null {
  const c = new Cron(pattern, { paused: true, ...(timezone ? { timezone } : {}) });
  try {
    return c.nextRun(after);
  } finally {
    c.stop();
  }
}

/**
 * The latest scheduled time at or before `now` (within the last 48 hours; a daily pattern always
 * has one, also across a daylight-saving change), or undefined.
 */
export function lastScheduled(pattern: string, timezone: string | undefined, now: Date): Date | undefined {
  const c = new Cron(pattern, { paused: true, ...(timezone ? { timezone } : {}) });
  try {
    let last: Date | undefined;
    let from = new Date(now.getTime() - 48 * 3600_000);
    for (let i = 0; i < 8; i++) {
      const n = c.nextRun(from);
      if (!n || n.getTime() > now.getTime()) break;
      last = n;
      from = n;
    }
    return last;
  } finally {
    c.stop();
  }
}

/** Run `fn` over items with at most `n` at a time. */
export async function pool<T>(items: readonly T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}
