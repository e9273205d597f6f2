/**
 * Which archives retention keeps (restic-style `forget`): the last N, and the newest per day, ISO
 * week, month and year, as rules over archive times.
 */
import type { Retention } from './backup-settings.js';

/** restic-style `forget`: which of these archive times to keep (indexes into `times`). */
export function selectRetained(times: readonly Date[], r: Retention): Set<number> {
  const order = times.map((t, i) => ({ t: t.getTime(), i })).sort((a, b) => b.t - a.t);
  const keep = new Set<number>();
  const pad = (n: number) => String(n).padStart(2, '0');
  const isoWeek = (d: Date) => {
    const x = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
    const day = x.getUTCDay() || 7;
    x.setUTCDate(x.getUTCDate() + 4 - day);
    const y0 = new Date(Date.UTC(x.getUTCFullYear(), 0, 1));
    return `${x.getUTCFullYear()}-W${pad(Math.ceil(((x.getTime() - y0.getTime()) / 86_400_000 + 1) / 7))}`;
  };
  const rules: Array<[number, (d: Date) => string]> = [
    [r.last, (d) => String(d.getTime())],
    [r.daily, (d) => d.toISOString().slice(0, 10)],
    [r.weekly, isoWeek],
    [r.monthly, (d) => d.toISOString().slice(0, 7)],
    [r.yearly, (d) => d.toISOString().slice(0, 4)],
  ];
  for (const [n, key] of rules) {
    let count = 0;
    let last: string | undefined;
    for (const { t, i } of order) {
      if (count >= n) break;
      const k = key(new Date(t));
      if (k === last) continue;
      last = k;
      keep.add(i);
      count++;
    }
  }
  return keep;
}
