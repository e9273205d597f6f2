/**
 * Which archives retention keeps (restic-style `forget`): the last N, and the newest per day, ISO
 * week, month and year, as rules over archive times; applying it at the destinations, and removing
 * a deleted club's archives everywhere.
 */
import type { Storage } from '../../storage/server/storage.js';
import type { ArchiveEntry, BackupDestination } from './backup-destinations.js';
import { errText, type Retention, type RunReport } from './backup-settings.js';
import type { Logger } from '../common/log.js';

/** What retention and the purge need from the backup service. */
export interface UpkeepDeps {
  readonly st: Storage;
  readonly destinations: readonly BackupDestination[];
  readonly retention: Retention;
  readonly now: () => Date;
  readonly log: Logger;
}

/**
 * Delete archives beyond the retention policy, per destination and club (only `clubs` when
 * given: in a cluster each primary tidies the clubs it archived). Destinations in `skip` are left.
 */
export async function applyRetention(d: UpkeepDeps, o: { skip?: ReadonlySet<string>; clubs?: readonly string[] } = {}): Promise<RunReport['retention']> {
  const out: RunReport['retention'] = {};
  for (const dest of d.destinations) {
    if (o.skip?.has(dest.name)) continue;
    let kept = 0;
    let deleted = 0;
    try {
      const all = await dest.list();
      const byClub = new Map<string, ArchiveEntry[]>();
      for (const a of all) if (!o.clubs || o.clubs.includes(a.clubId)) byClub.set(a.clubId, [...(byClub.get(a.clubId) ?? []), a]);
      const deletedClubs = new Set(d.st.server.listDeletions().map((x) => x.clubId));
      for (const [clubId, list] of byClub) {
        if (deletedClubs.has(clubId) && !d.st.server.getClub(clubId)) {
          // A deleted club keeps no archive: whatever a purge at deletion time missed goes now.
          for (const a of list) await dest.delete(a.name);
          deleted += list.length;
          d.st.server.recordArchivePurge(clubId, list.length, { lastPurge: d.now().toISOString(), byRetention: dest.name });
          continue;
        }
        const keep = selectRetained(list.map((a) => a.time), d.retention);
        for (const [i, a] of list.entries()) {
          if (keep.has(i)) kept++;
          else {
            await dest.delete(a.name);
            deleted++;
          }
        }
      }
      out[dest.name] = { kept, deleted };
    } catch (e) {
      out[dest.name] = { kept, deleted, error: errText(e) };
    }
  }
  return out;
}

/**
 * Remove every archive of a deleted club at every destination (`club delete` runs it). A
 * destination that fails is named in the result; the nightly retention removes what is left
 * there later (clubs in club_deletions keep no archive). Recorded in the club's deletion record.
 */
export async function purgeClubArchives(d: UpkeepDeps, clubId: string): Promise<{ clubId: string; removed: Array<{ destination: string; name: string }>; failed: Array<{ destination: string; error: string }> }> {
  const removed: Array<{ destination: string; name: string }> = [];
  const failed: Array<{ destination: string; error: string }> = [];
  for (const dest of d.destinations) {
    try {
      for (const a of await dest.list(clubId)) {
        if (a.clubId !== clubId) continue;
        await dest.delete(a.name);
        removed.push({ destination: dest.name, name: a.name });
      }
    } catch (e) {
      failed.push({ destination: dest.name, error: errText(e) });
    }
  }
  d.st.server.recordArchivePurge(clubId, removed.length, {
    lastPurge: d.now().toISOString(),
    removedAt: [...new Set(removed.map((r) => r.destination))],
    failed,
  });
  d.log.info('archives of a deleted club removed', { event: 'backup-purge', clubId, removed: removed.length, failed: failed.map((f) => f.destination) });
  return { clubId, removed, failed };
}

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
